"""Evaluation metrics at T = 1, the per-epoch metrics log, and how both are shown.

On labelled rows (label >= 0):
    accuracy, errors        argmax(logits) vs label
    nll                     mean -log softmax(logits)[label], float32 log_softmax
    ece                     expected calibration error, 15 equal-width bins of
                            confidence = max softmax prob, bins (lo, hi]:
                            sum_b |b| / n * |accuracy(b) - mean confidence(b)|
    per_class_errors        errors among rows whose true label is c, [C]
On every row, when the data carries stored target logits (a transfer set):
    agreement               fraction of rows where argmax(student) == argmax(target)
`class_bias` [C] is added to the logits before anything is measured (Hinton et
al.'s omitted-3 experiment raises one class's bias at test time).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

from train.world import SINGLE_PROCESS, World
from transferset.errors import UserError

ECE_BINS = 15


class EvalAccumulator:
    """Sums over batches; `result()` turns them into the metrics dict."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", where: str = "eval data") -> None:
        self.num_classes = num_classes
        self.where = where
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        self.rows = 0
        self.labelled = torch.zeros((), **i64)
        self.correct = torch.zeros((), **i64)
        self.nll_sum = torch.zeros((), **f64)
        self.bin_count = torch.zeros(ECE_BINS, **i64)
        self.bin_confidence = torch.zeros(ECE_BINS, **f64)
        self.bin_correct = torch.zeros(ECE_BINS, **i64)
        self.class_rows = torch.zeros(num_classes, **i64)
        self.class_errors = torch.zeros(num_classes, **i64)
        self.agree = torch.zeros((), **i64)
        self.target_rows = 0
        self.edges = torch.linspace(0.0, 1.0, ECE_BINS + 1, device=device)[1:-1]  # inner edges

    def update(self, logits: torch.Tensor, labels: torch.Tensor, teacher_top1: torch.Tensor | None = None) -> None:
        """logits [B, C] (biased already), labels int64 [B] (-1 = none), teacher_top1 int64 [B] (the
        teachers' most probable class) or None."""
        logits = logits.float()
        self.rows += logits.shape[0]
        predicted = logits.argmax(dim=-1)  # [B]
        if teacher_top1 is not None:
            self.agree += (predicted == teacher_top1).sum()
            self.target_rows += logits.shape[0]
        mask = labels >= 0
        if not bool(mask.any()):
            return
        y = labels[mask]
        if int(y.max()) >= self.num_classes:
            raise UserError(
                f"{self.where} has label {int(y.max())} but the student has {self.num_classes} classes (labels must be 0..{self.num_classes - 1}); "
                f"evaluate on data with the same classes"
            )
        log_q = torch.log_softmax(logits[mask], dim=-1)  # [L, C]
        hit = predicted[mask] == y  # [L]
        self.labelled += y.numel()
        self.correct += hit.sum()
        self.nll_sum -= log_q.gather(1, y.unsqueeze(1)).double().sum()
        confidence = log_q.max(dim=-1).values.exp()  # [L]
        bins = torch.bucketize(confidence, self.edges, right=False)  # (lo, hi] bins, [L]
        self.bin_count += torch.bincount(bins, minlength=ECE_BINS)
        self.bin_confidence.index_add_(0, bins, confidence.double())
        self.bin_correct += torch.bincount(bins, weights=hit.double(), minlength=ECE_BINS).round().long()
        self.class_rows += torch.bincount(y, minlength=self.num_classes)
        self.class_errors += torch.bincount(y[~hit], minlength=self.num_classes)

    def result(self) -> dict[str, Any]:
        labelled = int(self.labelled)
        out: dict[str, Any] = {"rows": self.rows, "labelled": labelled}
        if labelled:
            correct = int(self.correct)
            count = self.bin_count.double()
            gaps = (self.bin_correct.double() - self.bin_confidence).abs()  # |acc_b - conf_b| * |b|
            out.update(
                accuracy=correct / labelled,
                errors=labelled - correct,
                nll=float(self.nll_sum) / labelled,
                ece=float(gaps.sum() / count.sum()),
                per_class_errors=self.class_errors.tolist(),
                per_class_rows=self.class_rows.tolist(),
            )
        if self.target_rows:
            out["agreement"] = int(self.agree) / self.target_rows
        return out


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """ECE of 1-D arrays (confidence in [0, 1], correct as 0/1); bins are (lo, hi]."""
    confidence = torch.as_tensor(confidence, dtype=torch.float64)
    correct = torch.as_tensor(correct, dtype=torch.float64)
    index = torch.bucketize(confidence, torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)[1:-1], right=False)
    count = torch.bincount(index, minlength=bins).double()
    gap = (torch.bincount(index, weights=correct, minlength=bins) - torch.bincount(index, weights=confidence, minlength=bins)).abs()
    return float(gap.sum() / count.sum())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable,
    *,
    num_classes: int,
    device: torch.device,
    class_bias: torch.Tensor | None = None,
    where: str = "eval data",
) -> dict[str, Any]:
    """Run `model` (in eval mode, float32) over `batches` of `train.stream.Batch`.
    Token rows (a causal-LM student) are scored per token (train/lm_metrics.py)."""
    from train.lm_metrics import TokenEvalAccumulator

    was_training = model.training
    model.eval()
    acc = None
    bias = class_bias.to(device) if class_bias is not None else None
    try:
        for batch in batches:
            batch = batch.to(device, non_blocking=device.type == "cuda")
            if getattr(batch, "tokens", False):  # token rows (train.stream.Batch)
                acc = acc or TokenEvalAccumulator(device)
                logits = model(batch.input_ids, batch.attention_mask).float()  # [B, L, V]
                acc.update(logits + bias if bias is not None else logits, batch.inputs, batch.teacher_top1)
                continue
            acc = acc or EvalAccumulator(num_classes, device, where)
            logits = model(batch.inputs).float()  # [B, C]
            if bias is not None:
                logits = logits + bias
            acc.update(logits, batch.labels, batch.teacher_top1)
    finally:
        model.train(was_training)
    return (acc or EvalAccumulator(num_classes, device, where)).result()


def evaluate_sources(model: torch.nn.Module, sources: dict, *, batch_size: int, num_classes: int, world: World) -> dict[str, Any]:
    """Evaluate on each `train.stream.StreamSource` in `sources` ({path: source}), all
    of it, on `world.device`.

    Returns {"eval": {path: metrics}} plus the first source's scalar metrics at the
    top level (what the epoch table shows); {} without sources."""
    if not sources:
        return {}
    results = {}
    for path, source in sources.items():
        batches = source.epoch(batch_size=batch_size, seed=0, epoch=0, shuffle=False)
        results[path] = evaluate(model, batches, num_classes=num_classes, device=world.device, where=path)
    first = next(iter(results.values()))
    return {**{k: v for k, v in first.items() if not isinstance(v, list)}, "eval": results}


def parse_class_bias(items: list[str] | None, num_classes: int, class_names: list[str] | None = None) -> torch.Tensor | None:
    """["3=3.5"] (or ["three=3.5"] with class names) -> float32 [C] with 3.5 at
    index 3; None when no bias is given."""
    if not items:
        return None
    bias = torch.zeros(num_classes)
    names = {name: i for i, name in enumerate(class_names or [])}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            amount = float(value)
        except ValueError:
            amount = None
        if not sep or amount is None or not math.isfinite(amount):
            raise UserError(f"--class-bias {item!r} must look like CLASS=VALUE with a finite VALUE, e.g. 3=3.5")
        if key in names:
            index = names[key]
        else:
            try:
                index = int(key)
            except ValueError:
                known = f"or one of the class names {', '.join(names)}" if names else "(this run has no class names)"
                raise UserError(f"--class-bias {item!r}: {key!r} is not a class index 0..{num_classes - 1} {known}") from None
        if not 0 <= index < num_classes:
            raise UserError(f"--class-bias {item!r}: class must be 0..{num_classes - 1}")
        bias[index] += amount
    return bias


# -- the metrics log and its display --------------------------------------------


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, appended and flushed per epoch.
    Only the main process (rank 0 of `world`) writes it."""

    def __init__(self, path: Path, world: World = SINGLE_PROCESS) -> None:
        self.path = path
        self.world = world

    def append(self, record: dict[str, Any]) -> None:
        # Rewritten whole and atomically (it is a line per epoch): a full disk or a
        # kill mid-write leaves the previous log, never half a line.
        self._write(self.read() + [record])

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a torn line from an older, non-atomic writer: that epoch is logged again on resume
        return records

    def keep_until(self, step: int) -> None:
        """Drop records logged after `step` (a resumed run logs them again)."""
        self._write([r for r in self.read() if r.get("step", 0) <= step])

    def _write(self, records: list[dict[str, Any]]) -> None:
        from transferset.io import atomic_write

        if not self.world.is_main:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write(self.path, lambda f: f.write(text.encode()))


# (record key, table header, format, width): fits an 80-column terminal.
TRAIN_COLUMNS = (
    ("epoch", "epoch", "{}", 5),
    ("step", "step", "{}", 7),
    ("train_loss", "loss", "{:.4f}", 7),
    ("lr", "lr", "{:.2e}", 8),
)
EVAL_COLUMNS = (
    ("accuracy", "acc", "{:.4f}", 6),
    ("errors", "errors", "{:,}", 6),
    ("nll", "nll", "{:.4f}", 7),
    ("ece", "ece", "{:.4f}", 6),
    ("agreement", "agree", "{:.4f}", 6),
    ("perplexity", "ppl", "{:.2f}", 7),  # token rows (train/lm_metrics.py)
)
SPEED_COLUMN = ("rows_per_s", "rows/s", "{:,.0f}", 9)


def short_names(paths: Iterable[str]) -> dict[str, str]:
    """{path: short name}: the file or directory name without `.parquet`; the whole
    path where two would share a name."""
    paths = list(paths)
    names = {p: Path(p.rstrip("/")).name.removesuffix(".parquet") or p for p in paths}
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {p: (p if n in shared else n) for p, n in names.items()}


class EpochTable:
    """One row per epoch: the training columns, then each --eval set's metrics under
    its short name. A rich table on a terminal; plain `key=value` lines otherwise.
    Shown by the main process (rank 0 of `world`) only, on stderr (progress, not results)."""

    def __init__(self, quiet: bool = False, stream=None, world: World = SINGLE_PROCESS) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet or not world.is_main
        self.rich = not quiet and self.stream.isatty()
        self.header_shown = False

    def show(self, record: dict[str, Any]) -> None:
        if self.quiet:  # --quiet: the metrics still go to metrics.jsonl (and --json)
            return
        groups = self._groups(record)  # [(title, [(header, cell, width)])]
        if not self.rich:
            print("  ".join(" ".join(f"{head}={cell}" for head, cell, _ in cells) if not title else
                            f"{title}: " + " ".join(f"{head}={cell}" for head, cell, _ in cells) for title, cells in groups),
                  file=self.stream, flush=True)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=not self.header_shown, box=None, pad_edge=False, padding=(0, 0, 0, 1))
        for title, cells in groups:
            for head, _, width in cells:
                header = f"{title} {head}" if title else head
                table.add_column(header, justify="right", width=max(width, len(header)), no_wrap=True)
        table.add_row(*(cell for _, cells in groups for _, cell, _ in cells))
        Console(file=self.stream).print(table)
        self.header_shown = True

    def _groups(self, record: dict[str, Any]) -> list[tuple[str, list[tuple[str, str, int]]]]:
        """[(title, [(header, cell, width)])]: the training columns, each eval set's
        (every metric in plain lines; on a terminal accuracy and agreement only when
        there are several sets, to fit its width), the speed."""
        def cells(metrics: dict[str, Any], columns) -> list[tuple[str, str, int]]:
            return [(head, fmt.format(metrics[key]) if metrics.get(key) is not None else "-", width) for key, head, fmt, width in columns]

        groups = [("", cells(record, TRAIN_COLUMNS))]
        evals = record.get("eval") or {}
        names = short_names(evals)
        brief = self.rich and len(evals) > 1
        for path, metrics in evals.items():
            # unlabelled sets have no accuracy; only transfer sets give agreement
            columns = [c for c in EVAL_COLUMNS if c[0] in metrics and (not brief or c[0] in ("accuracy", "agreement"))]
            groups.append((names[path], cells(metrics, columns)))
        groups.append(("", cells(record, (SPEED_COLUMN,))))
        return groups


def summary_lines(record: dict[str, Any], out: Path) -> list[str]:
    """The run's result, for stdout: the final training loss, one line per --eval set, the student."""
    from transferset.progress import counted

    lines = [f"trained {out}: {counted(record['epoch'], 'epoch')}, {counted(record['step'], 'step')}, final train loss {record['train_loss']:.4f}"
             + (f" (health: {', '.join(record['health'])})" if record.get("health") else "")]
    evals = record.get("eval") or {}
    names = short_names(evals)
    for path, m in evals.items():
        parts = [f"{m['rows']:,} rows"]
        if m.get("labelled"):
            parts += [f"accuracy {m['accuracy']:.4f}", f"errors {m['errors']:,}", f"nll {m['nll']:.4f}", f"ece {m['ece']:.4f}"]
        if "perplexity" in m:
            parts += [f"{m['positions']:,} target tokens", f"nll {m['nll']:.4f}/token", f"perplexity {m['perplexity']:.2f}"]
        if "agreement" in m:
            parts.append(f"agreement {m['agreement']:.4f}")
        lines.append(f"  {names[path]}: " + ", ".join(parts))
    lines.append(f"  student: {out / 'student.pt2'}")
    return lines
