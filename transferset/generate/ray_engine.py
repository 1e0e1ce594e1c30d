"""`--engine ray`: the shard jobs as one Ray Data pipeline, on one machine or a cluster.

    read tasks        source rows of the shard plan, about 64 MB of rows per task
        |             (ray_read.py; Arrow tables, our FixedSizeList types kept: batch_format="pyarrow")
    map_batches       `Labeller`, a class-based actor holding the teacher ensemble (loaded on
        |             the actor from the teacher files; one GPU per actor, or a CPU each):
        |             teachers -> combine -> codec, the same `label_batch` LocalEngine calls
    this process      rows in plan order into our `ShardWriter`: each shard is published
                      with our schema, provenance and record, exactly as LocalEngine does

Values equal LocalEngine's: the teachers see the same batches, `--batch-size` rows cut
from each shard's first row, the shard's last one shorter. Ray cuts batches of
`batch_size` rows from whatever blocks it bundles, so every teacher batch travels as
exactly `batch_size` rows (a short one padded with copies of its last row, marked and
dropped on the actor) and every read block holds whole batches: any cut Ray makes
then falls between teacher batches. The actor checks that it got whole batches and
this process that rows come in plan order; neither can fail unless Ray changes how it
cuts, and then the run stops instead of writing other values.

Resume is the recipe's: jobs are the shards without a record, and a shard is published
only when all of its rows are written, so a killed run's rerun writes the same set.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable, Iterator

import pyarrow as pa

from transferset.errors import UserError
from transferset.format.schema import parquet_options
from transferset.generate import ray_cluster
from transferset.generate.setup import Context
from transferset.generate.engines import register
from transferset.generate.shard import ShardJob, label_batch
from transferset.progress import Progress
from transferset.sources import ShardPlan
from transferset.writer import ShardWriter

SHARD, FIRST_ROW = "__transferset_shard", "__transferset_first_row"  # -1 on padding rows


class RayEngine:
    name = "ray"

    def session(self, cfg):
        return ray_cluster.connected(cfg.ray_address)

    def run(self, jobs: list[ShardJob], context: Context, bar: Progress) -> None:
        if not jobs:
            return
        ray = ray_cluster.import_ray()
        from ray.data import ActorPoolStrategy, DataContext

        cfg = context.cfg
        actors = ray_cluster.plan_actors(ray, cfg.device, cfg.ray_actors)
        portable = dataclasses.replace(context, teachers=[], specialists=[])  # actors load their own
        data_context = DataContext.get_current()
        saved = data_context.target_max_block_size, data_context.execution_options.preserve_order
        # One block per read task (never re-cut at a byte size, which would split teacher
        # batches) and results in plan order (the shards are written as rows arrive).
        data_context.target_max_block_size, data_context.execution_options.preserve_order = None, True
        try:
            from transferset.generate.ray_read import ShardRows

            source = ShardRows([job.plan for job in jobs], portable)
            rows = ray.data.read_datasource(source, override_num_blocks=source.tasks)
            with warnings.catch_warnings():  # Ray's deprecation notice for max_restarts, a remote arg it still honours
                warnings.simplefilter("ignore")
                labelled = rows.map_batches(
                    Labeller, fn_constructor_kwargs={"context": portable, "device_type": actors.device_type, "threads": actors.torch_threads,
                                                     "plans": {job.plan.index: job.plan for job in jobs}},
                    batch_size=cfg.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=actors.actors),
                    num_gpus=actors.gpus_per_actor, num_cpus=actors.cpus_per_actor,
                    max_restarts=0,  # a dead actor fails the run (the rerun resumes); with restarts Ray warns on every start
                )
            write_in_order(labelled.iter_batches(batch_size=None, batch_format="pyarrow"), jobs, context, bar)
        except Exception as error:
            raise _reported(error, ray) from None
        finally:
            data_context.target_max_block_size, data_context.execution_options.preserve_order = saved




def _reported(error: Exception, ray) -> Exception:
    """What to tell the user about a failed Ray run: an actor's UserError as it is (a
    RayTaskError carries it as `cause`), an actor that could not start as one line naming
    the reason (its message ends with the exception of its __init__), anything else as it is."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, UserError):
        return cause
    if isinstance(error, ray.exceptions.ActorDiedError) and "creation task" in str(error):
        reason = [line for line in str(error).splitlines() if line.strip()][-1].strip()
        return UserError(f"a Ray actor could not load the teachers ({reason}); every machine of the cluster needs the "
                         f"teacher files, and a factory teacher's module, at the same paths as this one")
    return error


class Labeller:
    """The actor of `map_batches`: the teacher ensemble, loaded once per actor from the
    teacher files (setup.with_models), labelling whole teacher batches."""

    def __init__(self, context: Context, device_type: str, threads: int | None, plans: dict[int, ShardPlan]) -> None:
        import torch

        from transferset.generate.setup import with_models

        if threads:
            torch.set_num_threads(threads)
        # On a GPU actor Ray makes the actor's one GPU the only visible one: "cuda" is it.
        self.context = with_models(context, torch.device(device_type))
        self.plans = plans

    def __call__(self, table: pa.Table) -> pa.Table:
        cfg = self.context.cfg
        out = []
        for (shard, first_row), rows in _runs(table, (SHARD, FIRST_ROW)):
            if first_row < 0:
                continue  # padding
            plan = self.plans[shard]
            if rows.num_rows != min(cfg.batch_size, plan.stop - first_row):
                raise RuntimeError(f"Ray split the teacher batch at row {first_row} of shard {shard} ({rows.num_rows} rows); "
                                   f"the values would differ from --engine local")
            job = ShardJob(plan, self.context)
            batch = rows.drop_columns([SHARD, FIRST_ROW]).combine_chunks().to_batches()[0]
            x = cfg.input_spec.to_inputs(batch, f"source {job.source.path!r}", first_row=first_row)
            labelled = pa.Table.from_batches([label_batch(job, first_row, batch, x)])
            labelled = labelled.append_column(SHARD, pa.array([shard] * rows.num_rows, pa.int64()))
            out.append(labelled.append_column(FIRST_ROW, pa.array([first_row] * rows.num_rows, pa.int64())))
        return pa.concat_tables(out)


def write_in_order(tables: Iterable[pa.Table], jobs: list[ShardJob], context: Context, bar: Progress) -> None:
    """Labelled rows, in plan order, into our background ShardWriter: one shard after the other,
    each published (with its record) once all of its rows are written."""
    cfg = context.cfg
    writer = ShardWriter(cfg.out, context.schema, parquet_options(context.schema, context.provenance), cfg.row_group_rows)
    plans = iter(job.plan for job in jobs)
    plan, written = None, 0
    try:
        for table in tables:
            for (shard, first_row), rows in _runs(table, (SHARD, FIRST_ROW)):
                if plan is None or shard != plan.index:
                    if plan is not None:
                        _close(writer, plan, written)
                    plan, written = next(plans, None), 0
                    if plan is None or plan.index != shard:
                        raise RuntimeError(f"Ray returned rows of shard {shard} out of plan order")
                    writer.open_shard(shard)
                if first_row != plan.start + written:
                    raise RuntimeError(f"Ray returned row {first_row} of shard {shard} where row {plan.start + written} was next")
                stored = pa.Table.from_arrays([rows.column(f.name) for f in context.schema], schema=context.schema)
                for batch in stored.combine_chunks().to_batches():
                    writer.write(shard, batch)
                written += stored.num_rows
                bar.advance(stored.num_rows)
        if plan is not None:
            _close(writer, plan, written)
        if next(plans, None) is not None:
            raise RuntimeError("Ray returned fewer shards than planned")
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def _close(writer: ShardWriter, plan: ShardPlan, written: int) -> None:
    if written != plan.rows:
        raise RuntimeError(f"Ray returned {written} of the {plan.rows} rows of shard {plan.index}")
    writer.close_shard(plan.index)


def _runs(table: pa.Table, keys: tuple[str, ...]) -> Iterator[tuple[tuple[int, ...], pa.Table]]:
    """Consecutive runs of rows with equal `keys` values: ((values), rows)."""
    import numpy as np

    if not table.num_rows:
        return
    columns = np.stack([table.column(k).to_numpy() for k in keys], axis=1)
    starts = np.flatnonzero(np.any(columns[1:] != columns[:-1], axis=1)) + 1
    bounds = [0, *starts.tolist(), table.num_rows]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield tuple(int(v) for v in columns[lo]), table.slice(lo, hi - lo)


register(RayEngine())
