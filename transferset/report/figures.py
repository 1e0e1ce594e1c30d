"""The report's figures, one function each: small numpy arrays in, a matplotlib Figure out.

Drawn on `matplotlib.figure.Figure` directly, never through pyplot: no global
backend switch and no figure registry, so nothing here needs a display or
leaks figures between calls. `png` renders one with the Agg canvas.

matplotlib is an optional extra (`transferset[report]`); the command checks for it
before calling anything here.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from transferset.report.stats import Agreement, DenseStats, Histogram, Reliability

LABELLED, UNLABELLED, ENSEMBLE = "tab:blue", "tab:orange", "tab:green"
ANNOTATE_UP_TO = 12  # classes (or members) up to which every heatmap cell carries its value


def png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def class_labels(num_classes: int, class_names: list[str] | None) -> list[str]:
    return list(class_names) if class_names else [str(i) for i in range(num_classes)]


def _heatmap(ax, matrix: np.ndarray, labels: list[str], colour_label: str, fmt: str, vmin=None, vmax=None):
    """matrix [n, n] with NaN cells drawn grey; ticks thinned to ~20 labels."""
    cmap = _cmap("viridis")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    n = len(labels)
    ticks = np.arange(0, n, max(1, n // 20))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, [labels[i] for i in ticks])
    if n <= ANNOTATE_UP_TO:
        middle = np.nanmean([image.norm.vmin, image.norm.vmax])
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                        color="black" if value > middle else "white")
    ax.figure.colorbar(image, ax=ax, label=colour_label, shrink=0.8)


def _cmap(name: str):
    from matplotlib import colormaps

    cmap = colormaps[name].copy()
    cmap.set_bad("lightgrey")
    return cmap


def confusion_figure(stats: DenseStats, class_names: list[str] | None) -> Figure:
    """Mean target probability on each *wrong* class per reference class (diagonal left out)."""
    wrong = stats.confusion.copy()
    np.fill_diagonal(wrong, np.nan)
    size = 4 + 0.25 * min(stats.num_classes, 40)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = figure.add_subplot()
    vmax = np.nanmax(wrong) if np.isfinite(wrong).any() else 1.0
    _heatmap(ax, wrong, class_labels(stats.num_classes, class_names), "mean target probability", ".2f", vmin=0.0, vmax=vmax)
    ax.set_xlabel("class the target puts mass on")
    ax.set_ylabel("reference class (label, or top class when unlabelled)")
    ax.set_title("soft confusion: mass on wrong classes")
    return figure


def _fractions(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum() if counts.sum() else counts.astype(float)


def _histogram_panel(ax, histogram: Histogram, xlabel: str) -> None:
    for counts, colour, name in ((histogram.labelled, LABELLED, "labelled"), (histogram.unlabelled, UNLABELLED, "unlabelled")):
        if counts.sum():
            ax.stairs(_fractions(counts), histogram.edges, fill=True, alpha=0.45, color=colour,
                      label=f"{name} ({counts.sum():,} rows)")
            ax.stairs(_fractions(counts), histogram.edges, color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of rows")
    ax.legend(loc="upper center", fontsize=8)


def histograms_figure(stats: DenseStats) -> Figure:
    """Entropy and max-probability of the targets, labelled and unlabelled rows apart."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    uniform = f"log {stats.num_classes} = {np.log(stats.num_classes):.2f}"
    _histogram_panel(left, stats.entropy, f"entropy of the target (nats; uniform = {uniform})")
    left.set_title(f"entropy at T = {stats.temperature:g}")
    _histogram_panel(right, stats.confidence, f"max probability of the target (uniform = 1/{stats.num_classes})")
    right.set_title(f"max probability at T = {stats.temperature:g}")
    return figure


def reliability_figure(reliability: Reliability, temperature: float) -> Figure:
    """Accuracy against confidence per bin over labelled rows, with the rows per bin below."""
    figure = Figure(figsize=(6, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges, width = reliability.edges, np.diff(reliability.edges)
    filled = reliability.counts > 0
    top.bar(edges[:-1][filled], reliability.accuracy[filled], width=width[filled], align="edge",
            color=LABELLED, edgecolor="black", alpha=0.8, label="accuracy of the top class")
    top.plot(reliability.confidence[filled], reliability.accuracy[filled], "o", color="black", markersize=4,
             label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy against the labels")
    top.set_title(f"reliability of the targets at T = {temperature:g}: ECE = {reliability.ece:.4f}")
    figure.legend(loc="outside lower center", ncols=3, fontsize=8)  # below the plot: bars fill any corner
    bottom.bar(edges[:-1], reliability.counts, width=width, align="edge", color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (max probability of the target)")
    bottom.set_ylabel("labelled rows")
    return figure


def members_figure(agreement: Agreement, accuracies: list[float | None]) -> Figure:
    """Each member's (and the ensemble's) accuracy, and how often each pair's top classes agree."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    names = agreement.names
    if any(a is not None for a in accuracies):
        values = [np.nan if a is None else a for a in accuracies]
        colours = [LABELLED] * (len(names) - 1) + [ENSEMBLE]
        bars = left.bar(range(len(names)), values, color=colours, edgecolor="black")
        left.bar_label(bars, labels=[f"{100 * v:.1f}%" if np.isfinite(v) else "-" for v in values], fontsize=8)
        left.set_ylim(0, 1.08)
        left.set_ylabel("accuracy against the labels")
    else:
        left.text(0.5, 0.5, "no labelled rows: no accuracy", ha="center", va="center", transform=left.transAxes)
    left.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    left.set_title("accuracy of each member and of the ensemble")
    _heatmap(right, agreement.matrix, names, "fraction of rows with the same top class", ".1%", vmax=1.0)
    right.set_title("pairwise agreement of top classes")
    return figure
