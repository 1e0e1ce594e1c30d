"""transferset/sources.py read_shard_rows: any row range of a source, streamed across its
row groups, re-cut into batches of exactly --batch-size rows (the teachers' float results
depend on the batches, so they must not depend on the file's row groups)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_pixels_source
from transferset.sources import ShardPlan, open_source, read_shard_rows


@pytest.mark.parametrize("start,stop,batch", [(0, 117, 25), (10, 117, 25), (13, 101, 16), (40, 80, 40), (0, 117, 7), (5, 9, 64), (3, 117, 2**70)])
def test_any_range_becomes_exact_batches_in_row_order(tmp_path, start, stop, batch):
    rng = np.random.default_rng(start * 1000 + stop)
    pixels = rng.integers(0, 256, (117, 4), dtype=np.uint8)
    path = write_pixels_source(tmp_path / "s.parquet", pixels, list(range(117)), row_group_size=40)  # groups of 40, 40, 37
    source = open_source(str(path), "label")
    got = list(read_shard_rows(source, ShardPlan(index=0, source=0, start=start, stop=stop), ["pixels", "label"], batch))
    firsts = [first for first, _ in got]
    assert firsts == list(range(start, stop, batch))
    assert [b.num_rows for _, b in got] == [min(batch, stop - first) for first in firsts]
    assert [v for _, b in got for v in b.column("label").to_pylist()] == list(range(start, stop))
    read = np.concatenate([b.column("pixels").flatten().to_numpy().reshape(-1, 4) for _, b in got])
    np.testing.assert_array_equal(read, pixels[start:stop])
