"""`convert --image-folder`: a folder of images -> an image source (encoded bytes, as they are).

The source:

    image      binary, not null    the file's bytes, unchanged (no re-encoding: no quality lost,
                                   and a JPEG stays the size of a JPEG)
    file_name  string, not null    the file's path relative to the folder
    label      int32, nullable     the class sub-folder's index (absent when no file is in one)
    row        int64, not null     the row's index (a stable --id-column)

The metadata (`transferset.convert`, JSON, as for array sources) says `kind: images`
and holds `class_names` (the sub-folders, in label order), and the folder; the footer's key-value metadata
(`transferset.convert.skipped`) how many files --skip-bad-images left out, and which. Every file is decoded once
here, in threads (decode.py), so a corrupt or non-image file is reported by name
before anything is written; with --skip-bad-images it is left out and counted.
Decoding to a size is generate's job (--input-shape), recorded in the set's provenance.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from transferset.convert import check_out_folder, remove_dead_temp_files
from transferset.errors import UserError
from transferset.images.decode import DECODE_THREADS, pillow_version, problem
from transferset.images.folder import scan_folder
from transferset.io import atomic_write
from transferset.progress import progress
from transferset.source_writer import METADATA_KEY, ROW_COLUMN

IMAGE_COLUMN, FILE_COLUMN = "image", "file_name"
GROUP_BYTES = 64 << 20  # encoded bytes per row group: a window of a few row groups stays small
CHECK_FILES = 256  # files read and decoded at once (bounds the bytes held beyond one row group)
SKIPPED_KEY = "transferset.convert.skipped"


@dataclass(frozen=True)
class ImageOptions:
    label_column: str = "label"
    skip_bad_images: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class ImageResult:
    path: Path
    rows: int
    labelled: int
    class_names: list[str]
    skipped: list[str]


def convert_image_folder(folder: str | Path, out: str | Path, options: ImageOptions = ImageOptions(), quiet: bool = True) -> ImageResult:
    folder, out = Path(folder), Path(out)
    check_out_folder(out)
    if out.exists() and not options.overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"--out {out} lies inside --image-folder {folder}; write the source outside the images")
    files = scan_folder(folder)
    names = [p.relative_to(folder).as_posix() for p in files.paths]
    labelled = any(label is not None for label in files.labels)
    skipped: list[str] = []
    counts = {"rows": 0, "labelled": 0}
    metadata = {
        "kind": "images", "image_column": IMAGE_COLUMN, "file_column": FILE_COLUMN, "id_column": ROW_COLUMN,
        "label_column": options.label_column if labelled else None, "class_names": files.class_names if labelled else None,
        "folder": str(folder), "pillow": pillow_version(),
    }
    schema = _schema(options.label_column if labelled else None, metadata)

    def write(sink: BinaryIO) -> None:
        with pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=[options.label_column] if labelled else False) as writer, \
                progress("convert", total=len(names), quiet=quiet) as bar:
            for group, blobs in _checked_groups(files.paths, names, options.skip_bad_images, skipped, str(folder), bar):
                columns = [pa.array(blobs, pa.binary()), pa.array([names[i] for i in group], pa.string())]
                if labelled:
                    columns.append(pa.array([files.labels[i] for i in group], pa.int32()))
                columns.append(pa.array(range(counts["rows"], counts["rows"] + len(group)), pa.int64()))
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema), row_group_size=len(group))
                counts["rows"] += len(group)
                counts["labelled"] += sum(files.labels[i] is not None for i in group)
            if not counts["rows"]:
                raise UserError(f"--image-folder {str(folder)!r} holds no decodable image ({len(names)} files, none an image)")
            # Known only at the end: how many files --skip-bad-images left out, and which.
            writer.add_key_value_metadata({SKIPPED_KEY: json.dumps({"skipped_bad_images": len(skipped), "bad_images": skipped})})

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(out.parent)
    atomic_write(out, write)
    return ImageResult(out, counts["rows"], counts["labelled"], files.class_names if labelled else [], skipped)


def _checked_groups(paths: list[Path], names: list[str], skip_bad: bool, skipped: list[str], folder: str, bar):
    """(file indices, their bytes) per row group of about GROUP_BYTES, every file decoded
    once (in threads) on the way; a bad one is refused by name, or skipped and listed."""
    def one(i: int) -> tuple[bytes, str | None]:
        try:
            data = paths[i].read_bytes()
        except OSError as error:
            raise UserError(f"--image-folder {folder!r}: {names[i]!r} cannot be read ({error.strerror or error}); check the file") from None
        return data, problem(data)

    group, blobs, size = [], [], 0
    with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="transferset-decode") as pool:
        for start in range(0, len(paths), CHECK_FILES):
            indices = range(start, min(start + CHECK_FILES, len(paths)))
            for i, (data, why) in zip(indices, pool.map(one, indices)):
                bar.advance(1)
                if why is not None:
                    if not skip_bad:
                        raise UserError(f"--image-folder {folder!r}: {names[i]!r} is not a decodable image ({why}); remove it, "
                                        f"or pass --skip-bad-images to leave such files out (counted in the metadata)")
                    skipped.append(names[i])
                    continue
                if group and size + len(data) > GROUP_BYTES:
                    yield group, blobs
                    group, blobs, size = [], [], 0
                group.append(i)
                blobs.append(data)
                size += len(data)
    if group:
        yield group, blobs


def _schema(label_column: str | None, metadata: dict) -> pa.Schema:
    fields = [pa.field(IMAGE_COLUMN, pa.binary(), nullable=False), pa.field(FILE_COLUMN, pa.string(), nullable=False)]
    if label_column:
        fields.append(pa.field(label_column, pa.int32(), nullable=True))
    fields.append(pa.field(ROW_COLUMN, pa.int64(), nullable=False))
    encoded = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    return pa.schema(fields, metadata={METADATA_KEY: encoded})
