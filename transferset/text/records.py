"""Text records from a corpus file: Parquet, JSON Lines, TSV or CSV, in batches.

Only the named fields are read (text, optionally a prompt and a label), one
batch at a time, so a corpus larger than memory converts in bounded memory.
A missing field or a null text is refused with the row it is in: a silently
skipped document would shift every row id after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from transferset.errors import UserError

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".tsv": "tsv", ".csv": "csv"}


@dataclass(frozen=True)
class TextFields:
    text: str
    prompt: str | None = None
    label: str | None = None

    def names(self) -> list[str]:
        return [n for n in (self.prompt, self.text, self.label) if n is not None]


def corpus_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"--text {str(path)!r}: unknown corpus format {path.suffix!r}; give .parquet, .jsonl, .tsv or .csv")
    return fmt


def read_records(path: Path, fields: TextFields, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, batch of exactly the named fields) over the whole file."""
    if not path.is_file():
        raise UserError(f"--text {str(path)!r} does not exist or is not a file")
    first = 0
    for batch in _batches(path, corpus_format(path), fields, batch_rows):
        _check(batch, fields, path, first)
        yield first, batch
        first += batch.num_rows


def _batches(path: Path, fmt: str, fields: TextFields, batch_rows: int) -> Iterator[pa.RecordBatch]:
    names = fields.names()
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
            _require(file.schema_arrow.names, names, path)
            yield from file.iter_batches(batch_size=batch_rows, columns=names)
            return
        if fmt == "json":
            _require(_first_record_fields(path), names, path)
        reader = _text_reader(path, fmt, fields)
        _require(reader.schema.names, names, path)
        for batch in reader:
            yield batch.select(names)
    except (pa.ArrowInvalid, OSError) as error:
        raise UserError(f"--text {str(path)!r} cannot be read as {fmt} ({str(error).splitlines()[0][:160]})") from None


def _text_reader(path: Path, fmt: str, fields: TextFields):
    names = fields.names()
    if fmt == "json":
        import pyarrow.json as pj

        # Only our fields are parsed (others may hold anything); labels are JSON numbers.
        types = {n: pa.string() for n in (fields.prompt, fields.text) if n} | ({fields.label: pa.int64()} if fields.label else {})
        parse = pj.ParseOptions(explicit_schema=pa.schema(types), unexpected_field_behavior="ignore")
        return pj.open_json(path, read_options=pj.ReadOptions(block_size=1 << 22), parse_options=parse)
    import pyarrow.csv as pc

    # TSV corpora (GLUE's among them) do not quote: a '"' inside a sentence is text.
    parse = pc.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else pc.ParseOptions()
    # Every column as text (labels too, parsed below), so a sentence of digits stays a string.
    return pc.open_csv(path, parse_options=parse, read_options=pc.ReadOptions(block_size=1 << 22),
                       convert_options=pc.ConvertOptions(column_types={n: pa.string() for n in names}))


def _first_record_fields(path: Path) -> list[str]:
    """The fields of the first JSON record (the reader's explicit schema cannot say
    that a field is missing: it would read it as nulls)."""
    import json

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    raise UserError(f"--text {str(path)!r}: the first record is not JSON; give JSON Lines (one object per line)") from None
                return list(record) if isinstance(record, dict) else []
    return []


def _require(available: list[str], names: list[str], path: Path) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(f"--text {str(path)!r} has no field {missing[0]!r} (it has: {', '.join(available[:12])}); "
                        f"name the right one with --text-field / --prompt-field / --label-field")


def _check(batch: pa.RecordBatch, fields: TextFields, path: Path, first: int) -> None:
    for name in (fields.text, fields.prompt):
        if name is None:
            continue
        column = batch.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise UserError(f"--text {str(path)!r}: field {name!r} holds {column.type}, not text")
        if column.null_count:
            row = first + next(i for i, v in enumerate(column.is_null().to_pylist()) if v)
            raise UserError(f"--text {str(path)!r}: field {name!r} is null in row {row}; every document needs its text")


def labels_of(batch: pa.RecordBatch, fields: TextFields, path: Path, first: int) -> list[int | None] | None:
    """The label field as integers (null = unlabelled), or None without --label-field."""
    if fields.label is None:
        return None
    values = batch.column(fields.label).to_pylist()
    labels: list[int | None] = []
    for i, v in enumerate(values):
        if v is None or v == "":
            labels.append(None)
            continue
        try:
            number = int(v) if not isinstance(v, float) or v.is_integer() else None
        except ValueError:
            number = None
        if number is None or number < 0:
            raise UserError(f"--text {str(path)!r}: label {v!r} in row {first + i} is not a class index (0, 1, ...)")
        labels.append(number)
    return labels
