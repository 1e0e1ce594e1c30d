"""Summary statistics of a transfer set, computed by polars over the shards.

Everything here is a streaming polars query over the Parquet files (no Python
objects per row): sizes, label coverage per source, ensemble and per-member
accuracy against the labels, the soft targets' mean entropy, and how often
the members agree. The per-row statistics of the targets (the ensemble's top
class, the entropy, a kind's own extras such as top-k's tail mass) come from
the set's codec (`codec.statistics`), so every kind is summarised.

polars is imported only inside the functions (the trainer imports nothing here).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from transferset.errors import UserError, first_line
from transferset.format.codecs import get_codec, sequence_length
from transferset.format.manifest import Manifest, read_manifest
from transferset.format.schema import LABEL, SOURCE, TEACHER_LOGITS
from transferset.format.shards import check_shard, check_shards_match

if TYPE_CHECKING:
    import polars as pl

def check_shards_intact(manifest: Manifest) -> None:
    """polars does not check Parquet page CRCs (2.1, measured: a flipped bit in a
    float page reads as a different value), so every shard's SHA-256 is checked
    against the manifest first: one sequential read, a fraction of the query's time
    (docs/benchmarks.md, "Integrity checks")."""
    for record in manifest.shards:
        problem = check_shard(manifest.directory, record)
        if problem:
            raise UserError(
                f"{manifest.directory / record.path}: {problem}; the transfer set is damaged: "
                f"run `transferset verify {manifest.directory} --drop-bad` and rerun its generate"
            )


def summarize(directory: str, source_root: str | None = None) -> dict[str, Any]:
    import polars as pl

    manifest = read_manifest(directory)
    check_shards_match(manifest)
    check_shards_intact(manifest)
    if sequence_length(manifest.provenance) is not None:  # per-token targets: their own streamed summary
        from transferset.inspect_tokens import summarize_tokens

        return summarize_tokens(manifest, str(directory), source_root)
    prov = manifest.provenance
    files = [str(p) for p in manifest.shard_paths()]
    frame = pl.scan_parquet(files)
    names = frame.collect_schema().names()
    kept = TEACHER_LOGITS in names
    k = len(prov.teachers)
    labelled = pl.col(LABEL).is_not_null()

    stats = get_codec(prov.target_kind).statistics(prov)  # per-row polars expressions of the set's kind
    top1 = stats["top1"]
    exprs = [
        pl.len().alias("rows"),
        labelled.sum().alias("labelled"),
        stats["entropy"].mean().alias("entropy"),
        (top1 == pl.col(LABEL)).filter(labelled).mean().alias("ensemble_accuracy"),
        *[expr.mean().alias(name) for name, expr in stats.items() if name not in ("top1", "entropy")],
    ]
    if kept:
        member_argmax = [pl.col(TEACHER_LOGITS).arr.get(i).arr.arg_max() for i in range(k)]
        for i, am in enumerate(member_argmax):
            exprs.append((am == pl.col(LABEL)).filter(labelled).mean().alias(f"teacher_{i}_accuracy"))
            exprs.append((am == top1).mean().alias(f"teacher_{i}_agrees_with_ensemble"))
        all_agree = pl.all_horizontal([am == member_argmax[0] for am in member_argmax[1:]]) if k > 1 else pl.lit(True)
        exprs.append(all_agree.mean().alias("members_agree"))
    try:
        totals = frame.select(exprs).collect(engine="streaming").row(0, named=True)
        per_source = (
            frame.group_by(SOURCE)
            .agg(pl.len().alias("rows"), labelled.sum().alias("labelled"))
            .sort(SOURCE)
            .collect(engine="streaming")
            .to_dicts()
        )
    except pl.exceptions.PolarsError as error:  # a shard changed after its checksum was checked
        reason = first_line(error)
        raise UserError(
            f"transfer set {str(directory)!r} has a shard that cannot be read ({reason}); "
            f"run `transferset verify {directory} --drop-bad` and rerun its generate"
        ) from None
    size = sum(s.bytes for s in manifest.shards)
    teachers = []
    for i, t in enumerate(prov.teachers):
        teachers.append({
            "name": t.get("name"), "format": t.get("format"), "weight": t.get("weight"), "sha256": t.get("sha256"),
            "accuracy": totals.get(f"teacher_{i}_accuracy"),
            "agrees_with_ensemble": totals.get(f"teacher_{i}_agrees_with_ensemble"),
        })
    return {
        "directory": str(directory),
        "rows": totals["rows"],
        "labelled_rows": totals["labelled"],
        "unlabelled_rows": totals["rows"] - totals["labelled"],
        "shards": len(manifest.shards),
        "bytes": size,
        "bytes_per_row": size / max(totals["rows"], 1),
        "num_classes": manifest.num_classes,
        "class_names": prov.class_names,
        "temperature": manifest.temperature,
        "combine": manifest.combine,
        "storage_dtype": prov.storage_dtype,
        "target_kind": prov.target_kind,
        "target_options": prov.target_options,
        "target_bytes_per_row": get_codec(prov.target_kind).bytes_per_row(prov),
        "inputs": prov.inputs or "copy",  # "reference": the shards hold source_row, the sources the inputs
        "teachers": teachers,
        "teacher_logits_kept": kept,
        "ensemble_accuracy": totals["ensemble_accuracy"],
        "mean_entropy_nats": totals["entropy"],
        "mean_tail_mass": totals.get("tail_mass"),  # top-k sets: the stored tail bucket's mean probability
        "max_entropy_nats": math.log(manifest.num_classes),
        "members_agree": totals.get("members_agree"),
        "sources": per_source,
        "created": prov.created,
        "device": prov.device,
        "versions": prov.versions,
    }
