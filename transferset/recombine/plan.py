"""What a `recombine` run will write: its settings checked against the source set,
the member subset and weights, and the new set's provenance and resume key.

Two ways to the new targets, chosen here (`Plan.from_members`):

* from the members: the source kept every member's logits (`--keep-teacher-logits`);
  the chosen ones go through `combine()`, the very function `generate` calls.
* from the stored targets: when the combine method, the members and their weights
  stay the same and only T changes, a geometric set's stored target logits
  s = sum_k w_k z_k (shifted to max 0) do not depend on T at all (combine.py), so
  they are copied: exactly the bytes `generate` would write at the new T, and no
  member logits are needed. (The same holds for any method when T stays too, e.g.
  a copy that only drops the kept member logits.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from transferset import __version__
from transferset.combine import normalised_weights
from transferset.errors import UserError
from transferset.format.manifest import Manifest
from transferset.format.provenance import COMBINE_METHODS, FINGERPRINTED, Provenance, fingerprint

# What recombine computes from member logits. A `specialists` set (specialists.py) is
# made from models with fewer outputs, which no set keeps: only its copy is possible.
RECOMBINED_METHODS = ("arithmetic", "geometric")


@dataclass
class RecombineConfig:
    source: Path
    out: Path
    combine: str | None = None  # None: the source's
    temperature: float | None = None  # None: the source's
    members: list[int] | None = None  # indices into the source's teachers; None: all, in order
    weights: list[float] | None = None  # one per chosen member; None: the source's, renormalised
    drop_teacher_logits: bool = False  # else the chosen members' logits are kept (when the source has them)
    overwrite: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class Plan:
    source: Manifest
    members: list[int]
    weights: torch.Tensor  # [K'] float32 summing to 1, as generate's normalised_weights
    from_members: bool  # False: the stored target logits are copied unchanged
    provenance: Provenance  # of the new set (config_fingerprint included)
    fingerprint_values: dict  # what its resume key hashes (recorded in _job.json)


def make_plan(cfg: RecombineConfig, source: Manifest) -> Plan:
    """Every check against the source, all problems in one line, before anything is written."""
    src = source.provenance
    count = len(src.teachers)
    combine = src.combine if cfg.combine is None else cfg.combine
    temperature = src.temperature if cfg.temperature is None else cfg.temperature
    members = list(range(count)) if cfg.members is None else list(cfg.members)
    problems = _problems(cfg, src.combine, combine, temperature, members, count)
    if problems:
        raise UserError("; ".join(problems))
    weights = _weights(cfg, src, members)
    same_mix = combine == src.combine and members == list(range(count)) and torch.equal(weights, source_weights(src))
    from_members = not (same_mix and (combine == "geometric" or float(temperature) == float(src.temperature)))
    if from_members and combine not in RECOMBINED_METHODS:
        raise UserError(f"{source.directory} holds {combine} targets, which recombine cannot recompute (only copy, at the same T); "
                        f"choose --combine {' or '.join(RECOMBINED_METHODS)}, or run `transferset generate --combine {combine}` again")
    if from_members and not src.teacher_logits_kept:
        raise UserError(
            f"{source.directory} keeps no member logits (it was generated without --keep-teacher-logits), so only the "
            f"temperature of a geometric set with the same members and weights can change; regenerate it with --keep-teacher-logits"
        )
    provenance = _provenance(cfg, source, combine, float(temperature), members, weights)
    values = fingerprint_values(provenance)
    provenance = dataclasses.replace(provenance, config_fingerprint=fingerprint(values))
    return Plan(source, members, weights, from_members, provenance, values)


def _problems(cfg: RecombineConfig, src_combine: str, combine: str, temperature, members: list[int], count: int) -> list[str]:
    problems = []
    if combine not in COMBINE_METHODS:
        problems.append(f"unknown --combine {combine!r}; use {' or '.join(RECOMBINED_METHODS)}")
    elif combine not in RECOMBINED_METHODS and combine != src_combine:
        problems.append(f"--combine {combine} needs models no set keeps the logits of; run `transferset generate --combine {combine}`, "
                        f"or recombine with --combine {' or '.join(RECOMBINED_METHODS)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        problems.append(f"--temperature must be a positive number, got {temperature}")
    if not members:
        problems.append("--members names no member; give at least one index, e.g. --members 0,2")
    outside = [m for m in members if not 0 <= m < count]
    if outside:
        problems.append(f"--members {outside[0]} is out of range: {cfg.source} has {count} member{'s' if count > 1 else ''} "
                        f"(indices 0 to {count - 1})")
    if len(set(members)) != len(members):
        problems.append(f"--members {','.join(map(str, members))} names a member twice; name each once")
    if cfg.weights is not None:
        if len(cfg.weights) != len(members):
            problems.append(f"--weights has {len(cfg.weights)} number{'s' if len(cfg.weights) != 1 else ''} but --members "
                            f"names {len(members)}; give one weight per member")
        elif not all(math.isfinite(w) and w >= 0 for w in cfg.weights) or sum(cfg.weights) <= 0:
            problems.append(f"--weights {','.join(map(str, cfg.weights))} must be non-negative numbers with a positive sum")
    return problems


def source_weights(src: Provenance) -> torch.Tensor:
    """The source's member weights, float32 (generate recorded them from a float32 tensor)."""
    try:
        return torch.tensor([float(t["weight"]) for t in src.teachers], dtype=torch.float32)
    except (KeyError, TypeError, ValueError):
        raise UserError("the source's provenance has a member without a numeric weight; the transfer set is damaged, regenerate it") from None


def _weights(cfg: RecombineConfig, src: Provenance, members: list[int]) -> torch.Tensor:
    """Given weights normalised as generate normalises --teacher-weight; else the
    chosen members' source weights, renormalised over the subset."""
    if cfg.weights is not None:
        return normalised_weights(list(cfg.weights), len(members))
    chosen = source_weights(src)[members]
    if members == list(range(len(src.teachers))):
        return chosen  # unchanged: the very values generate combined with
    return normalised_weights(chosen.double().tolist(), len(members))


def _provenance(cfg: RecombineConfig, source: Manifest, combine: str, temperature: float, members: list[int],
                weights: torch.Tensor) -> Provenance:
    src = source.provenance
    keep = src.teacher_logits_kept and not cfg.drop_teacher_logits
    teachers = [{**src.teachers[m], "weight": w} for m, w in zip(members, weights.tolist())]
    changed = {}
    for name, old, new in (("combine", src.combine, combine), ("temperature", float(src.temperature), temperature),
                           ("members", list(range(len(src.teachers))), members),
                           ("weights", [t["weight"] for t in src.teachers], [t["weight"] for t in teachers]),
                           ("teacher_logits_kept", src.teacher_logits_kept, keep)):
        if old != new:
            changed[name] = {"from": old, "to": new}
    recombined_from = {"config_fingerprint": src.config_fingerprint, "shards_sha256": shards_sha256(source),
                       "members": members, "changed": changed}
    return dataclasses.replace(
        src, combine=combine, temperature=temperature, teachers=teachers, teacher_logits_kept=keep,
        recombined_from=recombined_from, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(), config_fingerprint=None,
    )


def shards_sha256(source: Manifest) -> str:
    """The source's content as one hash: sha256 over its shards' names and sha256s, in
    manifest order (each shard's sha256 is checked against its file before any is read)."""
    listing = "\n".join(f"{s.path} {s.sha256}" for s in source.shards)
    return hashlib.sha256(listing.encode()).hexdigest()


def fingerprint_values(provenance: Provenance) -> dict:
    """The new set's resume key: its FINGERPRINTED fields, teachers and sources by
    content (never by path, as in generate), the source set by its hashes."""
    values = {name: getattr(provenance, name) for name in FINGERPRINTED}
    values["teachers"] = [{k: t[k] for k in ("format", "sha256", "weight", "output") if k in t} for t in provenance.teachers]
    values["sources"] = [s.get("fingerprint") for s in provenance.sources]
    return values


def _versions() -> dict:
    import pyarrow

    return {"transferset": __version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
