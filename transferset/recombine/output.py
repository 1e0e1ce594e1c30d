"""`recombine --out`: claimed, checked and recorded by the rules `generate` follows.

One process owns --out (ownership.py). A directory holding something else is
refused; a set recorded with another configuration is refused unless
--overwrite (replace.py: crash-safe); the same configuration resumes, or answers
"already complete". `_job.json` records the resume key and the provenance.
"""

from __future__ import annotations

import json
from pathlib import Path

from transferset import ownership, replace
from transferset.errors import UserError
from transferset.format.manifest import JOB, MANIFEST, Manifest, read_job, read_manifest
from transferset.format.provenance import Provenance
from transferset.io import create_exclusive_json
from transferset.progress import say
from transferset.recombine.plan import Plan, RecombineConfig

OWNER = "recombine"  # names this command in an --overwrite's discard marker

# How a refusal names each setting of the resume key; the rest came from the source set.
_FLAGS = {"combine": "--combine", "temperature": "--temperature", "teachers": "--members/--weights",
          "teacher_logits_kept": "--drop-teacher-logits"}


def prepare(cfg: RecombineConfig, plan: Plan) -> Manifest | None:
    """Claim --out (held until the enclosing ownership.scope() ends). The manifest
    when it already holds this very set; None when there is work to do."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a directory path")
    source = plan.source.directory.resolve()
    if out.resolve() == source or out.resolve() in source.parents:
        raise UserError(f"--out {str(out)!r} is or contains the source set {str(plan.source.directory)!r}; write the new set elsewhere")
    ownership.claim(out)
    if replace.finish_discard(out, owner=OWNER):
        say(f"finished removing the set an interrupted --overwrite was replacing in {out}", cfg.quiet)
    if not [p for p in ownership.entries(out) if not (p.name.startswith(".") and ".tmp-" in p.name)]:
        return None
    job = out / JOB
    if not job.exists():
        raise UserError(f"--out {str(out)!r} exists and is not a transfer set; choose another directory (it is never deleted)")
    recorded = read_job(out)
    if recorded.get("config_fingerprint") != plan.provenance.config_fingerprint:
        if not cfg.overwrite:
            raise different_configuration(out, recorded.get("fingerprint_values"), plan.fingerprint_values)
        replace.discard(out, owner=OWNER)
        return None
    if (out / MANIFEST).exists():
        say(f"{out} is already complete with this configuration; nothing to do", cfg.quiet)
        return read_manifest(out)
    return None


def record_job(cfg: RecombineConfig, plan: Plan) -> Provenance:
    """The provenance of the set being written: recorded now in `_job.json`, or the
    one an interrupted run of the same configuration recorded."""
    job_path = cfg.out / JOB
    record = {"command": OWNER, "config_fingerprint": plan.provenance.config_fingerprint,
              "fingerprint_values": plan.fingerprint_values, "provenance": plan.provenance.encode()}
    if create_exclusive_json(job_path, record):
        return plan.provenance
    try:
        job = json.loads(job_path.read_text())
        recorded = Provenance.decode(job["provenance"], str(job_path))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise UserError(f"{job_path} is damaged; delete --out {str(cfg.out)!r} (or pass --overwrite) and recombine again") from None
    if job.get("config_fingerprint") != plan.provenance.config_fingerprint:
        raise different_configuration(cfg.out, job.get("fingerprint_values"), plan.fingerprint_values)
    return recorded


def different_configuration(out: Path, old, new: dict) -> UserError:
    return UserError(
        f"--out {str(out)!r} holds a transfer set made with a different configuration (changed: {_changed(old, new)}); "
        f"use another --out, or --overwrite to replace it"
    )


def _changed(old, new: dict) -> str:
    if not isinstance(old, dict):
        return "unknown: it was made by an earlier transferset"
    names = []
    for key in sorted(new):
        before, after = old.get(key), new[key]
        if key == "recombined_from":  # its members and "changed" repeat the settings named above
            before, after = _source_of(before), _source_of(after)
        if before != after:
            name = _FLAGS.get(key, "the source set")
            if name not in names:
                names.append(name)
    return ", ".join(names) or "unknown"


def _source_of(recombined_from) -> tuple | None:
    if not isinstance(recombined_from, dict):
        return None
    return recombined_from.get("config_fingerprint"), recombined_from.get("shards_sha256")

