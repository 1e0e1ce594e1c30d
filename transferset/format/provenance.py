"""Provenance: what a transfer set is and how it was made, as one typed record.

Every shard's Parquet metadata (key `transferset`) and `_manifest.json` carry it as
flat JSON; `Provenance.decode` validates before anything reads a field, and every
reader uses the attributes, never string keys.

The resume fingerprint is computed from `FINGERPRINTED`, a list of *field names of
this class*: a setting that changes the stored values (the batch size changes float
sums; the row-group size changes the files) can only be fingerprinted by being
recorded here too (`tests/test_format.py` checks the list against the fields).
Teachers and sources enter it by content (file hashes), not by path, so moving the
data does not invalidate a resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from transferset.errors import UserError

SCHEMA_VERSION = 1
FORMAT_NAME = "transferset"
COMBINE_METHODS = ("arithmetic", "geometric", "specialists")  # specialists: transferset/specialists.py
STORAGE_DTYPES = ("float16", "float32")
# Kinds a newer transferset may write: named so that the refusal can say so precisely.
RESERVED_TARGET_KINDS = ("sequence",)


@dataclass(frozen=True)
class Provenance:
    # -- what the targets are (readers decode by these) --------------------------
    target_kind: str
    num_classes: int
    temperature: float
    combine: str
    storage_dtype: str
    teachers: list[dict]  # each: name, format, sha256, weight, spec, weights_file
    sources: list[dict]  # each: path, fingerprint (sha256), rows, labelled_rows, labelled
    input: dict  # the InputSpec the teachers saw (InputSpec.to_dict)
    # -- settings that shape the stored values ---------------------------------------
    class_names: list[str] | None = None
    label_column: str | None = "label"
    id_column: str | None = None
    teacher_logits_kept: bool = False
    shard_rows: int | None = None
    row_group_rows: int | None = None  # None: a set written before this was recorded
    batch_size: int | None = None
    precision: str | None = None
    num_writers: int = 1
    target_options: dict = field(default_factory=dict)  # the codec's own settings (e.g. k of top-k)
    extra: dict = field(default_factory=dict)  # settings a caller of the API adds
    # `transferset recombine`: the source set (config_fingerprint, shards_sha256), the
    # member indices taken from it and the settings that changed ({name: {from, to}})
    recombined_from: dict | None = None
    # "reference": no input columns; each row names its source row (`source_row`),
    # joined back at read time (format/references.py). None: the inputs are copied.
    inputs: str | None = None
    # -- record only ---------------------------------------------------------------------
    rows: int | None = None
    versions: dict = field(default_factory=dict)
    device: str | None = None
    created: str | None = None
    config_fingerprint: str | None = None
    logits: str = "softmax(logits / temperature) is the combined teacher distribution; rows shifted to max 0"
    format: str = FORMAT_NAME
    schema_version: int = SCHEMA_VERSION

    def encode(self) -> dict[str, Any]:
        encoded = dataclasses.asdict(self)
        for key in HASHED_WHEN_SET:  # absent rather than null: every earlier set's bytes stay as they were
            if encoded.get(key) is None:
                encoded.pop(key, None)
        return encoded

    def encode_bytes(self) -> bytes:
        return json.dumps(self.encode(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: Any, where: str) -> "Provenance":
        """Validate and type a decoded JSON object; `where` names the file in errors.
        Keys this version does not know are ignored (a newer writer may add some)."""
        validate(raw, where)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def decode_bytes(cls, raw: bytes | str | None, where: str) -> "Provenance":
        if raw is None:
            raise UserError(f"{where} has no transferset metadata: it is not a transfer-set shard")
        try:
            decoded = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise UserError(f"{where}: transferset metadata is not valid JSON; the file is damaged, regenerate it") from None
        return cls.decode(decoded, where)


# Provenance fields that identify a set's content: the resume fingerprint. Every
# name must be a field above (checked by a test), so nothing is hashed unrecorded.
FINGERPRINTED = (
    "target_kind", "temperature", "combine", "storage_dtype", "teachers", "sources", "input", "class_names",
    "label_column", "id_column", "teacher_logits_kept", "shard_rows", "row_group_rows", "batch_size", "precision",
    "num_writers", "target_options", "extra", "recombined_from", "inputs",
)
# Fingerprinted fields added after sets were published: hashed only when set (and
# callers may leave them out), so the resume key of every earlier set stays the same.
HASHED_WHEN_SET = ("recombined_from", "inputs")


def fingerprint(values: dict[str, Any]) -> str:
    """sha256 of exactly the FINGERPRINTED values (teachers and sources by content)."""
    required = set(FINGERPRINTED) - set(HASHED_WHEN_SET)
    if not required <= set(values) <= set(FINGERPRINTED):
        raise ValueError(f"fingerprint needs exactly {FINGERPRINTED}, got {sorted(values)}")
    hashed = {k: v for k, v in values.items() if not (k in HASHED_WHEN_SET and v is None)}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def validate(provenance: Any, where: str) -> None:
    """Check the fields every reader relies on, before anything uses them."""
    from transferset.format.codecs import get_codec

    if not isinstance(provenance, dict) or provenance.get("format") != FORMAT_NAME:
        raise UserError(f"{where}: not transferset metadata (missing format={FORMAT_NAME!r})")
    version = provenance.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{where}: transfer-set schema version {version!r} is not supported by this transferset "
            f"(it reads version {SCHEMA_VERSION}); upgrade transferset or regenerate the set"
        )
    get_codec(provenance.get("target_kind"), where)
    checks = [
        ("num_classes", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2),
        ("temperature", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
        ("combine", lambda v: v in COMBINE_METHODS),
        ("storage_dtype", lambda v: v in STORAGE_DTYPES),
        ("teachers", lambda v: isinstance(v, list) and len(v) >= 1 and all(isinstance(t, dict) for t in v)),
        ("sources", lambda v: isinstance(v, list) and len(v) >= 1 and all(isinstance(s, dict) for s in v)),
        ("input", _valid_input),
    ]
    for key, ok in checks:
        if key not in provenance or not ok(provenance[key]):
            raise UserError(f"{where}: transferset metadata field {key!r} is missing or invalid ({provenance.get(key)!r}); the file is damaged, regenerate it")
    for key, kind in (("target_options", dict), ("extra", dict), ("versions", dict)):
        if key in provenance and not isinstance(provenance[key], kind):
            raise UserError(f"{where}: transferset metadata field {key!r} is not a JSON object; the file is damaged, regenerate it")
    validate_optional(provenance, where)


def _numbers(v, kind=(int, float)) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v))


def _valid_input(v) -> bool:
    """The InputSpec.to_dict shape (checked here: inputs.py needs torch, inspect does not)."""
    return (isinstance(v, dict) and isinstance(v.get("columns"), list) and bool(v["columns"])
            and all(isinstance(c, str) for c in v["columns"]) and _numbers(v.get("shape"), int)
            and isinstance(v.get("scale", 1.0), (int, float)) and not isinstance(v.get("scale", 1.0), bool)
            and _numbers(v.get("mean")) and _numbers(v.get("std")) and _text(v.get("transform")))


def _count(minimum: int):
    return lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= minimum)


def _text(v) -> bool:
    return v is None or isinstance(v, str)


# Fields a set may leave out (or null) but that must have their type when present:
# a damaged value must be refused here, not meet arithmetic or a join in a reader.
OPTIONAL_CHECKS = {
    "class_names": lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
    "label_column": _text, "id_column": _text, "precision": _text, "device": _text, "created": _text,
    "config_fingerprint": _text, "logits": _text,
    "recombined_from": lambda v: v is None or isinstance(v, dict),
    "inputs": lambda v: v is None or v == "reference",
    "teacher_logits_kept": lambda v: isinstance(v, bool),
    "shard_rows": _count(1), "row_group_rows": _count(1), "batch_size": _count(1), "rows": _count(0),
    "num_writers": lambda v: _count(1)(v) and v is not None,
}


def validate_optional(provenance: dict, where: str) -> None:
    for key, ok in OPTIONAL_CHECKS.items():
        if key in provenance and not ok(provenance[key]):
            raise UserError(f"{where}: transferset metadata field {key!r} is invalid ({provenance[key]!r}); the file is damaged, regenerate it")
