"""The read side of `--engine ray`: the shard plan as a Ray Datasource (imports Ray:
only `ray_engine.RayEngine.run` imports this module).

A read task reads a range of one shard, whole teacher batches of it (about RANGE_BYTES
of input), and yields one block in which every teacher batch is exactly --batch-size
rows: a shard's last, shorter batch is padded with copies of its last row, marked
(`FIRST_ROW` = -1) so the actor drops them before the teachers run. Ray's batcher then
cuts every batch at a teacher-batch boundary, however it bundles blocks (ray_engine.py).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask

from transferset.generate.ray_engine import FIRST_ROW, SHARD
from transferset.generate.setup import Context
from transferset.sources import ShardPlan, SourceFile, read_shard_rows

RANGE_BYTES = 64 << 20  # decoded input bytes per read task, rounded to whole teacher batches


class ShardRows(Datasource):
    def __init__(self, plans: list[ShardPlan], context: Context) -> None:
        super().__init__()
        self.context = context
        self.ranges = [r for plan in plans for r in batch_ranges(plan, context)]
        self.tasks = len(self.ranges)

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        # One task per range whatever `parallelism` asks: the ranges are the unit of resume and order.
        return [ReadTask(lambda plan=plan, context=self.context: [read_padded(plan, context)],
                         BlockMetadata(num_rows=padded_rows(plan, self.context.cfg.batch_size), size_bytes=None, exec_stats=None))
                for plan in self.ranges]


def batch_ranges(plan: ShardPlan, context: Context) -> list[ShardPlan]:
    """The shard cut into read ranges of whole teacher batches (the last range may be shorter)."""
    source = context.sources[plan.source]
    row_bytes = max(1, _decoded_bytes(source) // source.rows)
    batch = context.cfg.batch_size
    step = batch * max(1, RANGE_BYTES // (row_bytes * batch))
    return [ShardPlan(plan.index, plan.source, start, min(start + step, plan.stop)) for start in range(plan.start, plan.stop, step)]


def padded_rows(plan: ShardPlan, batch_size: int) -> int:
    return -(-plan.rows // batch_size) * batch_size


def _decoded_bytes(source: SourceFile) -> int:
    meta = pq.ParquetFile(source.path).metadata
    return sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))


def read_padded(plan: ShardPlan, context: Context) -> pa.Table:
    """The range's rows, teacher batch by teacher batch, each padded to exactly --batch-size
    rows, with the shard index and each row's batch's first row (-1 on padding rows)."""
    cfg = context.cfg
    source = context.sources[plan.source]
    columns = list(cfg.input_spec.columns)
    if source.has_label:
        columns.append(cfg.label_column)
    if cfg.id_column and cfg.id_column not in columns:
        columns.append(cfg.id_column)
    tables = []
    for first_row, batch in read_shard_rows(source, plan, columns, cfg.batch_size):
        pad = cfg.batch_size - batch.num_rows
        table = pa.Table.from_batches([batch])
        if pad:
            table = pa.concat_tables([table, table.take([batch.num_rows - 1] * pad)])
        first = [first_row] * batch.num_rows + [-1] * pad
        table = table.append_column(SHARD, pa.array([plan.index] * cfg.batch_size, pa.int64()))
        tables.append(table.append_column(FIRST_ROW, pa.array(first, pa.int64())))
    return pa.concat_tables(tables).combine_chunks()
