"""The report's statistics of a dense transfer set: polars queries over the shards.

Two streaming polars queries (`collect(engine="streaming")`, three with the
members' logits) over the shard files end in a few small numbers: nothing per row
reaches Python, and memory follows the row-group size, not the set's size
(docs/report.md has the measurements).

The targets are p = softmax(logits / T) per row, computed in float32 log space:
with z = logits / T and m = max(z),

    s = sum_c exp(z_c - m)                 (>= 1: the top term is exp(0))
    p_c = exp(z_c - m) / s
    max_c p_c = 1 / s
    H(p) = log s - sum_c p_c (z_c - m)     (nats; no log of a zero probability)

Sums over rows are taken in float64 (a float32 sum over a million rows drifts).

Each row has a *reference class*: its label when labelled, the ensemble's top
class (argmax of the stored logits, first of equals) otherwise. The soft
confusion matrix is the mean target distribution per reference class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from transferset.errors import UserError, first_line
from transferset.format.manifest import Manifest
from transferset.format.schema import LABEL, LOGITS, TEACHER_LOGITS

if TYPE_CHECKING:
    import polars as pl

HISTOGRAM_BINS = 40
RELIABILITY_BINS = 10  # equal-width confidence bins of the reliability diagram and its ECE


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray  # [B + 1], equal width; a value on the last edge (or past it, by rounding) counts in the last bin
    labelled: np.ndarray  # [B] counts over labelled rows
    unlabelled: np.ndarray  # [B] counts over unlabelled rows


@dataclass(frozen=True)
class Reliability:
    edges: np.ndarray  # [B + 1] over confidence (the target's max probability), 0..1
    counts: np.ndarray  # [B] labelled rows per bin
    confidence: np.ndarray  # [B] mean confidence per bin (NaN where empty)
    accuracy: np.ndarray  # [B] fraction of rows whose top class is the label (NaN where empty)
    ece: float  # sum_b counts_b / N * |accuracy_b - confidence_b|


@dataclass(frozen=True)
class Agreement:
    names: list[str]  # the members, then "ensemble"
    matrix: np.ndarray  # [K + 1, K + 1]: fraction of all rows where the two top classes are equal


@dataclass(frozen=True)
class DenseStats:
    num_classes: int
    temperature: float
    rows: int
    labelled: int
    confusion: np.ndarray  # [C, C]: row r = mean target distribution over rows of reference class r (NaN rows: none)
    reference_counts: np.ndarray  # [C] rows per reference class
    entropy: Histogram  # over [0, log C] nats
    confidence: Histogram  # max probability, over [1/C, 1]
    reliability: Reliability | None  # None without labelled rows
    agreement: Agreement | None  # None unless the members' logits were kept


def target_columns(num_classes: int, temperature: float) -> list[pl.Expr]:
    """Per-row columns: probs [C] (float32), confidence, entropy, top (the ensemble's class)."""
    import polars as pl

    z = pl.col(LOGITS).cast(pl.Array(pl.Float32, num_classes)) / temperature
    # z - m <= 0; a stored -inf (a probability that underflowed) is clamped to the
    # lowest float32 so that p * (z - m) is 0 * finite, not 0 * -inf = NaN.
    shifted = (z - z.arr.max()).arr.eval(pl.element().clip(lower_bound=np.finfo(np.float32).min))
    unnormalised = shifted.arr.eval(pl.element().exp())
    total = unnormalised.arr.sum()
    probs = unnormalised / total
    # Every column is cast to its dtype: polars 2.1 plans `1.0 / <float32>` as Float64
    # but computes Float32, and a float64 sum over it then panics in the streaming engine.
    return [
        probs.cast(pl.Array(pl.Float32, num_classes)).alias("probs"),
        (1.0 / total).cast(pl.Float32).alias("confidence"),
        (total.log() - (probs * shifted).arr.sum()).cast(pl.Float32).alias("entropy"),
        pl.col(LOGITS).arr.arg_max().cast(pl.Int32).alias("top"),
    ]


def _bin(value: pl.Expr, low: float, high: float, bins: int) -> pl.Expr:
    """Equal-width bin index of `value` over [low, high], clipped to 0..bins-1 (in float64)."""
    import polars as pl

    scaled = (value.cast(pl.Float64) - low) / (high - low) * bins
    return scaled.floor().clip(0, bins - 1).cast(pl.Int32)


def dense_stats(manifest: Manifest, bins: int = HISTOGRAM_BINS, reliability_bins: int = RELIABILITY_BINS) -> DenseStats:
    """Every statistic the dense report draws. The caller has checked the shards
    (`summarize` does: footers, sizes, SHA-256); a polars failure here is still one line."""
    import polars as pl

    c, temperature = manifest.num_classes, manifest.temperature
    frame = pl.scan_parquet([str(p) for p in manifest.shard_paths()])
    kept = TEACHER_LOGITS in frame.collect_schema().names()
    members = [pl.col(TEACHER_LOGITS).arr.get(i).arr.arg_max().cast(pl.Int32).alias(f"member_{i}")
               for i in range(len(manifest.provenance.teachers))] if kept else []
    rows = frame.select(pl.col(LABEL), *target_columns(c, temperature), *members).with_columns(
        pl.col(LABEL).is_not_null().alias("labelled"),
        pl.coalesce(pl.col(LABEL), pl.col("top")).alias("reference"),
    )
    queries = {"confusion": _confusion_query(rows, c), "binned": _binned_query(rows, c, bins, reliability_bins)}
    if kept:
        queries["agreement"] = _agreement_query(rows, len(members))
    try:
        # One query at a time: collect_all ran them side by side at twice the memory and
        # no faster (1M rows x 100 classes, 25k-row groups: 606 MB, 16 s vs 362 MB, 12.6 s).
        done = {name: query.collect(engine="streaming") for name, query in queries.items()}
    except pl.exceptions.PolarsError as error:  # a shard changed after its checksum was checked
        raise UserError(
            f"transfer set {str(manifest.directory)!r} has a shard that cannot be read ({first_line(error)}); "
            f"run `transferset verify {manifest.directory} --drop-bad` and rerun its generate"
        ) from None
    confusion, reference_counts = _confusion(done["confusion"], c)
    entropy = _histogram(done["binned"], "entropy_bin", bins, 0.0, math.log(c))
    labelled = int(entropy.labelled.sum())
    names = [str(t.get("name")) for t in manifest.provenance.teachers]
    return DenseStats(
        num_classes=c, temperature=temperature, rows=int(reference_counts.sum()), labelled=labelled,
        confusion=confusion, reference_counts=reference_counts, entropy=entropy,
        confidence=_histogram(done["binned"], "confidence_bin", bins, 1.0 / c, 1.0),
        reliability=_reliability(done["binned"], reliability_bins) if labelled else None,
        agreement=Agreement([*names, "ensemble"], _agreement(done["agreement"], len(members))) if kept else None,
    )


# -- the queries (lazy) and their small results -> numpy ---------------------------------------


def _confusion_query(rows: pl.LazyFrame, c: int) -> pl.LazyFrame:
    import polars as pl

    fields = [f"p{i}" for i in range(c)]
    return (rows.select("reference", pl.col("probs").arr.to_struct(fields)).unnest("probs")
            .group_by("reference").agg(pl.len().alias("rows"), *[pl.col(f).cast(pl.Float64).sum() for f in fields]))


def _confusion(frame: pl.DataFrame, c: int) -> tuple[np.ndarray, np.ndarray]:
    sums, counts = np.zeros((c, c)), np.zeros(c, dtype=np.int64)
    reference = frame["reference"].to_numpy()
    counts[reference] = frame["rows"].to_numpy()
    sums[reference] = frame.select([f"p{i}" for i in range(c)]).to_numpy()
    with np.errstate(invalid="ignore"):
        return sums / counts[:, None], counts  # NaN rows: a class no row refers to


def _binned_query(rows: pl.LazyFrame, c: int, bins: int, reliability_bins: int) -> pl.LazyFrame:
    """One pass for both histograms and the reliability bins: rows counted per
    (labelled, entropy bin, confidence bin, reliability bin), with the sums the
    reliability diagram needs. At most a few thousand groups: the confidence bin
    nearly fixes the reliability bin."""
    import polars as pl

    return rows.group_by(
        "labelled",
        _bin(pl.col("entropy"), 0.0, math.log(c), bins).alias("entropy_bin"),
        _bin(pl.col("confidence"), 1.0 / c, 1.0, bins).alias("confidence_bin"),
        _bin(pl.col("confidence"), 0.0, 1.0, reliability_bins).alias("reliability_bin"),
    ).agg(
        pl.len().alias("rows"),
        pl.col("confidence").cast(pl.Float64).sum().alias("confidence"),
        (pl.col("top") == pl.col(LABEL)).sum().alias("correct"),  # null (not counted) where unlabelled
    )


def _histogram(frame: pl.DataFrame, column: str, bins: int, low: float, high: float) -> Histogram:
    labelled = frame["labelled"].to_numpy()
    index, rows = frame[column].to_numpy(), frame["rows"].to_numpy()
    count = lambda where: np.bincount(index[where], rows[where], minlength=bins).astype(np.int64)  # noqa: E731
    return Histogram(np.linspace(low, high, bins + 1), count(labelled), count(~labelled))


def _reliability(frame: pl.DataFrame, bins: int) -> Reliability:
    import polars as pl

    labelled = frame.filter(pl.col("labelled"))
    index = labelled["reliability_bin"].to_numpy()
    counts = np.bincount(index, labelled["rows"].to_numpy(), minlength=bins).astype(np.int64)
    confidence = np.bincount(index, labelled["confidence"].to_numpy(), minlength=bins)
    correct = np.bincount(index, labelled["correct"].to_numpy(), minlength=bins)
    ece = float(np.abs(correct - confidence).sum() / counts.sum())  # sum_b n_b/N |acc_b - conf_b|
    with np.errstate(invalid="ignore"):
        return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, confidence / counts, correct / counts, ece)


def _agreement_query(rows: pl.LazyFrame, k: int) -> pl.LazyFrame:
    import polars as pl

    tops = [pl.col(f"member_{i}") for i in range(k)] + [pl.col("top")]
    return rows.select([(tops[i] == tops[j]).mean().alias(f"{i},{j}") for i in range(k + 1) for j in range(i + 1, k + 1)])


def _agreement(frame: pl.DataFrame, k: int) -> np.ndarray:
    matrix = np.eye(k + 1)
    for name, value in frame.row(0, named=True).items():
        i, j = map(int, name.split(","))
        matrix[i, j] = matrix[j, i] = value
    return matrix
