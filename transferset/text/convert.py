"""`convert --text`: a text corpus -> a tokenised Parquet source.

    records.py     the corpus file, a batch of text (prompt, label) fields at a time
    tokenizer.py   the teacher's tokenizer, from a local directory
    sequences.py   documents -> rows of max_length tokens, attention and target masks
    here           the source's schema and metadata, row groups, publication

The source (one row per document, or per packed row):

    input_ids       fixed_size_list<int32>[max_length], right-padded with the pad id
    attention_mask  fixed_size_list<int8>[max_length]   1 = a real token
    target_mask     fixed_size_list<int8>[max_length]   1 = this position gets a target
    label           int32, nullable (with --label-field; not with --pack)
    row             int64: the document's index in the corpus (its packed row's, with --pack)

The tokenizer's fingerprint and the settings ride in the schema's metadata
(`transferset.convert`, as for array sources), so a transfer set made from the
source can name the tokenizer its ids belong to; the counts (documents, tokens,
target positions, truncated documents), known only at the end, in the footer's
key-value metadata (`transferset.convert.counts`). Published by atomic rename.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from transferset.convert import check_out_folder, remove_dead_temp_files
from transferset.errors import UserError
from transferset.io import atomic_write, file_sha256
from transferset.progress import counted, progress
from transferset.source_writer import METADATA_KEY, ROW_COLUMN
from transferset.text.records import TextFields, labels_of, read_records
from transferset.text.sequences import MODES, Packer, Rows, target_tokens
from transferset.text.tokenizer import load_tokenizer

INPUT_IDS, ATTENTION_MASK, TARGET_MASK = "input_ids", "attention_mask", "target_mask"
COUNTS_KEY = b"transferset.convert.counts"
_READ_ROWS = 4096  # documents tokenised per call (the tokenizer parallelises inside one call)


@dataclass(frozen=True)
class TextOptions:
    fields: TextFields
    tokenizer: str
    max_length: int
    mode: str = "rows"  # rows | truncate | pack
    label_column: str = "label"
    row_group_rows: int | None = None  # None: about 4M tokens per row group
    overwrite: bool = False


@dataclass(frozen=True)
class TextResult:
    path: Path
    rows: int
    documents: int
    tokens: int
    truncated: int
    target_positions: int
    labelled: bool
    metadata: dict


def convert_text(corpus: str | Path, out: str | Path, options: TextOptions, quiet: bool = True) -> TextResult:
    corpus, out = Path(corpus), Path(out)
    _check(corpus, out, options)
    tokenizer = load_tokenizer(options.tokenizer)
    labelled = options.fields.label is not None
    setup = _setup_metadata(corpus, file_sha256(corpus), options, tokenizer)
    schema = _schema(options.max_length, options.label_column if labelled else None, setup)
    group_rows = options.row_group_rows or max(64, (1 << 22) // options.max_length)
    packer = Packer(options.max_length, options.mode, tokenizer.pad_id, tokenizer.eos_id, f"--text {str(corpus)!r}",
                    block_rows=group_rows)
    counts = {"rows": 0, "targets": 0}

    def write(sink: BinaryIO) -> None:
        with pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=[f"{ATTENTION_MASK}.list.element",
                              f"{TARGET_MASK}.list.element"]) as writer, progress("convert", None, quiet) as bar:
            def emit(rows: Rows) -> None:
                batch = _batch(schema, rows, counts["rows"], labelled)
                writer.write_batch(batch, row_group_size=batch.num_rows)
                counts["rows"] += batch.num_rows
                counts["targets"] += int(rows.target_mask.sum())

            for first, records in read_records(corpus, options.fields, _READ_ROWS):
                for rows in _pack_batch(packer, tokenizer, records, options.fields, corpus, first):
                    emit(rows)
                bar.advance(records.num_rows)
            for rows in packer.finish():
                emit(rows)
            if counts["rows"] == 0:
                raise UserError(f"--text {str(corpus)!r} holds no documents; nothing to convert")
            # The counts are known only now: the footer's key-value metadata takes them
            # (the Arrow schema, with the setup, was fixed when the file was opened).
            writer.add_key_value_metadata({COUNTS_KEY: json.dumps(_counts(packer, counts), sort_keys=True).encode()})

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(out.parent)
    atomic_write(out, write)
    metadata = {**setup, **_counts(packer, counts)}
    return TextResult(out, counts["rows"], packer.documents, packer.tokens, packer.truncated, counts["targets"], labelled, metadata)


def _check(corpus: Path, out: Path, options: TextOptions) -> None:
    if options.mode not in MODES:
        raise UserError(f"unknown text mode {options.mode!r}; use one of {', '.join(MODES)}")
    if options.max_length < 2:
        raise UserError(f"--max-length must be at least 2 tokens (a position and the token it predicts), got {options.max_length}")
    if options.mode == "pack" and options.fields.label is not None:
        raise UserError("--label-field labels documents, but --pack mixes documents in a row; drop one of them")
    if not corpus.is_file():
        raise UserError(f"--text {str(corpus)!r} does not exist or is not a file")
    check_out_folder(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name like {out / 'corpus.parquet'}")
    if out.exists() and corpus.exists() and out.resolve() == corpus.resolve():
        raise UserError(f"--out {out} is the corpus itself; write to a new file")
    if out.exists() and not options.overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it")


def _pack_batch(packer: Packer, tokenizer, records: pa.RecordBatch, fields: TextFields, corpus: Path, first: int):
    texts = records.column(fields.text).to_pylist()
    prompts = records.column(fields.prompt).to_pylist() if fields.prompt else None
    labels = labels_of(records, fields, corpus, first)
    joined = texts if prompts is None else [p + t for p, t in zip(prompts, texts)]
    for i, encoding in enumerate(tokenizer.encode(joined)):
        targets = target_tokens(encoding, len(prompts[i]) if prompts is not None else None)
        yield from packer.add(list(encoding.ids), targets, labels[i] if labels is not None else None, first + i)


def _schema(max_length: int, label_column: str | None, metadata: dict) -> pa.Schema:
    def row(kind: pa.DataType) -> pa.DataType:
        return pa.list_(pa.field("element", kind, nullable=False), max_length)

    fields = [pa.field(INPUT_IDS, row(pa.int32()), nullable=False), pa.field(ATTENTION_MASK, row(pa.int8()), nullable=False),
              pa.field(TARGET_MASK, row(pa.int8()), nullable=False)]
    if label_column is not None:
        fields.append(pa.field(label_column, pa.int32(), nullable=True))
    fields.append(pa.field(ROW_COLUMN, pa.int64(), nullable=False))
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()})


def _batch(schema: pa.Schema, rows: Rows, first_row: int, labelled: bool) -> pa.RecordBatch:
    n, length = rows.input_ids.shape

    def fixed(values, kind) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), length)

    columns = [fixed(rows.input_ids, pa.int32()), fixed(rows.attention_mask, pa.int8()), fixed(rows.target_mask, pa.int8())]
    if labelled:
        columns.append(pa.array(rows.labels, pa.int32()))
    columns.append(pa.array(range(first_row, first_row + n), pa.int64()))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _setup_metadata(corpus: Path, sha256: str, options: TextOptions, tokenizer) -> dict:
    """What made the source (the schema's `transferset.convert` metadata)."""
    return {
        "kind": "text", "source_files": [str(corpus)], "sha256": {str(corpus): sha256},
        "tokenizer": tokenizer.describe(), "max_length": options.max_length, "mode": options.mode,
        "text_field": options.fields.text, "prompt_field": options.fields.prompt, "label_field": options.fields.label,
        "input_column": INPUT_IDS, "attention_mask_column": ATTENTION_MASK, "target_mask_column": TARGET_MASK,
        "label_column": options.label_column if options.fields.label else None, "id_column": ROW_COLUMN,
    }


def _counts(packer: Packer, counts: dict) -> dict:
    """What it holds (the footer's `transferset.convert.counts`)."""
    return {"documents": packer.documents, "truncated_documents": packer.truncated, "tokens": packer.tokens,
            "target_positions": counts["targets"], "num_rows": counts["rows"]}


def summary(result: TextResult) -> str:
    truncated = f", {counted(result.truncated, 'document')} truncated" if result.truncated else ""
    return (f"wrote {result.path}: {counted(result.rows, 'row')} from {counted(result.documents, 'document')}, "
            f"{result.tokens:,} tokens, {result.target_positions:,} target positions{truncated}")
