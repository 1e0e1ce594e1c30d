"""`inspect` of a per-token (language-model) transfer set, streamed over record batches.

Per-token targets are [rows, L, ...] nested lists, which polars' per-row expressions
(transferset/inspect.py) do not reach into; so this reads each shard in record
batches of at most BATCH_VALUES decoded floats (pyarrow `iter_batches`), decodes
them with the set's codec, and sums in NumPy float64 over the target positions
(target_mask 1). Memory: one batch, whatever the set's size.

    tokens                  real tokens (attention_mask 1)
    target_positions        positions with a target (position t: the distribution of token t + 1)
    mean_entropy_nats       per target position, in nats at the stored T: dense, of softmax(logits / T);
                            top-k, of the K ids plus the tail bucket (a lower bound of the full entropy);
                            sampled, sum (count / N) * -log p(id) (an unbiased estimate)
    mean_tail_mass          top-k: the probability outside the stored K, per target position
    teacher_top1_next_token fraction of target positions whose teacher top-1 (support_ids[..., 0],
                            or argmax of the dense logits) is the next token of the text
    bytes_per_token         shard bytes / tokens
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transferset.errors import UserError, first_line
from transferset.format.codecs import get_codec, sequence_length
from transferset.format.manifest import Manifest
from transferset.format.references import SOURCE_ROW, SourceJoin, by_reference, locate_sources
from transferset.format.schema import SOURCE

BATCH_VALUES = 1 << 24  # decoded target values per record batch (64 MB of float32)
COLUMNS = ("input_ids", "attention_mask", "target_mask")


def _sums(decoded: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, temperature: float) -> dict[str, float]:
    """Sums over the target positions of one batch (mask bool [B, L])."""
    following = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)[mask]  # next token [N]
    if "target_logits" in decoded:
        z = decoded["target_logits"][mask].astype(np.float64) / temperature  # [N, V]
        z -= z.max(-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
        entropy = -(np.exp(log_p) * log_p).sum(-1)
        top1, tail = z.argmax(-1), None
    else:
        weights, lp = decoded["support_weights"][mask].astype(np.float64), decoded["support_logprobs"][mask].astype(np.float64)
        tail_log = decoded["tail_logmass"][mask].astype(np.float64)
        finite = np.isfinite(tail_log)
        tail = np.where(finite, np.exp(np.where(finite, tail_log, 0.0)), 0.0)
        entropy = -(weights * lp).sum(-1) - np.where(finite, tail * np.where(finite, tail_log, 0.0), 0.0)
        top1 = decoded["support_ids"][mask][:, 0]
    return {"entropy": float(entropy.sum()), "tail": float(tail.sum()) if tail is not None else 0.0,
            "agree": float((top1 == following).sum())}


def summarize_tokens(manifest: Manifest, directory: str, source_root: str | None = None) -> dict[str, Any]:
    """The per-token summary (shards already checked against the manifest by the caller). A set
    with its inputs by reference reads its tokens from its sources (format/references.py)."""
    prov = manifest.provenance
    codec = get_codec(prov.target_kind)
    length, vocab = sequence_length(prov), manifest.num_classes
    join = SourceJoin(locate_sources(prov, f"transfer set {directory}", source_root), list(COLUMNS)) if by_reference(prov) else None
    columns = list(dict.fromkeys([*((SOURCE, SOURCE_ROW) if join else COLUMNS), *codec.decode_columns(prov)]))
    options = prov.target_options or {}
    per_row = length * max(int(options.get("k", options.get("n", vocab))), 1)  # decoded values per row (dense: V per position)
    totals = {"rows": 0, "tokens": 0, "positions": 0, "entropy": 0.0, "tail": 0.0, "agree": 0.0}
    for path in manifest.shard_paths():
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=max(1, BATCH_VALUES // per_row), columns=columns):
                table = pa.Table.from_batches([batch])
                if join is not None:
                    for name, column in zip(COLUMNS, join.inputs(table, str(path)).columns):
                        table = table.append_column(name, column)
                ids = np.stack(table.column("input_ids").to_numpy(zero_copy_only=False)).astype(np.int64).reshape(-1, length)
                attention = np.stack(table.column("attention_mask").to_numpy(zero_copy_only=False)).reshape(-1, length)
                mask = np.stack(table.column("target_mask").to_numpy(zero_copy_only=False)).reshape(-1, length) != 0
                sums = _sums(codec.decode(table, prov, str(path)), ids, mask, prov.temperature)
                totals["rows"] += table.num_rows
                totals["tokens"] += int((attention != 0).sum())
                totals["positions"] += int(mask.sum())
                for key, value in sums.items():
                    totals[key] += value
        except (pa.ArrowException, OSError, ValueError) as error:  # a shard changed after its checksum was checked
            raise UserError(f"transfer set {directory!r} has a shard that cannot be read ({first_line(error)}); "
                            f"run `transferset verify {directory} --drop-bad` and rerun its generate") from None
    size = sum(s.bytes for s in manifest.shards)
    positions = max(totals["positions"], 1)
    return {
        "directory": str(directory), "per_token": True, "sequence_length": length, "rows": totals["rows"],
        "tokens": totals["tokens"], "target_positions": totals["positions"], "shards": len(manifest.shards), "bytes": size,
        "bytes_per_row": size / max(totals["rows"], 1), "bytes_per_token": size / max(totals["tokens"], 1),
        "num_classes": vocab, "temperature": manifest.temperature, "combine": manifest.combine, "storage_dtype": prov.storage_dtype,
        "target_kind": prov.target_kind, "target_options": prov.target_options,
        "teachers": [{"name": t.get("name"), "format": t.get("format"), "weight": t.get("weight"), "sha256": t.get("sha256")}
                     for t in prov.teachers],
        "mean_entropy_nats": totals["entropy"] / positions if totals["positions"] else None,
        "max_entropy_nats": math.log(vocab),
        "mean_tail_mass": totals["tail"] / positions if totals["positions"] and prov.target_kind == "topk" else None,
        "teacher_top1_next_token": totals["agree"] / positions if totals["positions"] else None,
        "created": prov.created, "device": prov.device, "versions": prov.versions,
    }


def _entropy_note(kind: str) -> str:
    return {"topk": "; of the top k plus one tail bucket, a lower bound", "sampled": "; an unbiased estimate from the draws"}.get(kind, "")


def tables(s: dict) -> list[tuple[str, list[str] | None, list[list[str]]]]:
    """The per-token summary as `transferset inspect` prints it (its `tables` contract)."""
    from transferset.progress import counted

    options = s.get("target_options") or {}
    width = options.get("k", options.get("n"))
    kind = s["target_kind"] + (f":{width}" if width is not None else "")
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    head = [
        ["rows", f"{counted(s['rows'], 'row')} of {s['sequence_length']} positions: {s['tokens']:,} tokens, {s['target_positions']:,} target positions"],
        ["vocabulary", f"{s['num_classes']:,} tokens"],
        ["targets", f"{kind} per token: {s['combine']} mean at T = {s['temperature']:g}, stored as {s['storage_dtype']}"],
        ["on disk", f"{s['bytes'] / 1e6:.2f} MB in {counted(s['shards'], 'shard')}, {s['bytes_per_token']:.1f} B/token"],
        ["mean entropy", "-" if s["mean_entropy_nats"] is None else
         f"{s['mean_entropy_nats']:.4f} nats per target position (max {s['max_entropy_nats']:.4f}) at T = {s['temperature']:g}"
         + _entropy_note(s["target_kind"])],
        *([["mean tail mass", f"{s['mean_tail_mass']:.3g} (the probability outside the stored top k)"]]
          if s.get("mean_tail_mass") is not None else []),
        ["teacher top-1 = next token", f"{pct(s['teacher_top1_next_token'])} of target positions"],
        ["created", f"{s['created']} on {s['device']}"],
    ]
    teachers = [[t["name"], t["format"], f"{t['weight']:.3f}", (t["sha256"] or "")[:16]] for t in s["teachers"]]
    return [(f"transfer set {s['directory']}", None, head), ("teachers", ["name", "format", "weight", "sha256"], teachers)]
