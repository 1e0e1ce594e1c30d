"""What each figure of the dense report shows, in words, with its numbers."""

from __future__ import annotations

import numpy as np

from transferset.report.figures import class_labels
from transferset.report.stats import DenseStats


def reference_rule(stats: DenseStats) -> str:
    """Which class each row of the confusion matrix stands for."""
    unlabelled = stats.rows - stats.labelled
    if not unlabelled:
        return f"the label (all {stats.rows:,} rows are labelled)"
    if not stats.labelled:
        return f"the ensemble's top class (none of the {stats.rows:,} rows is labelled)"
    return f"the label for the {stats.labelled:,} labelled rows, the ensemble's top class for the {unlabelled:,} unlabelled rows"


def most_confused(stats: DenseStats, class_names: list[str] | None, count: int = 3) -> list[str]:
    """The largest off-diagonal cells as 'a → b (0.12)', largest first."""
    wrong = np.nan_to_num(stats.confusion, nan=-1.0)
    np.fill_diagonal(wrong, -1.0)
    labels = class_labels(stats.num_classes, class_names)
    order = np.argsort(wrong, axis=None, kind="stable")[::-1][:count]
    cells = [np.unravel_index(i, wrong.shape) for i in order]
    return [f"{labels[r]} → {labels[c]} ({wrong[r, c]:.3f})" for r, c in cells if wrong[r, c] >= 0]


def confusion_caption(stats: DenseStats, class_names: list[str] | None) -> str:
    pairs = most_confused(stats, class_names)
    return (
        f"Row r, column c: the mean target probability (softmax(logits / T) at T = {stats.temperature:g}) on class c "
        f"over the rows whose reference class is r. The reference class is {reference_rule(stats)}. "
        f"The diagonal (mass on the reference class itself) is left out, so the colours show only the wrong classes; "
        f"grey rows are classes no row refers to. Most confused: {', '.join(pairs) or '-'}."
    )


def histograms_caption(stats: DenseStats) -> str:
    return (
        f"Per row, the entropy (nats) and the max probability of the target at T = {stats.temperature:g}, "
        f"as fractions of the labelled ({stats.labelled:,}) and the unlabelled ({stats.rows - stats.labelled:,}) rows, "
        f"in {len(stats.entropy.edges) - 1} equal bins. A uniform target has entropy log {stats.num_classes} = "
        f"{np.log(stats.num_classes):.3f} and max probability 1/{stats.num_classes}."
    )


def reliability_caption(stats: DenseStats) -> str:
    r = stats.reliability
    assert r is not None
    return (
        f"The {int(r.counts.sum()):,} labelled rows in {len(r.counts)} equal bins of confidence (the target's max probability); "
        f"a bar is the fraction of its rows whose top class is the label. Expected calibration error "
        f"ECE = Σ_b (n_b / N) |accuracy_b − confidence_b| = {r.ece:.4f}. The targets are at T = {stats.temperature:g}: "
        f"a temperature above 1 softens them on purpose, which shows here as under-confidence."
    )


def members_caption(stats: DenseStats) -> str:
    return (
        f"Left: the accuracy on the {stats.labelled:,} labelled rows of each member's top class and of the ensemble's "
        f"(the stored targets'). Right: the fraction of all {stats.rows:,} rows on which two top classes agree. "
        f"From the members' own logits, stored by generate --keep-teacher-logits."
    )
