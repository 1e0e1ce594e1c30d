"""Is the run learning? Divergence and chance-level checks on each epoch's record.

A diverged student used to be exported like any other (a CNN at lr 0.05, alpha
0.9, T = 4 sat at loss 12.5 and 10.1% accuracy for every epoch; `--lr 50` reached
loss 67,468), so every epoch's record is checked against two references the run
measures itself:

    train_baseline   the loss the same batches would have cost a student whose
                     logits are all zero (a constant, uniform prediction), summed
                     next to the real loss in `train_step`. Training starts near
                     it (fresh students have small logits) and a learning run
                     only goes below it.
    chance           the accuracy of always predicting the most frequent class of
                     the labelled rows scored (--eval data, else the training labels).

The rules, and what they do:

    stop  (exit 2, nothing published)
        the loss is not finite, or
        exploding: an epoch's mean loss > EXPLODING_FACTOR x train_baseline. A
          student that far above a constant prediction has blown-up weights: at
          --lr 50 on 37 rows of 8x8 pixels the first epoch's loss was 722x the baseline with
          the default --grad-clip 5 and 23,643x without, while healthy runs start
          near 1x (fresh students have small logits) and only go down.
        stuck (last epoch, after >= MIN_STEPS_TO_JUDGE steps): loss >= train_baseline
          *and* chance-level accuracy: the student collapsed to (about) a constant
          prediction, as the issue's CNN did (loss 12.5 and 10.1% accuracy every
          epoch). A run of fewer steps may just not have left the constant yet (a
          10-step CNN on 131 rows ends at 1.01x): that is warned, not stopped.
    warn  (exported, but metrics.jsonl and config.json carry `health`)
        "diverged"      last epoch's loss >= train_baseline
        "chance_level"  accuracy not above chance by CHANCE_SIGMAS standard errors

The stop rules run before the epoch's checkpoint is written, so rerunning the
same command trains that epoch again and stops again: a diverged run never
turns into a published one by being repeated.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from transferset.errors import UserError

if TYPE_CHECKING:
    from train.config import TrainConfig

EXPLODING_FACTOR = 10.0
MIN_STEPS_TO_JUDGE = 100
CHANCE_SIGMAS = 2.0  # an accuracy within 2 standard errors of the majority-class rate is chance


def fixes(cfg: "TrainConfig") -> str:
    """The three fixes that worked on the diverged runs, each against this run's value."""
    lr = f"a lower --lr (now {cfg.resolved_lr:g})"
    clip = cfg.resolved_grad_clip
    clip_fix = "--grad-clip 1.0 (now off)" if not clip else (f"--grad-clip 1.0 (now {clip:g})" if clip > 1 else f"a smaller --grad-clip (now {clip:g})")
    if cfg.warmup_steps is not None:
        warmup = f"more --warmup-steps (now {cfg.warmup_steps})"
    else:
        fraction = cfg.resolved_warmup_fraction
        warmup = f"--warmup-fraction 0.1 (now {fraction:g})" if fraction < 0.1 else f"a longer --warmup-fraction (now {fraction:g})"
    return f"try {lr}, {clip_fix} or {warmup}"


def chance_verdicts(record: dict[str, Any]) -> dict[str, bool]:
    """{name of the labelled rows scored: accuracy at chance?}. Every labelled --eval set;
    without one, the training labels (`train_accuracy`, measured during the epoch)."""
    verdicts = {}
    for path, metrics in (record.get("eval") or {}).items():
        if metrics.get("labelled"):
            verdicts[path] = at_chance(metrics["accuracy"], metrics["labelled"], max(metrics["per_class_rows"]) / metrics["labelled"])
    if not verdicts and record.get("train_accuracy") is not None:
        labelled = record["train_labelled"]
        verdicts["the training labels"] = at_chance(record["train_accuracy"], labelled, record["train_majority"])
    return verdicts


def at_chance(accuracy: float, rows: int, majority: float) -> bool:
    """True when `accuracy` on `rows` rows is not CHANCE_SIGMAS standard errors above
    `majority`, the rate of always answering the most frequent class."""
    standard_error = math.sqrt(max(majority * (1 - majority), 0.0) / max(rows, 1))
    return accuracy <= majority + CHANCE_SIGMAS * standard_error


def check_epoch(record: dict[str, Any], *, last: bool, cfg: "TrainConfig") -> list[str]:
    """Raise (stop) or return the warning flags ([], "diverged", "chance_level") for an
    epoch's record; the flags are only given for the last epoch."""
    loss, baseline = record["train_loss"], record.get("train_baseline")
    where = f"epoch {record['epoch']} (step {record['step']})"
    if not math.isfinite(loss):
        raise UserError(f"training diverged: the loss is {loss} in {where}; {fixes(cfg)}, and rerun with --overwrite")
    if baseline and loss > EXPLODING_FACTOR * baseline:
        raise UserError(
            f"training diverged: the loss exploded to {loss:,.4g} in {where}, {loss / baseline:,.0f}x what a constant prediction "
            f"scores ({baseline:.4g}); {fixes(cfg)}, and rerun with --overwrite"
        )
    if not last:
        return []
    flags = []
    if baseline and loss >= baseline:
        flags.append("diverged")
    at = [name for name, verdict in chance_verdicts(record).items() if verdict]
    if at:
        flags.append("chance_level")
    if flags == ["diverged", "chance_level"] and record["step"] >= MIN_STEPS_TO_JUDGE:
        raise UserError(
            f"training diverged: after {where} the loss ({loss:.4g}) is no better than a constant prediction ({baseline:.4g}) "
            f"and the accuracy on {', '.join(at)} is at chance level; {fixes(cfg)}, and rerun with --overwrite"
        )
    return flags


def warn(flags: list[str], record: dict[str, Any], cfg: "TrainConfig") -> None:
    """One stderr line, even with --quiet: the outputs are not to be trusted."""
    findings = []
    if "diverged" in flags:
        findings.append(f"its final loss ({record['train_loss']:.4g}) is no better than a constant prediction ({record['train_baseline']:.4g})")
    if "chance_level" in flags:
        at = [name for name, verdict in chance_verdicts(record).items() if verdict]
        findings.append(f"its accuracy on {', '.join(at)} is at chance level")
    print(f"warning: the student did not learn ({' and '.join(findings)}); {fixes(cfg)}, or train longer",
          file=sys.stderr, flush=True)
