"""Inputs by reference: sets whose rows point at their source rows instead of copying them.

`generate --inputs reference` writes no input columns. Each row keeps `source` (the
source file's recorded path, as every set does) and `source_row`, its row index in
that file; readers join the source's input columns back when they read. An image or
text corpus is then stored once, however many transfer sets are made from it.

The join is only right while the source is the very file the teachers read, so a
reader first finds every source (`locate_sources`) and checks it against the
provenance: its sha256 (the fingerprint generate recorded; ~1 GB/s, once per process),
or with `train --no-verify` (and on DDP ranks other than 0, which rank 0 covers) its
size and row count only. A changed or missing source is refused in one line.

Where a source is looked for, in order: below `--source-root DIR` (its recorded path
there, then its file name), the absolute path generate recorded (`resolved`), then the
recorded path relative to the working directory; the first that passes the check is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transferset.errors import UserError, first_line
from transferset.io import file_sha256, open_parquet

REFERENCE = "reference"
SOURCE_ROW = "source_row"
SOURCE_ROW_FIELD = pa.field(SOURCE_ROW, pa.int64(), nullable=False)
_SOURCE = "source"  # = format.schema.SOURCE (schema imports this module)


def by_reference(provenance) -> bool:
    """Does this set keep its inputs in its sources (`generate --inputs reference`)?"""
    return provenance.inputs == REFERENCE


def _candidates(source: dict, source_root: str | None) -> list[Path]:
    """Where to look, in order: below --source-root, the absolute path generate recorded,
    then the recorded path (relative to this directory, so only a guess from elsewhere)."""
    recorded = Path(source["path"])
    found = []
    if source_root is not None:
        root = Path(source_root)
        found += [root / recorded] if not recorded.is_absolute() else []
        found.append(root / recorded.name)
    if source.get("resolved"):
        found.append(Path(source["resolved"]))
    found.append(recorded)
    return list(dict.fromkeys(found))


# Files hashed in this process: {(path, size, mtime_ns): sha256}. `train --eval` of the
# set it trains on, and a reader opened twice, hash each source once.
_HASHED: dict[tuple, str] = {}


def _problem(path: Path, source: dict, check_content: bool) -> str | None:
    """Why `path` is not the source the set was made from, or None."""
    stat = path.stat()
    if check_content:
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        digest = _HASHED.get(key) or _HASHED.setdefault(key, file_sha256(path))
        if digest != source["fingerprint"]:
            return f"sha256 is now {digest[:12]}... but was {source['fingerprint'][:12]}..."
        return None
    if "bytes" in source and stat.st_size != source["bytes"]:
        return f"size is now {stat.st_size:,} bytes but was {source['bytes']:,}"
    rows = open_source(path).metadata.num_rows
    if rows != source.get("rows"):
        return f"row count is now {rows:,} but was {source.get('rows')!r}"
    return None


def locate_sources(provenance, where: str, source_root: str | None = None, check_content: bool = True) -> dict[str, str]:
    """{recorded path: the absolute path of the file that holds it now} for every source
    of a reference set: the first candidate that passes the check (sha256; or, without
    `check_content`, the size and row count generate recorded)."""
    located = {}
    for source in provenance.sources:
        looked = _candidates(source, source_root)
        existing = [p for p in looked if p.is_file()]
        if not existing:
            hint = "pass --source-root DIR (a folder that holds it)" if source_root is None else "check --source-root"
            raise UserError(f"{where} takes its inputs by reference from {source['path']!r}, which is not at "
                            f"{' or '.join(str(p) for p in looked)}; restore the file or {hint}")
        problems = [(p, _problem(p, source, check_content)) for p in existing]
        good = next((p for p, problem in problems if problem is None), None)
        if good is None:
            path, problem = problems[0]
            how = " (or point --source-root at it)" if check_content else ""
            raise UserError(f"{where} takes its inputs by reference from {path}, whose {problem} when the set was generated: "
                            f"the source changed; restore the original file{how}, or generate the set again")
        located[source["path"]] = str(good.resolve())
    return located


def check_references(manifest, located: dict[str, str]) -> None:
    """Every shard row names a listed source and a row inside it (verify's check; two small
    columns per shard)."""
    rows = {s["path"]: s["rows"] for s in manifest.provenance.sources}
    for path in manifest.shard_paths():
        table = pq.read_table(path, columns=[_SOURCE, SOURCE_ROW])
        for name in pc.unique(table.column(_SOURCE)).to_pylist():
            if name not in located:
                raise UserError(f"{path} names source {name!r}, which the set's provenance does not list; "
                                f"run `transferset verify {manifest.directory} --drop-bad` and rerun its generate")
            mine = pc.filter(table.column(SOURCE_ROW), pc.equal(table.column(_SOURCE), name))
            bounds = pc.min_max(mine).as_py()
            if bounds["min"] < 0 or bounds["max"] >= rows[name]:
                raise UserError(f"{path} refers to rows {bounds['min']:,}..{bounds['max']:,} of {name!r}, which has {rows[name]:,}; "
                                f"run `transferset verify {manifest.directory} --drop-bad` and rerun its generate")


# Bytes of one Parquet value by physical type, as a copy set's input columns count them
# (uint8 pixels are INT32: 4). Byte arrays (encoded images, text) count their footer size.
_PHYSICAL_BYTES = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def input_bytes_per_row(pf: pq.ParquetFile, columns) -> int:
    """Bytes per row of a source's input columns, counted as a copy set's row groups count
    them (values x physical width, from the footer), to size a reference set's shuffle windows (train/stream.py)."""
    meta, total = pf.metadata, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".")[0] in columns:
                width = _PHYSICAL_BYTES.get(chunk.physical_type)
                total += chunk.num_values * width if width else chunk.total_uncompressed_size
    return -(-total // max(meta.num_rows, 1))


def open_source(path) -> pq.ParquetFile:
    return open_parquet(path, "restore the source file")


class SourceJoin:
    """The input columns of a reference set's rows, read from their sources. Opens each
    source once per join; one join per shuffle window (a reader holds no open files)."""

    def __init__(self, located: dict[str, str], columns: list[str]) -> None:
        self._located = located
        self._columns = list(columns)
        self._files: dict[str, tuple[pq.ParquetFile, np.ndarray]] = {}

    def inputs(self, table: pa.Table, where: str) -> pa.Table:
        """The input columns of `table`'s rows (it holds `source` and `source_row`), in its row order."""
        rows = table.column(SOURCE_ROW).to_numpy()
        paths = table.column(_SOURCE).combine_chunks()
        distinct = pc.unique(paths).to_pylist()
        if len(distinct) == 1 and len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            return self._range(distinct[0], int(rows[0]), int(rows[-1]) + 1, where)  # a row group of one shard: the usual case
        parts, order = [], []
        for path in distinct:
            mine = np.flatnonzero(pc.equal(paths, path).to_numpy(zero_copy_only=False))
            lo, hi = int(rows[mine].min()), int(rows[mine].max()) + 1
            parts.append(self._range(path, lo, hi, where).take(pa.array(rows[mine] - lo)))
            order.append(mine)
        return pa.concat_tables(parts).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def _range(self, recorded: str, start: int, stop: int, where: str) -> pa.Table:
        """Rows [start, stop) of a source's input columns: only the row groups they touch."""
        if recorded not in self._located:
            raise UserError(f"{where} names source {recorded!r}, which its provenance does not list; the set is damaged, regenerate it")
        if recorded not in self._files:
            pf = open_source(self._located[recorded])
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            self._files[recorded] = (pf, np.cumsum([0, *sizes]))
        pf, bounds = self._files[recorded]
        if start < 0 or stop > bounds[-1]:
            raise UserError(f"{where} refers to rows {start:,}..{stop - 1:,} of {recorded!r}, which has {int(bounds[-1]):,}; "
                            f"the set is damaged or the source is not the one it was made from")
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, stop, side="left")) - 1
        try:
            table = pf.read_row_groups(list(range(first, last + 1)), columns=self._columns)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise UserError(f"source {self._located[recorded]} cannot be read ({first_line(error)}); restore the file") from None
        return table.slice(start - int(bounds[first]), stop - start)
