"""Inputs by reference: sets whose rows point at their source rows instead of copying them.

`generate --inputs reference` writes no input columns. Each row keeps `source` (the
source file's recorded path, as every set does) and `source_row`, its row index in
that file; readers join the source's input columns back when they read. An image or
text corpus is then stored once, however many transfer sets are made from it.

The join is only right while the source is the very file the teachers read, so a
reader first finds every source (`locate_sources`) and checks it against the
provenance: its sha256 (the fingerprint generate recorded; ~1 GB/s), or with
`train --no-verify` its row count only. A changed or missing source is refused in
one line, never joined to the wrong rows.

Where a source is looked for, in order: below `--source-root DIR` (its recorded path
there, then its file name), its recorded path (relative to the working directory),
then the absolute path generate recorded (`resolved`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transferset.errors import UserError, first_line
from transferset.io import file_sha256

REFERENCE = "reference"
SOURCE_ROW = "source_row"
SOURCE_ROW_FIELD = pa.field(SOURCE_ROW, pa.int64(), nullable=False)
_SOURCE = "source"  # = format.schema.SOURCE (schema imports this module)


def by_reference(provenance) -> bool:
    """Does this set keep its inputs in its sources (`generate --inputs reference`)?"""
    return provenance.inputs == REFERENCE


def _candidates(source: dict, source_root: str | None) -> list[Path]:
    recorded = Path(source["path"])
    found = []
    if source_root is not None:
        root = Path(source_root)
        found += [root / recorded] if not recorded.is_absolute() else []
        found.append(root / recorded.name)
    found.append(recorded)
    if source.get("resolved"):
        found.append(Path(source["resolved"]))
    return list(dict.fromkeys(found))


def locate_sources(provenance, where: str, source_root: str | None = None, check_content: bool = True) -> dict[str, str]:
    """{recorded path: the file that holds it now} for every source of a reference set,
    each checked against the provenance (sha256, or the row count without `check_content`)."""
    located = {}
    for source in provenance.sources:
        looked = _candidates(source, source_root)
        path = next((p for p in looked if p.is_file()), None)
        if path is None:
            hint = "pass --source-root DIR (a folder that holds it)" if source_root is None else "check --source-root"
            raise UserError(f"{where} takes its inputs by reference from {source['path']!r}, which is not at "
                            f"{' or '.join(str(p) for p in looked)}; restore the file or {hint}")
        if check_content:
            digest = file_sha256(path)
            if digest != source["fingerprint"]:
                raise UserError(f"{where} takes its inputs by reference from {path}, whose sha256 is now {digest[:12]}... "
                                f"but was {source['fingerprint'][:12]}... when the set was generated: the source changed; "
                                f"restore the original file (or point --source-root at it), or generate the set again")
        else:
            rows = open_source(path).metadata.num_rows
            if rows != source.get("rows"):
                raise UserError(f"{where} takes its inputs by reference from {path}, which now has {rows:,} rows "
                                f"but had {source.get('rows')!r} when the set was generated: the source changed; "
                                f"restore the original file, or generate the set again")
        located[source["path"]] = str(path)
    return located


def open_source(path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UserError(f"source {path} cannot be read as Parquet ({first_line(error)}); restore the file") from None


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
