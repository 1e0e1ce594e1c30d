"""Everything `generate` checks and decides before the first shard: the sources,
the resume fingerprint, the output directory, the teachers and the provenance.

Checks come in order of cost: flags and source footers first, then the
fingerprint (so a finished or foreign --out answers before any teacher loads),
then the teachers and one 4-row probe batch.
"""

from __future__ import annotations

import json
import platform
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from transferset import __version__, ownership, replace
from transferset import teachers as teacher_lib
from transferset.combine import normalised_weights
from transferset.errors import UserError, first_line
from transferset.format.codecs import TargetCodec, get_codec
from transferset.format.manifest import JOB, MANIFEST, Manifest, read_job, read_manifest
from transferset.format.provenance import Provenance, fingerprint
from transferset.generate import specialists
from transferset.generate.config import GenerateConfig
from transferset.inputs import TARGET_MASK
from transferset.io import create_exclusive_json, expand_parquet_paths
from transferset.labels import check_label_range
from transferset.progress import say
from transferset.sources import SourceFile, check_unique_ids, label_stats, open_source, read_first_rows


@dataclass
class Context:
    """What every shard of one run shares (read-only once built)."""

    cfg: GenerateConfig
    sources: list[SourceFile]
    teachers: list[teacher_lib.Teacher]
    weights: torch.Tensor  # [K] float32, summing to 1
    device: torch.device
    provenance: Provenance
    schema: pa.Schema
    codec: TargetCodec
    specialists: list[teacher_lib.Teacher] = field(default_factory=list)  # cfg.specialists, loaded


def open_sources(cfg: GenerateConfig) -> list[SourceFile]:
    # A transfer set written inside a source directory must not become a source of its own rerun.
    inside_out = lambda path: cfg.out.resolve() in Path(path).resolve().parents  # noqa: E731
    paths = [path for path in expand_parquet_paths(cfg.sources, "source") if not inside_out(path)]
    if not paths:
        raise UserError(f"every --source file lies inside --out {str(cfg.out)!r}; give the source data, not the transfer set")
    if cfg.id_column:
        # Repeated or null ids break "every row exactly once" for consumers joining on id.
        check_unique_ids(paths, cfg.id_column)
    return [open_source(path, cfg.label_column) for path in paths]


def check_sources(cfg: GenerateConfig, sources: list[SourceFile]) -> list[pa.Field]:
    """The input fields every source stores (one Arrow type for all of them)."""
    fields = None
    seen: dict[str, str] = {}
    for s in sources:
        if not cfg.id_column and s.fingerprint in seen:
            # Derived ids come from the content hash: two identical files would give every row twice under one id.
            raise UserError(f"sources {seen[s.fingerprint]!r} and {s.path!r} have identical content; drop one, or give an --id-column")
        seen[s.fingerprint] = s.path
        cfg.input_spec.check_field(s.schema, f"source {s.path!r}")
        _check_id_column(cfg, s)
        these = cfg.input_spec.stored_fields(s.schema)
        if fields is None:
            fields = these
        elif [f.type for f in these] != [f.type for f in fields]:
            raise UserError(
                f"source {s.path!r} stores its input as {these[0].type}, but {sources[0].path!r} as {fields[0].type}; "
                f"convert the sources to one type"
            )
    return fields


def _check_id_column(cfg: GenerateConfig, source: SourceFile) -> None:
    if not cfg.id_column:
        return
    if cfg.id_column not in source.schema.names:
        raise UserError(f"source {source.path!r} has no --id-column {cfg.id_column!r}; add it or drop the flag to use derived ids")
    id_type = source.schema.field(cfg.id_column).type
    if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise UserError(f"source {source.path!r}: --id-column {cfg.id_column!r} is {id_type}; ids must be integers or strings")


def fingerprint_values(cfg: GenerateConfig, sources: list[SourceFile]) -> dict:
    """What the resume key hashes: the FINGERPRINTED provenance fields, teachers and
    sources by content. Recorded in `_job.json`, so a refusal can name what changed."""
    return {
        "target_kind": cfg.target_kind,
        "temperature": cfg.temperature,
        "combine": cfg.combine,
        "storage_dtype": cfg.storage_dtype,
        "teachers": [{**teacher_lib.fingerprint(t), "weight": t.ensemble_weight} for t in cfg.teachers] + specialists.fingerprints(cfg),
        "sources": [s.fingerprint for s in sources],
        "input": cfg.input_spec.to_dict(),
        "class_names": cfg.class_names,
        "label_column": cfg.label_column,
        "id_column": cfg.id_column,
        "teacher_logits_kept": cfg.keep_teacher_logits,
        "shard_rows": cfg.shard_rows,
        "row_group_rows": cfg.row_group_rows,
        "batch_size": cfg.batch_size,  # batch boundaries change float sums: resumed shards must match
        "precision": cfg.precision,
        "num_writers": cfg.num_writers,
        "target_options": cfg.target_options,
        "extra": cfg.extra,
        "inputs": None if cfg.inputs == "copy" else cfg.inputs,  # None: not hashed (every earlier set's key stays)
    }


# How a refusal names each fingerprinted setting.
_SETTING_FLAGS = {
    "target_kind": "--targets", "teachers": "the teachers (--teacher, --weights, --teacher-weight or their files)",
    "sources": "the --source data", "input": "--input-*/--transform", "teacher_logits_kept": "--keep-teacher-logits",
    "target_options": "the --targets options", "extra": "extra settings", "inputs": "--inputs",
}


def changed_settings(old: dict | None, new: dict) -> str:
    """The flags whose values differ between two fingerprint_values records."""
    if not isinstance(old, dict):
        return "unknown: the set was started by an earlier transferset"
    names = [_SETTING_FLAGS.get(k, "--" + k.replace("_", "-")) for k in sorted(new) if old.get(k) != new[k]]
    return ", ".join(names) or "unknown"


def prepare_out(cfg: GenerateConfig, values: dict) -> Manifest | None:
    """Claim the output directory (ownership.py: one process per set, or per writer
    index) and make it ready; refuse one that holds something else.
    Returns the manifest when the set is already complete with this configuration."""
    out, config_key = cfg.out, fingerprint(values)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a directory path")
    writer = (cfg.writer_index, cfg.num_writers) if cfg.num_writers > 1 else None
    held = ownership.claim(out, writer=writer)
    if (out / ownership.DISCARD).exists():  # a kill interrupted an --overwrite: its old set goes first,
        ownership.exclusive(held)  # by one process alone (cooperative writers wait for it)
        replace.finish_discard(out)
        ownership.downgrade(held)
        say(f"finished removing the set an interrupted --overwrite was replacing in {out}", cfg.quiet)
    job = out / JOB
    # A cooperative writer's temp files (its _job.json draft, a shard being written) may be all there is yet.
    if [p for p in ownership.entries(out) if not (p.name.startswith(".") and ".tmp-" in p.name)]:
        if not job.exists():
            raise UserError(f"--out {str(out)!r} exists and is not a transfer set; choose another directory (it is never deleted)")
        recorded = read_job(job.parent)
        if recorded.get("config_fingerprint") != config_key:
            if not cfg.overwrite:
                raise different_configuration(out, recorded.get("fingerprint_values"), values)
            ownership.exclusive(held)
            replace.discard(out)  # recoverable at every kill point (see replace.discard)
            ownership.downgrade(held)
        elif (out / MANIFEST).exists():
            say(f"{out} is already complete with this configuration; nothing to do", cfg.quiet)
            return read_manifest(out)
    return None


def different_configuration(out: Path, old: dict | None, new: dict) -> UserError:
    return UserError(
        f"--out {str(out)!r} holds a transfer set made with a different configuration (changed: {changed_settings(old, new)}); "
        f"use another --out, or --overwrite to replace it"
    )


def load_teachers(cfg: GenerateConfig, device: torch.device) -> tuple[list[teacher_lib.Teacher], torch.Tensor]:
    teachers = [teacher_lib.load_teacher(spec, device, cfg.trust_checkpoint) for spec in cfg.teachers]
    given = [s.ensemble_weight for s in cfg.teachers]
    # --teacher-weight per member; members without one weigh 1 (None: all equal).
    weights = None if all(w is None for w in given) else [1.0 if w is None else w for w in given]
    return teachers, normalised_weights(weights, len(teachers))


def with_models(context: Context, device: torch.device) -> Context:
    """`context` with its teachers and specialists loaded again, on `device`: how a worker of
    another engine (a Ray actor, on any machine of a cluster) rebuilds the ensemble from the
    same files. A file that no longer holds what the provenance recorded is refused, so one
    set never mixes the targets of two versions of a teacher."""
    teachers, weights = load_teachers(context.cfg, device)
    loaded_specialists = specialists.load(context.cfg, device)
    recorded = [t.get("sha256") for t in context.provenance.teachers]
    for teacher, sha in zip(teachers + loaded_specialists, recorded):
        if teacher.sha256 != sha:
            raise UserError(f"teacher {teacher.name!r} on this worker is not the one this set was started with "
                            f"(sha256 {teacher.sha256[:12]} vs {str(sha)[:12]}); give every machine the same teacher files")
    return dataclasses.replace(context, teachers=teachers, weights=weights, device=device, specialists=loaded_specialists)


def check_vocabulary(cfg: GenerateConfig, teachers: list, sources: list[SourceFile]) -> None:
    """Token ids mean the same tokens to every member, and to the tokenizer that made a
    token source: members' tokenizer fingerprints agree, and match the source's."""
    from transferset.teachers.huggingface import check_shared_vocabulary
    from transferset.text import text_metadata

    check_shared_vocabulary(teachers)
    if not cfg.input_spec.tokens:
        return
    recorded = [t for t in teachers if t.extra and "tokenizer_fingerprint" in t.extra]
    for source in sources:
        made_by = (text_metadata(source.path) or {}).get("tokenizer") or {}
        for teacher in recorded[:1]:
            if made_by.get("fingerprint") != teacher.extra["tokenizer_fingerprint"]:
                raise UserError(
                    f"source {source.path!r} was tokenised by {made_by.get('path', 'another tokenizer')!r}, not by teacher "
                    f"{teacher.name!r}'s tokenizer (fingerprints {str(made_by.get('fingerprint'))[:12]} vs "
                    f"{teacher.extra['tokenizer_fingerprint'][:12]}); convert the corpus again with --tokenizer {teacher.spec.spec.partition(':')[2] or teacher.spec.spec}"
                )


def probe_num_classes(cfg: GenerateConfig, teachers, source: SourceFile, device: torch.device,
                      loaded_specialists=()) -> tuple[int, int | None]:
    """Run the ensemble on the first (at most 4) rows: the number of classes (the vocabulary
    for per-token logits), the positions per row when the targets are per token (else None),
    and a clear error for a teacher (or specialist) that does not fit the inputs."""
    batch = read_first_rows(source, list(cfg.input_spec.columns), min(source.rows, 4))
    x = {k: v.to(device) for k, v in cfg.input_spec.to_inputs(batch, f"source {source.path!r}").items()}
    shape = tuple(next(iter(x.values())).shape)
    try:
        member = teacher_lib.run_teachers(teachers, named_inputs(cfg, x), cfg.precision)
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"a teacher failed on the first input batch of shape {shape} ({first_line(error)}); check --input-shape and the teacher") from None
    per_token = check_output_shape(cfg, teachers, member, shape)
    num_classes = int(member.shape[-1])
    if num_classes < 2:
        raise UserError(f"teachers return {num_classes} class; distillation needs at least 2")
    if cfg.class_names is not None and len(cfg.class_names) != num_classes:
        raise UserError(f"--class-names has {len(cfg.class_names)} names but the teachers predict {num_classes} classes")
    specialists.probe(cfg, list(loaded_specialists), named_inputs(cfg, x), num_classes)
    return num_classes, (shape[1] if per_token else None)


def check_output_shape(cfg: GenerateConfig, teachers, member: torch.Tensor, input_shape: tuple) -> bool:
    """Row targets [K, B, C] from any inputs (a sequence classifier's from tokens); per-token
    targets [K, B, L, V] from token inputs, one per position. Whether they are per token."""
    if cfg.input_spec.tokens and member.ndim == 4 and member.shape[2] == input_shape[1]:
        if cfg.specialists:
            raise UserError("--specialist combines class targets; per-token (language-model) targets take --combine arithmetic or geometric")
        if cfg.keep_teacher_logits:
            raise UserError("--keep-teacher-logits stores every member's [length, vocab] logits per row, too large for "
                            "per-token targets; drop it (recombine works on class targets)")
        return True
    if member.ndim == 3:
        return False
    raise UserError(f"teacher {teachers[0].name!r} returned {tuple(member.shape[1:])} for a batch of {input_shape[0]}; a teacher must "
                    f"return logits [batch, classes] (or, for the token inputs of a `convert --text` source, [batch, length, vocab] "
                    f"with one position per token)")


def named_inputs(cfg: GenerateConfig, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher batch: the input tensors a model takes (all but the target mask)."""
    return {name: tensor for name, tensor in x.items() if name != TARGET_MASK}


def labelled_rows(cfg: GenerateConfig, sources: list[SourceFile], num_classes: int) -> list[int]:
    counts = []
    for s in sources:
        n, lo, hi = label_stats(s, cfg.label_column) if cfg.label_column else (0, None, None)
        if n:
            check_label_range(lo, hi, num_classes, f"source {s.path!r} has label {{label}}, outside [0, {num_classes}) for the teachers' "
                              f"{num_classes} classes; fix the labels or the teachers")
        counts.append(n)
    return counts


def build_provenance(cfg: GenerateConfig, sources, teachers, weights, num_classes: int, labelled: list[int],
                     device: torch.device, config_key: str, loaded_specialists=(), positions: int | None = None) -> Provenance:
    """`positions`: L for per-token targets, recorded as `target_options["positions"]` (absent for
    row targets, so their provenance is as before). The probe decides it from what the same
    teachers return on the same source, which the resume key already covers."""
    import pyarrow

    return Provenance(
        target_kind=cfg.target_kind, num_classes=num_classes, temperature=float(cfg.temperature), combine=cfg.combine,
        storage_dtype=cfg.storage_dtype,
        teachers=[t.describe(float(w)) for t, w in zip(teachers, weights.tolist())] + specialists.describe(cfg, loaded_specialists),
        sources=[s.describe(n, resolved=cfg.inputs == "reference") for s, n in zip(sources, labelled)],
        input=cfg.input_spec.to_dict(), class_names=cfg.class_names, label_column=cfg.label_column, id_column=cfg.id_column,
        teacher_logits_kept=cfg.keep_teacher_logits, shard_rows=cfg.shard_rows, row_group_rows=cfg.row_group_rows,
        batch_size=cfg.batch_size, precision=cfg.precision, num_writers=cfg.num_writers,
        target_options={**cfg.target_options, **({"positions": positions} if positions else {})},
        extra=cfg.extra, inputs=None if cfg.inputs == "copy" else cfg.inputs, rows=sum(s.rows for s in sources),
        versions={"transferset": __version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
                  "numpy": np.__version__, "python": platform.python_version(), **_decoder_version(cfg)},
        device=str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), config_fingerprint=config_key,
    )


def _decoder_version(cfg: GenerateConfig) -> dict:
    """Pillow's version for image inputs: the same bytes decode to the same pixels with the same Pillow."""
    if not cfg.input_spec.image:
        return {}
    from transferset.images.decode import pillow_version

    return {"pillow": pillow_version()}


def recorded_provenance(cfg: GenerateConfig, fresh: Provenance, values: dict) -> Provenance:
    """The provenance of this set: the one `_job.json` recorded when an earlier run
    (or another writer) started it, else `fresh`, recorded now. Recording is
    create-exclusive: of two writers that start a set at once, one records and the
    other compares its configuration with the recorded one."""
    job_path = cfg.out / JOB
    record = {"config_fingerprint": fresh.config_fingerprint, "fingerprint_values": values, "provenance": fresh.encode()}
    if create_exclusive_json(job_path, record):
        return fresh
    try:
        job = json.loads(job_path.read_text())
        recorded = Provenance.decode(job["provenance"], str(job_path))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise UserError(f"{job_path} is damaged; delete --out {str(cfg.out)!r} (or pass --overwrite) and generate again") from None
    if job.get("config_fingerprint") != fresh.config_fingerprint:  # another run started this set meanwhile
        raise different_configuration(cfg.out, job.get("fingerprint_values"), values)
    return recorded


def codec_for(cfg: GenerateConfig) -> TargetCodec:
    return get_codec(cfg.target_kind, "--targets")
