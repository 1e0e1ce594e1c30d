"""Stage 1: run a teacher ensemble once over the sources, write a transfer set.

The recipe (`run_generate`), top to bottom:

    setup.py     sources, resume fingerprint, --out, teachers, provenance
    plan         sources.plan_shards: a deterministic cut of every file into shards;
                 this writer's share, minus the shards already finished
    engine       engines.py runs the shard jobs (shard.py: read -> teachers ->
                 combine -> codec -> Parquet) and publishes each shard with its record
    publish      whoever sees every planned shard finished writes _manifest.json

Resume: the shard plan and every batch boundary are pure functions of the
configuration, so a rerun skips the finished shards and recomputes the rest to
exactly the values an uninterrupted run would have written.
"""

from __future__ import annotations

import time
from pathlib import Path

from transferset.devices import resolve_device
from transferset.format.card import CARD, CardSettings, rewrite_card
from transferset.format.manifest import JOB, MANIFEST, RECORDS_DIR, Manifest, read_shard_records, shard_name, write_manifest
from transferset.format.provenance import fingerprint
from transferset.format.references import SOURCE_ROW_FIELD, by_reference
from transferset.format.schema import target_schema
from transferset import gcpause, ownership
from transferset.generate import setup, specialists
from transferset.generate.config import GenerateConfig
from transferset.generate.engines import get_engine, session
from transferset.generate.setup import Context
from transferset.generate.shard import ShardJob, generate_shard
from transferset.io import reporting_write_errors
from transferset.progress import counted, progress, say
from transferset.sources import ShardPlan, plan_shards

__all__ = ["GenerateConfig", "run_generate", "generate_shard", "ShardJob", "Context", "prepare"]


def run_generate(cfg: GenerateConfig) -> Manifest | None:
    """Generate (or resume, or finish) a transfer set. Returns its manifest when complete.
    The run owns --out (or its writer index of it) from `prepare` to the end; a
    failed run removes an --out it created and left empty (ownership.py)."""
    cfg.validate()
    engine = get_engine(cfg.engine)
    with session(engine, cfg), ownership.scope():
        return _run(cfg, engine)


def _run(cfg: GenerateConfig, engine) -> Manifest | None:
    prepared = prepare(cfg)
    gcpause.resume()  # start-up is over: see transferset/gcpause.py
    if isinstance(prepared, Manifest):
        _update_card(cfg, prepared)
        return prepared
    context = prepared
    plans = plan_shards(context.sources, cfg.shard_rows)
    finished = {i for i, r in read_shard_records(cfg.out).items() if (cfg.out / r.path).is_file()}
    todo = [p for p in plans if p.index % cfg.num_writers == cfg.writer_index and p.index not in finished]
    for stale in _stale_temp_files(cfg, todo):
        with reporting_write_errors(stale):  # a read-only --out fails here first on a resume
            stale.unlink()
    if finished and todo:
        say(f"resuming: {len(finished):,} of {counted(len(plans), 'shard')} already written", cfg.quiet)

    started = time.perf_counter()
    rows_todo = sum(p.rows for p in todo)
    with progress("generate", rows_todo, cfg.quiet) as bar:
        engine.run([ShardJob(p, context) for p in todo], context, bar)
    elapsed = time.perf_counter() - started
    return _publish(cfg, context, plans, len(todo), rows_todo, elapsed)


def prepare(cfg: GenerateConfig) -> Context | Manifest:
    """Everything before the first shard: the shared Context, or the manifest of a
    set that is already complete with this configuration. Claims --out (held until
    the enclosing `ownership.scope()` ends, or the process)."""
    cfg.validate()
    codec = setup.codec_for(cfg)
    sources = setup.open_sources(cfg)
    input_fields = setup.check_sources(cfg, sources)
    values = setup.fingerprint_values(cfg, sources)
    config_key = fingerprint(values)
    done_already = setup.prepare_out(cfg, values)
    if done_already is not None:
        return done_already
    device = resolve_device(cfg.device)
    teachers, weights = setup.load_teachers(cfg, device)
    setup.check_vocabulary(cfg, teachers, sources)
    loaded_specialists = specialists.load(cfg, device)
    num_classes, positions = setup.probe_num_classes(cfg, teachers, sources[0], device, loaded_specialists)
    codec.check_options(cfg.target_options, num_classes)  # e.g. top-k's K below the classes
    labelled = setup.labelled_rows(cfg, sources, num_classes) if positions is None else [0] * len(sources)
    fresh = setup.build_provenance(cfg, sources, teachers, weights, num_classes, labelled, device, config_key, loaded_specialists,
                                   positions)
    provenance = setup.recorded_provenance(cfg, fresh, values)
    schema = target_schema(provenance, [SOURCE_ROW_FIELD] if by_reference(provenance) else input_fields)
    return Context(cfg, sources, teachers, weights, device, provenance, schema, codec, loaded_specialists)


def _publish(cfg: GenerateConfig, context: Context, plans: list[ShardPlan], shards_done: int, rows_done: int,
             elapsed: float) -> Manifest | None:
    records = read_shard_records(cfg.out)
    missing = [p.index for p in plans if p.index not in records]
    if missing:
        say(f"wrote {counted(shards_done, 'shard')} ({counted(rows_done, 'row')}) in {elapsed:.1f} s; waiting for other writers: {counted(len(missing), 'shard')} missing", cfg.quiet)
        return None
    card = CardSettings().merged(cfg.card_license, cfg.card_description, cfg.card_task)
    manifest = write_manifest(cfg.out, context.provenance, [records[p.index] for p in plans], card)
    say(f"wrote {cfg.out}: {counted(manifest.rows, 'row')}, {counted(len(plans), 'shard')}, {rows_done / max(elapsed, 1e-9):,.0f} rows/s", cfg.quiet)
    return manifest


def _update_card(cfg: GenerateConfig, manifest: Manifest) -> None:
    """A rerun of a complete set with other --card-* flags rewrites its card only (the
    card is not part of the content, so the set stays as it is). Without such flags a
    rerun writes nothing: a set made before cards gets one from `transferset card`."""
    if cfg.card_license is None and cfg.card_description is None and cfg.card_task is None:
        return
    current = CardSettings.from_record(manifest.card)
    wanted = current.merged(cfg.card_license, cfg.card_description, cfg.card_task)
    if wanted != current or manifest.card is None:
        rewrite_card(manifest, wanted)
        say(f"rewrote the dataset card {cfg.out / CARD}", cfg.quiet)


def _stale_temp_files(cfg: GenerateConfig, todo: list[ShardPlan]) -> list[Path]:
    """Temp files a killed (or refused) write left behind, that no live writer can own:
    those of the shards (and shard records) this writer is about to redo, and with a
    single writer also those of `_job.json` / `_manifest.json`. Never read, but on a
    disk that was full they hold the space the rerun needs."""
    stale = []
    for p in todo:
        stale += cfg.out.glob(f".{shard_name(p.index)}.tmp-*")
        stale += (cfg.out / RECORDS_DIR).glob(f".{Path(shard_name(p.index)).stem}.json.tmp-*")
    if cfg.num_writers == 1:  # with several writers, another one may be writing these right now
        stale += cfg.out.glob(f".{JOB}.tmp-*")
        stale += cfg.out.glob(f".{MANIFEST}.tmp-*")
    return stale
