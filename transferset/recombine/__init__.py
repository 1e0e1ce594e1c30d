"""`recombine`: a new transfer set from an existing one's kept member logits, with
another combine method, temperature, member subset or weights, and no teacher.

The recipe (`run_recombine`), top to bottom:

    open         the source set through its manifest; every shard checked (footer
                 provenance, size, sha256) before anything is written
    plan         plan.py: settings against the source, the new provenance and resume key
    --out        claimed like generate's: a rerun resumes or answers "already
                 complete"; another configuration is refused without --overwrite
    shards       shard.py: one output shard per source shard, same index, rows and
                 row groups; finished shards (with their records) are skipped
    publish      `write_manifest`, as generate publishes

Exact: with float32 storage the output equals, bit for bit, what `generate` writes
with the chosen teachers and settings (tests/test_recombine.py). float16 storage
rounds the kept member logits before they are combined (docs/format.md, "Recombine").
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pyarrow.parquet as pq

from transferset import ownership
from transferset.errors import UserError
from transferset.format.card import CardSettings
from transferset.format.codecs.dense import TEACHER_LOGITS
from transferset.format.manifest import JOB, MANIFEST, RECORDS_DIR, Manifest, read_manifest, read_shard_records, shard_name, write_manifest
from transferset.format.schema import RESERVED_COLUMNS, target_schema
from transferset.format.shards import check_shard, check_shards_match
from transferset.io import reporting_write_errors
from transferset.progress import counted, progress, say
from transferset.recombine import output
from transferset.recombine.plan import Plan, RecombineConfig, make_plan
from transferset.recombine.shard import ShardJob, recombine_shard

__all__ = ["RecombineConfig", "run_recombine", "open_source"]


def run_recombine(cfg: RecombineConfig) -> Manifest:
    """Recombine (or resume, or find complete) a set; its manifest."""
    source = open_source(cfg.source)
    plan = make_plan(cfg, source)  # every refusal of the settings comes before --out is touched
    with ownership.scope():
        done = output.prepare(cfg, plan)
        if done is not None:
            return done
        # This run's provenance, or the one an interrupted run of the same configuration
        # recorded (its `created`): resumed shards and the manifest then agree.
        recorded = output.record_job(cfg, plan)
        return _write(cfg, dataclasses.replace(plan, provenance=recorded))


def open_source(directory: Path) -> Manifest:
    """The source set, refused unless complete, dense and intact (every shard's
    footer, size, rows and sha256 against its manifest record)."""
    manifest = read_manifest(directory)
    if manifest.provenance.target_kind != "dense":
        raise UserError(f"{directory} holds {manifest.provenance.target_kind!r} targets; recombine reads dense sets (member logits per class)")
    check_shards_match(manifest)
    for record in manifest.shards:
        problem = check_shard(manifest.directory, record)
        if problem:
            raise UserError(f"{manifest.directory / record.path}: {problem}; the source set is damaged: run "
                            f"`transferset verify {manifest.directory} --drop-bad` and rerun the command that made it")
    if manifest.provenance.teacher_logits_kept:
        for path in manifest.shard_paths():
            if TEACHER_LOGITS not in pq.read_schema(path).names:
                raise UserError(f"{path} has no {TEACHER_LOGITS!r} column though its set records kept member logits; "
                                f"the source set is damaged, regenerate it")
    return manifest


def _write(cfg: RecombineConfig, plan: Plan) -> Manifest:
    source = plan.source
    first = pq.read_schema(source.shard_paths()[0])
    input_fields = [f for f in first if f.name not in RESERVED_COLUMNS]
    schema = target_schema(plan.provenance, input_fields)
    finished = {i for i, r in read_shard_records(cfg.out).items() if (cfg.out / r.path).is_file()}
    todo = [r for r in source.shards if r.index not in finished]
    _remove_stale_temp_files(cfg.out, todo)
    if finished and todo:
        say(f"resuming: {len(finished):,} of {counted(len(source.shards), 'shard')} already written", cfg.quiet)
    started = time.perf_counter()
    rows_todo = sum(r.rows for r in todo)
    with progress("recombine", rows_todo, cfg.quiet) as bar:
        for record in todo:
            recombine_shard(ShardJob(plan, record, schema, cfg.out), bar.advance)
    elapsed = time.perf_counter() - started
    records = read_shard_records(cfg.out)
    missing = [r.path for r in source.shards if r.index not in records]
    if missing:  # another process removed them meanwhile (we hold --out): refuse rather than publish a gap
        raise UserError(f"--out {str(cfg.out)!r} lost the records of {', '.join(missing[:3])} while this run wrote it; rerun the same command")
    # The card keeps the source's license, description and task: the rows are the same data.
    card = CardSettings.from_record(source.card)
    manifest = write_manifest(cfg.out, plan.provenance, [records[r.index] for r in source.shards], card)
    how = "from the members' logits" if plan.from_members else "re-tempered from the stored targets"
    say(f"wrote {cfg.out} ({how}): {counted(manifest.rows, 'row')}, {counted(len(manifest.shards), 'shard')}, "
        f"{rows_todo / max(elapsed, 1e-9):,.0f} rows/s", cfg.quiet)
    return manifest


def _remove_stale_temp_files(out: Path, todo) -> None:
    """Temp files a killed run left (this process owns --out alone): shards and records
    about to be redone, and drafts of the manifest and job record."""
    stale = [*out.glob(f".{MANIFEST}.tmp-*"), *out.glob(f".{JOB}.tmp-*")]
    for record in todo:
        stale += out.glob(f".{shard_name(record.index)}.tmp-*")
        stale += (out / RECORDS_DIR).glob(f".{Path(shard_name(record.index)).stem}.json.tmp-*")
    for path in stale:
        with reporting_write_errors(path):
            path.unlink()

