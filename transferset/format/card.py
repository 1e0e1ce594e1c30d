"""The dataset card: `README.md` in a transfer set, for people and dataset hubs.

A set is self-describing inside its Parquet metadata, but a person who meets it
cold sees `part-*.parquet` and underscore files. The card is what they read first,
in the format dataset hubs read: YAML front matter (`configs` / `data_files` name
the shards, so `datasets.load_dataset(DIR)` needs no glob; license, task, size
category, tags) and a body generated from the provenance.

The card is *about* the content, not part of it: the shard checksums and the
resume fingerprint never include it, so editing the description does not
invalidate the set. The manifest records the card's SHA-256 and its settings
(license, description, task), so `transferset card` can rewrite it and `verify`
can say when it was edited by hand. It is written (atomically) just before the
manifest, so a complete set always has one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from transferset.format.provenance import Provenance
from transferset.format.card_recipe import usage
from transferset.io import atomic_write

CARD = "README.md"
SHARD_GLOB = "part-*.parquet"

# Dataset hubs' license identifiers (Hugging Face's list); another value is kept, with a warning.
KNOWN_LICENSES = frozenset("""
apache-2.0 mit openrail openrail++ bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc
cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c
ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4
gemma unknown other
""".split())

# Hugging Face's size categories, by row count.
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


@dataclass(frozen=True)
class CardSettings:
    """What a person chooses for the card; everything else comes from the provenance."""

    license: str = "unknown"
    description: str | None = None
    task: str | None = None  # a hub task category; None: derived from the input shape

    @classmethod
    def from_record(cls, record: object) -> "CardSettings":
        """The settings a manifest's `card` record holds (defaults for anything missing or damaged)."""
        if not isinstance(record, dict):
            return cls()
        text = lambda key: record.get(key) if isinstance(record.get(key), str) else None  # noqa: E731
        return cls(license=text("license") or "unknown", description=text("description"), task=text("task"))

    def merged(self, license: str | None, description: str | None, task: str | None) -> "CardSettings":
        """These settings with the ones given (None keeps the current value)."""
        return CardSettings(license if license is not None else self.license,
                            description if description is not None else self.description,
                            task if task is not None else self.task)


def license_warning(license: str) -> str | None:
    if license in KNOWN_LICENSES:
        return None
    return (f"license {license!r} is not a dataset-hub license identifier (e.g. cc-by-4.0, apache-2.0, mit, other); "
            f"kept as given")


def size_category(rows: int) -> str:
    return next((name for limit, name in _SIZES if rows < limit), "n>1B")


def task_category(provenance: Provenance, settings: CardSettings) -> str:
    if settings.task:
        return settings.task
    from transferset.format.codecs import sequence_length

    if sequence_length(provenance) is not None:
        return "text-generation"  # per-token targets: a language model's next-token distributions
    if provenance.input.get("tokens"):
        return "text-classification"
    shape = provenance.input.get("shape") or []
    return "image-classification" if len(shape) == 3 else "tabular-classification"


def write_card(directory: Path, provenance: Provenance, records: list, settings: CardSettings) -> dict:
    """Write README.md atomically; the record the manifest keeps of it."""
    text = render_card(directory, provenance, records, settings)
    data = text.encode()
    atomic_write(directory / CARD, lambda f: f.write(data))
    return {"path": CARD, "sha256": hashlib.sha256(data).hexdigest(), **asdict(settings)}


def card_sha256(directory: Path) -> str | None:
    try:
        return hashlib.sha256((directory / CARD).read_bytes()).hexdigest()
    except OSError:
        return None


def render_card(directory: Path, provenance: Provenance, records: list, settings: CardSettings) -> str:
    rows = sum(r.rows for r in records)
    return "\n".join([
        *front_matter(provenance, rows, settings),
        *body(directory, provenance, records, settings),
    ]) + "\n"


def front_matter(provenance: Provenance, rows: int, settings: CardSettings) -> list[str]:
    """YAML, written by hand (no YAML dependency): every string is JSON-quoted, which
    YAML reads as the same string."""
    q = json.dumps
    lines = [
        "---",
        f"license: {q(settings.license)}",
        f"pretty_name: {q('transferset soft targets: ' + _teacher_names(provenance))}",
        "task_categories:", f"- {q(task_category(provenance, settings))}",
        "size_categories:", f"- {q(size_category(rows))}",
        "tags:", *[f"- {q(t)}" for t in ("knowledge-distillation", "soft-targets", "transferset", provenance.target_kind)],
        "configs:", "- config_name: default", "  data_files:", "  - split: train", f"    path: {q(SHARD_GLOB)}",
        "transferset:",
    ]
    facts = {"target_kind": provenance.target_kind, "num_classes": provenance.num_classes,
             "temperature": provenance.temperature, "combine": provenance.combine,
             "storage_dtype": provenance.storage_dtype, "rows": rows, "config_fingerprint": provenance.config_fingerprint}
    lines += [f"  {key}: {q(value)}" for key, value in facts.items()]
    return lines + ["---"]


def _teacher_names(provenance: Provenance) -> str:
    return " + ".join(str(t.get("name")) for t in provenance.teachers)


def body(directory: Path, provenance: Provenance, records: list, settings: CardSettings) -> list[str]:
    from transferset.format.codecs import get_codec

    codec = get_codec(provenance.target_kind)
    rows = sum(r.rows for r in records)
    labelled = sum(r.labelled_rows for r in records)
    on_disk = sum(r.bytes for r in records)
    name = directory.resolve().name
    lines = [
        f"# Transfer set `{name}`", "",
        settings.description or (f"Soft targets of {_teacher_names(provenance)} for knowledge distillation, "
                                 f"written by [transferset](https://pypi.org/project/transferset/)."), "",
        "| | |", "|---|---|",
        f"| target kind | `{provenance.target_kind}` |",
        f"| rows | {rows:,} ({labelled:,} labelled, {rows - labelled:,} unlabelled) |",
        f"| classes | {provenance.num_classes}{_class_names(provenance)} |",
        f"| temperature T | {provenance.temperature:g} |",
        f"| combine | {_combined(provenance)} |",
        f"| storage | {provenance.storage_dtype}; {codec.bytes_per_row(provenance):,.0f} bytes of targets per row; "
        f"{on_disk:,} bytes in {len(records)} shard(s) ({on_disk / max(rows, 1):,.1f} bytes per row on disk) |",
        f"| made | {provenance.created or '-'} on {provenance.device or '-'}, teacher precision {provenance.precision or '-'}, "
        f"{_versions(provenance)} |",
        f"| configuration fingerprint | `{provenance.config_fingerprint or '-'}` |",
        *_recombined_line(provenance),
        f"| license | {settings.license} |",
        "", "## What the columns hold", "",
        codec.describe(provenance),
        "- `id`: a stable row id (the source's content hash and row number, or the source's id column); "
        "`source`: the source file; `label`: the hard label, null where the row is unlabelled.",
        f"- {_inputs_line(provenance)}",
        "", "## Teachers", "", "| # | name | format | weight | sha256 |", "|---|---|---|---|---|",
        *[f"| {i} | {t.get('name')} | {t.get('format')} | {t.get('weight')} | `{t.get('sha256')}` |"
          for i, t in enumerate(provenance.teachers)],
        "", "## Sources", "", "| file | rows | labelled rows | sha256 |", "|---|---|---|---|",
        *[f"| `{Path(str(s.get('path'))).name}` | {s.get('rows')} | {s.get('labelled_rows')} | `{s.get('fingerprint')}` |"
          for s in provenance.sources],
        "", *usage(name, provenance, codec),
        "", "## Provenance", "",
        "Every shard's Parquet metadata (key `transferset`) and `_manifest.json` hold the full record; "
        "`transferset verify` checks every shard against the manifest's SHA-256s. This card is generated from that "
        "record (`transferset card` rewrites it) and is not part of the set's checksums.",
    ]
    return lines


def _inputs_line(provenance: Provenance) -> str:
    spec = provenance.input
    columns = ", ".join(f"`{c}`" for c in spec["columns"])
    shape = "x".join(str(d) for d in spec.get("shape") or []) or "as stored"
    steps = [f"times {spec['scale']:g}" if spec.get("scale", 1.0) != 1.0 else "",
             f"minus mean {spec['mean']}" if spec.get("mean") else "", f"over std {spec['std']}" if spec.get("std") else "",
             f"through `{spec['transform']}`" if spec.get("transform") else ""]
    seen = ", ".join(s for s in steps if s) or "as stored"
    if provenance.inputs == "reference":
        return (f"`source_row`: the row of the file named by `source` that holds the input ({columns}; not copied here, "
                f"so the sources below must stay unchanged); the teachers saw it shaped {shape}, {seen}.")
    return f"{columns}: the input, copied from the source; the teachers saw it shaped {shape}, {seen}."


def _recombined_line(provenance: Provenance) -> list[str]:
    source = getattr(provenance, "recombined_from", None)
    if not source:
        return []
    changed = ", ".join(f"{k} {v.get('from')} -> {v.get('to')}" if isinstance(v, dict) else str(k)
                        for k, v in (source.get("changed") or {}).items()) or "nothing"
    return [f"| recombined from | the set with configuration fingerprint `{source.get('config_fingerprint')}`, "
            f"members {source.get('members')}; changed: {changed} |"]


def _combined(provenance: Provenance) -> str:
    if provenance.combine == "specialists":
        special = sum(1 for t in provenance.teachers if "classes" in t)
        return (f"specialist ensemble: {len(provenance.teachers) - special} generalist(s) and {special} specialist(s) "
                f"(Hinton et al. 2015, section 5)")
    return f"{provenance.combine} mean of {len(provenance.teachers)} teacher(s)"


def _class_names(provenance: Provenance) -> str:
    names = provenance.class_names
    if not names:
        return ""
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f" ({shown})"


def _versions(provenance: Provenance) -> str:
    v = provenance.versions or {}
    return ", ".join(f"{k} {v[k]}" for k in ("transferset", "torch", "pyarrow") if k in v) or "versions not recorded"


def rewrite_card(manifest, settings: CardSettings) -> dict:
    """Write a complete set's card again (new settings, or a card edited or lost) and
    record it in the manifest; the shards and their checksums are not touched. Each
    file is replaced by atomic rename, card first: a kill in between leaves a valid
    set whose card `verify` reports as not the recorded one."""
    from transferset.format.manifest import MANIFEST
    from transferset.io import atomic_write_json

    path = manifest.directory / MANIFEST
    raw = json.loads(path.read_text())
    raw["card"] = write_card(manifest.directory, manifest.provenance, list(manifest.shards), settings)
    atomic_write_json(path, raw)
    return raw["card"]


def card_problem(manifest) -> str | None:
    """Why the set's README.md is not the card its manifest records, or None."""
    record = manifest.card
    if record is None:
        return f"has no dataset card (made before cards existed); `transferset card {manifest.directory}` writes one"
    found = card_sha256(manifest.directory)
    if found is None:
        return f"{CARD} is missing; `transferset card {manifest.directory}` writes it again"
    if found != record.get("sha256"):
        return f"{CARD} was edited since it was written (not part of the content); `transferset card {manifest.directory}` records it again"
    return None
