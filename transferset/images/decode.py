"""Encoded image bytes -> uint8 [B, C, H, W] at a declared size, with Pillow, in threads.

Pillow decodes and resizes without holding the GIL, so a thread pool decodes a
batch in parallel (DECODE_THREADS). Each image is converted to the declared
channels (1: "L", 3: "RGB"), then resized to H x W with a bilinear filter unless it
already has that size; the same bytes always give the same pixels with the same
Pillow, which generate and train therefore both use (the version is recorded).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from transferset.errors import UserError, first_line

DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
_MODES = {1: "L", 3: "RGB"}


def pillow_version() -> str:
    import PIL

    return PIL.__version__


def _open(data: bytes):
    try:
        from PIL import Image
    except ImportError:
        raise UserError('image sources need Pillow, which is not installed; pip install "transferset[images]"') from None
    image = Image.open(io.BytesIO(data))
    image.load()  # decode it all now: a truncated or damaged file fails here, not later
    return image


def problem(data: bytes) -> str | None:
    """Why `data` is not a decodable image, or None."""
    try:
        _open(data)
    except UserError:
        raise
    except Exception as error:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        if type(error).__name__ == "UnidentifiedImageError":  # its text names a BytesIO's address: say it plainly
            return "not in an image format Pillow reads"
        return first_line(error) or type(error).__name__
    return None


def decode_one(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 [C, H, W]."""
    from PIL import Image

    channels, height, width = shape
    image = _open(data).convert(_MODES[channels])
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_column(column, shape: tuple[int, int, int], where: str, first_row: int = 0) -> np.ndarray:
    """A binary column of encoded images -> uint8 [B, C, H, W]; a bad image is refused by row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise UserError(f"{where}: the image column has {column.null_count} null rows; convert the images again")
    blobs = column.to_pylist()
    out = np.empty((len(blobs), *shape), np.uint8)

    def one(i: int) -> None:
        try:
            out[i] = decode_one(blobs[i], shape)
        except UserError:
            raise
        except Exception as error:
            raise UserError(f"{where}: the image in row {first_row + i} cannot be decoded ({first_line(error)}); "
                            f"convert the images again") from None

    if len(blobs) < 4:
        for i in range(len(blobs)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="transferset-decode") as pool:
            list(pool.map(one, range(len(blobs))))
    return out
