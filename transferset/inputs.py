"""How a row's stored input becomes the tensor a model sees.

One `InputSpec` describes it for both stages: the generator uses it to feed the
teachers, records it in the transfer set's provenance, and the trainer rebuilds
it from there to feed students exactly the same way.

Three kinds of input:
* a fixed-size numeric array column (`list` or `fixed_size_list`), reshaped to
  `shape`, then `x * scale`, then `(x - mean) / std` per channel (first axis);
* tokens (`tokens=True`): the `input_ids`, `attention_mask` and `target_mask`
  columns `convert --text` writes, each [B, L] integers; a language model sees
  `input_ids` and `attention_mask` as int64, the per-token targets keep the
  positions `target_mask` marks;
* anything else through a user transform `package.module:function`, called with
  a `pyarrow.RecordBatch` of the input columns, returning a [B, ...] array or
  tensor. It is imported only because the user named it.

`to_inputs` gives the named tensors of a batch for every kind; `to_tensor` the
one float tensor of an array or transformed input.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from transferset.errors import UserError, first_line

# The columns of a token source (`convert --text`, transferset/text/convert.py) and the
# one of them that is not a model input: the positions that get targets.
TOKEN_COLUMNS = ("input_ids", "attention_mask", "target_mask")
TARGET_MASK = "target_mask"


@dataclass(frozen=True)
class InputSpec:
    columns: tuple[str, ...]
    shape: tuple[int, ...] | None = None  # per-row shape, e.g. (1, 28, 28)
    scale: float = 1.0
    mean: tuple[float, ...] | None = None  # one value, or one per channel (shape[0])
    std: tuple[float, ...] | None = None
    transform: str | None = None  # "package.module:function"
    tokens: bool = False  # token ids + masks (convert --text), shape (L,)
    image: bool = False  # encoded image bytes (convert --image-folder), decoded to shape (C, H, W)
    _fn: Callable | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_tokens(cls, length: int) -> "InputSpec":
        return cls(columns=TOKEN_COLUMNS, shape=(length,), tokens=True)

    def __post_init__(self) -> None:
        if not self.columns:
            raise UserError("no input column given; pass --input-column NAME")
        if self.tokens:
            if self.columns != TOKEN_COLUMNS or self.transform or self.scale != 1.0 or self.mean or self.std or not self.shape:
                raise UserError(f"token inputs are the columns {', '.join(TOKEN_COLUMNS)} of a `convert --text` source, "
                                f"with no --input-* flags or --transform")
        elif self.image:
            if len(self.columns) != 1 or self.transform or not self.shape or len(self.shape) != 3 or self.shape[0] not in (1, 3):
                raise UserError("an image source is decoded to --input-shape C,H,W with C 1 (grey) or 3 (RGB), e.g. 3,224,224, "
                                "from its one image column, without --transform")
        elif self.transform is None:
            if len(self.columns) != 1:
                raise UserError("several --input-column need a --transform that combines them")
            if not self.shape:
                raise UserError("--input-shape is required for array inputs (e.g. 1,28,28), unless a --transform builds the tensor")
            if any(d <= 0 for d in self.shape):
                raise UserError(f"--input-shape {self.shape} must be positive integers like 1,28,28")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is None:
                continue
            channels = self.shape[0] if self.shape else 1
            if len(values) not in (1, channels):
                raise UserError(f"--input-{name} has {len(values)} values; give 1 or one per channel ({channels})")
        if self.std is not None and any(s == 0 for s in self.std):
            raise UserError("--input-std must not contain 0")

    @property
    def size(self) -> int:
        return math.prod(self.shape) if self.shape else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_fn")
        if not self.tokens:  # absent, not false: every earlier set's recorded input (and resume key) stays as it was
            d.pop("tokens")
        if not self.image:
            d.pop("image")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        def tup(v):
            return tuple(v) if v is not None else None

        return cls(
            columns=tuple(d["columns"]),
            shape=tup(d.get("shape")),
            scale=float(d.get("scale", 1.0)),
            mean=tup(d.get("mean")),
            std=tup(d.get("std")),
            transform=d.get("transform"),
            tokens=bool(d.get("tokens", False)),
            image=bool(d.get("image", False)),
        )

    # -- column checks ------------------------------------------------------

    def check_field(self, schema: pa.Schema, where: str) -> None:
        """Refuse a source whose input columns cannot give this spec's rows."""
        for name in self.columns:
            if name not in schema.names:
                raise UserError(f"{where} has no input column {name!r} (columns: {', '.join(schema.names)}); fix --input-column")
        if self.transform is not None:
            return
        if self.tokens:
            return self._check_token_fields(schema, where)
        ftype = schema.field(self.columns[0]).type
        if self.image:
            if not (pa.types.is_binary(ftype) or pa.types.is_large_binary(ftype)):
                raise UserError(f"{where}: image column {self.columns[0]!r} is {ftype}, not encoded image bytes; make the source "
                                f"with `transferset convert --image-folder DIR`")
            return
        if not (pa.types.is_list(ftype) or pa.types.is_large_list(ftype) or pa.types.is_fixed_size_list(ftype)):
            raise UserError(f"{where}: input column {self.columns[0]!r} is {ftype}, not a numeric array; use a list column or --transform")
        if not (pa.types.is_integer(ftype.value_type) or pa.types.is_floating(ftype.value_type)):
            raise UserError(f"{where}: input column {self.columns[0]!r} holds {ftype.value_type}, not numbers; use --transform")
        if pa.types.is_fixed_size_list(ftype) and ftype.list_size != self.size:
            raise UserError(
                f"{where}: input column {self.columns[0]!r} has {ftype.list_size} values per row but "
                f"--input-shape {','.join(map(str, self.shape))} needs {self.size}; fix --input-shape, or use data shaped like the model's inputs"
            )

    def _check_token_fields(self, schema: pa.Schema, where: str) -> None:
        for name in self.columns:
            ftype = schema.field(name).type
            if not (pa.types.is_fixed_size_list(ftype) and pa.types.is_integer(ftype.value_type) and ftype.list_size == self.size):
                raise UserError(f"{where}: token column {name!r} is {ftype}, not {self.size} integers per row; "
                                f"make the source with `transferset convert --text ... --max-length {self.size}`")

    def stored_fields(self, schema: pa.Schema) -> list[pa.Field]:
        """The input columns as the transfer set stores them (fixed-size lists).

        They sit next to the set's own columns, so a reserved name is refused here
        (generate calls this while checking its sources, before anything is written)."""
        from transferset.format.schema import RESERVED_COLUMNS

        fields = []
        for name in self.columns:
            if name in RESERVED_COLUMNS:
                raise UserError(
                    f"input column {name!r} clashes with a transfer-set column (reserved: {', '.join(RESERVED_COLUMNS)}); "
                    f"rename it in the source"
                )
            f = schema.field(name)
            if self.transform is None and not self.image and not pa.types.is_fixed_size_list(f.type):
                f = pa.field(name, pa.list_(pa.field("element", f.type.value_type, nullable=False), self.size), nullable=False)
            fields.append(f)
        return fields

    def fixed_column(self, column: pa.Array | pa.ChunkedArray, where: str, first_row: int = 0) -> pa.FixedSizeListArray:
        """The input column as one FixedSizeListArray of `size` values per row.

        `first_row`: the position of the column's first row in `where`, so that errors
        name rows as the user counts them (a batch's row 8 may be the file's row 40)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            if column.null_count:
                raise UserError(f"{where}: input column {self.columns[0]!r} has {column.null_count} null rows; drop or fill them")
            return column
        if column.null_count:
            raise UserError(f"{where}: input column {self.columns[0]!r} has {column.null_count} null rows; drop or fill them")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != self.size)
        if bad.size:
            raise UserError(
                f"{where}: input column {self.columns[0]!r} row {first_row + int(bad[0])} has {int(lengths[bad[0]])} values but "
                f"--input-shape {','.join(map(str, self.shape))} needs {self.size}; fix --input-shape, or use data shaped like the model's inputs"
            )
        return pa.FixedSizeListArray.from_arrays(column.flatten(), self.size)

    # -- the tensor ---------------------------------------------------------

    def to_inputs(self, batch: pa.RecordBatch | pa.Table, where: str = "input", first_row: int = 0) -> dict[str, torch.Tensor]:
        """The named tensors of a batch: {column or "inputs": float32 [B, *shape]}, or for
        tokens {"input_ids": int64, "attention_mask": int64, "target_mask": bool}, each [B, L]."""
        if not self.tokens:
            return {self.columns[0] if self.transform is None else "inputs": self.to_tensor(batch, where, first_row)}
        named = {}
        for name in self.columns:
            values = self.fixed_column(batch.column(name), where, first_row).flatten().to_numpy(zero_copy_only=False)
            named[name] = torch.from_numpy(values.astype(np.int64).reshape(batch.num_rows, self.size))
        named[TARGET_MASK] = named[TARGET_MASK] != 0
        return named

    def to_tensor(self, batch: pa.RecordBatch | pa.Table, where: str = "input", first_row: int = 0) -> torch.Tensor:
        """float32 [B, *shape] (or whatever the transform returns, as float32)."""
        if self.transform is not None:
            return self._transformed(batch)
        if self.image:  # decoded to uint8 [B, C, H, W] (transferset/images/decode.py), then scaled like any array
            from transferset.images.decode import decode_column

            return self._scaled(decode_column(batch.column(self.columns[0]), self.shape, where, first_row).astype(np.float32))
        fixed = self.fixed_column(batch.column(self.columns[0]), where, first_row)
        # flatten() honours slice offsets (FixedSizeListArray.values does not).
        values = fixed.flatten().to_numpy(zero_copy_only=False)
        # One float32 copy that the model owns (Arrow's buffers are read-only);
        # for uint8 pixels this copy is the int -> float conversion anyway.
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, by row
            x = np.array(values, dtype=np.float32).reshape(len(fixed), *self.shape)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(x).all():  # integers are always finite
            self._refuse_non_finite(values.reshape(len(fixed), -1), x.reshape(len(fixed), -1), where, first_row)
        return self._scaled(x)

    def stored_tensor(self, batch: pa.RecordBatch | pa.Table, where: str = "input", first_row: int = 0) -> torch.Tensor | None:
        """The stored values [B, *shape] in their own 8- or 16-bit integer type (uint8 pixels:
        one byte each, a quarter of float32), for a reader that holds many rows and converts
        each batch with `from_stored`; None where to_tensor must be used (floats, wider
        integers, encoded images, tokens, a --transform)."""
        if self.transform is not None or self.image or self.tokens:
            return None
        fixed = self.fixed_column(batch.column(self.columns[0]), where, first_row)
        if fixed.type.value_type not in (pa.uint8(), pa.int8(), pa.int16()):
            return None
        values = fixed.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(values.reshape(len(fixed), *self.shape).copy())  # Arrow's buffers are read-only

    def from_stored(self, stored: torch.Tensor) -> torch.Tensor:
        """float32 [B, *shape] from stored_tensor's values: the very operations of to_tensor
        (an integer -> float32 copy, then _scaled), so the same float32 values."""
        return self._scaled(stored.numpy().astype(np.float32))

    def _scaled(self, x: np.ndarray) -> torch.Tensor:
        """x * scale, then (x - mean) / std per channel, in place on float32 [B, *shape]."""
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if self.mean is not None:
            x -= self._per_channel(self.mean)
        if self.std is not None:
            x /= self._per_channel(self.std)
        return torch.from_numpy(x)

    def _refuse_non_finite(self, values: np.ndarray, x: np.ndarray, where: str, first_row: int) -> None:
        """NaN/Inf in the stored values, or finite float64 values beyond float32's range
        (1e300 becomes inf in the conversion: the data is not NaN, it is too large)."""
        column = self.columns[0]
        stored_bad = ~np.isfinite(values).all(axis=1)
        if stored_bad.any():
            bad = (first_row + np.flatnonzero(stored_bad)[:5]).tolist()
            raise UserError(f"{where}: input column {column!r} has NaN/Inf values (rows {bad}); clean the source")
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        value = values[row][~np.isfinite(x[row])][0]
        raise UserError(
            f"{where}: input column {column!r} row {first_row + row} holds {value:g}, which overflows float32 "
            f"(largest {np.finfo(np.float32).max:.3g}); models read float32: rescale the source values"
        )

    def _per_channel(self, values: tuple[float, ...]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float32)
        return v.reshape(-1, *([1] * (len(self.shape) - 1))) if len(values) > 1 else v

    def _transformed(self, batch) -> torch.Tensor:
        fn = self._fn or load_callable(self.transform, "--transform")
        object.__setattr__(self, "_fn", fn)
        # User code: whatever it raises becomes one line naming the transform, not a traceback.
        try:
            out = fn(batch.select(list(self.columns)))
        except UserError:
            raise
        except Exception as error:
            raise UserError(
                f"--transform {self.transform} failed on a batch of {batch.num_rows} rows ({type(error).__name__}: {first_line(error)}); "
                f"fix the transform (try it on pyarrow.parquet.read_table(SOURCE).to_batches()[0])"
            ) from None
        try:
            x = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
        except (TypeError, ValueError, RuntimeError) as error:
            raise UserError(
                f"--transform {self.transform} returned {type(out).__name__} that is not numeric ({first_line(error)}); "
                f"return a [rows, ...] NumPy array or torch tensor of numbers"
            ) from None
        if x.ndim < 1 or x.shape[0] != batch.num_rows:
            raise UserError(f"--transform {self.transform} returned shape {tuple(x.shape)} for {batch.num_rows} rows; it must return [rows, ...]")
        return x.to(torch.float32) if x.is_floating_point() else x


def load_callable(spec: str, flag: str) -> Callable:
    """Import `package.module:function`. Only ever called on a name the user gave."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{flag} {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"{flag} {spec!r}: cannot import {module_name!r} ({first_line(error)}); is it installed or on PYTHONPATH?") from None
    except Exception as error:  # the module itself is broken (SyntaxError, an error at import time)
        raise UserError(f"{flag} {spec!r}: importing {module_name!r} failed ({type(error).__name__}: {first_line(error)}); fix that module") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{flag} {spec!r}: {module_name} has no callable {attr!r}")
    return fn



def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """Comma-separated numbers or one fraction ("0.5,0.25", "1/255") -> a tuple of floats.

    Finite only: a nan or inf scale, mean or std turns every input into NaN, which
    would surface much later as a diverged training run."""
    if text is None:
        return None
    try:
        if "/" in text and "," not in text:  # "1/255"
            num, den = text.split("/")
            values = (float(num) / float(den),)
        else:
            values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r} must be numbers separated by commas (or a fraction like 1/255)") from None
    except ZeroDivisionError:
        raise UserError(f"{flag} {text!r} divides by zero; give a fraction like 1/255") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{flag} {text!r} must be finite numbers (no nan/inf), like 1/255 or 0.5")
    return values


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input-shape {text!r} must be integers separated by commas, like 1,28,28") from None
    if any(d <= 0 for d in shape):
        raise UserError(f"--input-shape {text!r} must be positive integers, like 1,28,28")
    return shape
