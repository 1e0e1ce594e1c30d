"""Checkpoints: everything an exact resume needs, loadable with weights_only=True.

A checkpoint is one dict saved by `torch.save`:

    format, version      "transferset-checkpoint", 1
    fingerprint          the run's config fingerprint (config.py): a resume with
                         any other config is refused
    position             {"epoch", "batch_in_epoch", "step"}: the epoch being
                         trained, batches of it whose update has been applied,
                         optimiser steps so far. Counted where the loss is
                         computed, not where a loader prefetches, so resuming
                         replays exactly the batches not yet learned from.
    model, optimizer, scheduler, scaler   their state dicts (scaler: None or fp16's)
    rng                  torch (CPU and every CUDA device), numpy, python states,
                         as tensors and plain numbers
    epoch_sums           running sums of the epoch so far (loss parts x rows, rows),
                         so the resumed epoch's metrics equal the uninterrupted ones

Files are `checkpoints/step-00000123.pt`, written to a temporary name in the same
directory and published with `os.replace`, so a kill at any moment leaves either
the previous checkpoint or the new one, never half of one. A write the file system
refuses (disk full, read-only, ...) deletes the temporary file and is a one-line
error naming the checkpoint; once there is space, rerunning resumes from the one
before (benchmarks/kill_campaign.py and tests/test_disk_full.py check both).

The run directory's rules (`prepare_run_dir`): the run claims the directory first
(transferset/ownership.py: a second train into it is refused, naming the first's pid
and host); the same config as the run already there resumes from its newest
checkpoint (so rerunning a killed command continues it); a different config is
refused unless --overwrite, or unless the run there stopped before its first
checkpoint (nothing to lose: a failed command must not block its correction);
--resume [FILE] insists on a checkpoint and on the same config fingerprint.
--overwrite moves the old run's files aside before deleting them
(`replace.discard`), so a kill at any point is recovered by the same command.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from train.metrics import MetricsLog
from train.world import SINGLE_PROCESS, World
from transferset import __version__
from transferset import ownership, replace
from transferset.errors import UserError
from transferset.progress import say
from transferset.trust import safe_load
from transferset.io import atomic_write, atomic_write_json, reporting_write_errors

if TYPE_CHECKING:
    from train.config import TrainConfig

FORMAT = "transferset-checkpoint"
VERSION = 1
# What a run directory holds (besides student.pt / student.pt2, see export.py).
CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = 2, *, world: World = SINGLE_PROCESS) -> None:
    """Atomically write `state` as the checkpoint of `state["position"]["step"]`;
    then delete all but the newest `keep` checkpoints. Only the main process
    (rank 0) writes: every rank holds the same weights."""
    if not world.is_main:
        return
    path = checkpoint_path(directory, state["position"]["step"])
    with reporting_write_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    # Through a temp file and a rename; a full disk deletes the temp file and is one
    # line naming `path` (the older checkpoints stay, so a rerun resumes from them).
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))
    with reporting_write_errors(directory):
        for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Published checkpoints, oldest first (temporary files are ignored)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", trust: bool = False) -> dict[str, Any]:
    """Load through `transferset.trust.safe_load` (weights_only=True unless `trust`);
    a missing, damaged or foreign file is a UserError.

    Our checkpoints hold only tensors and plain types, so they never need full
    unpickling; a file that does (it can run code while loading) is refused
    unless the user passes --trust-checkpoint.
    """

    def unreadable(error: BaseException) -> str:
        if isinstance(error, FileNotFoundError):
            return f"checkpoint {str(path)!r} does not exist; drop --resume or point it at a file in RUN/checkpoints/"
        return f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}); delete it to resume from an earlier one"

    state = safe_load(path, what=f"checkpoint {str(path)!r}", unreadable=unreadable, trust=trust, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a transferset checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"checkpoint {str(path)!r} has version {state.get('version')!r}; this transferset reads version {VERSION}")
    return state


# -- random number generator states ------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain numbers."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # A resume on fewer GPUs restores the ones that exist.
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# -- the run directory: start, resume or refuse --------------------------------------------------------------------------


def prepare_run_dir(cfg: "TrainConfig", out: Path, fingerprint: str, identity: dict, resolved: dict) -> dict | None:
    """Start a new run, or return the checkpoint state to resume from.

    Same config as the run already in `out`: resume from its newest checkpoint
    (rerunning a killed command continues it). Different config: refuse unless
    --overwrite. --resume PATH: that checkpoint, which must match the config.
    """
    config_path = out / CONFIG
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the run")
    ownership.claim(out)  # this process's until train() returns: a second run into `out` is refused
    if replace.finish_discard(out, _is_run_output, owner="train"):  # a kill interrupted --overwrite: finish removing the old run
        say(f"finished removing the run an interrupted --overwrite was replacing in {out}", cfg.quiet)
    existing = _read_run_config(config_path, damaged_ok=cfg.overwrite)
    if existing is None and ownership.entries(out):
        raise UserError(f"--out {out} exists and is not a transferset run (no {CONFIG}); choose a new or empty directory")
    if existing is not None and existing.get("fingerprint") != fingerprint and cfg.resume is None and _nothing_learned(out, existing):
        # A run that failed before its first checkpoint (a bad flag, a divergence) holds nothing
        # to lose: its corrected command replaces it instead of being refused.
        say(f"replacing the run in {out}: it stopped before its first checkpoint", cfg.quiet)
        existing = None
        _discard_run_outputs(out)
    if existing is not None and cfg.overwrite:
        _discard_run_outputs(out)
        existing = None
    if existing is not None and existing.get("fingerprint") != fingerprint:
        changed = ", ".join(_changed_fields(existing, cfg, identity))
        if cfg.resume == "latest":
            raise UserError(
                f"--resume: the checkpoint was written by a different configuration (changed: {changed}); "
                f"rerun with the original flags, or drop --resume and pass --overwrite to start again"
            )
        raise UserError(f"--out {out} holds a run with a different configuration (changed: {changed}); pass --overwrite to replace it, or choose another --out")

    state = None
    if cfg.resume not in (None, "latest"):  # an explicit checkpoint file
        path = Path(cfg.resume)
        state = load_checkpoint(path, trust=cfg.trust_checkpoint)
        if state["fingerprint"] != fingerprint:
            origin = _read_run_config(path.parent.parent / CONFIG)  # RUN/checkpoints/step-N.pt -> RUN/config.json
            changed = ", ".join(_changed_fields(origin, cfg, identity)) if origin else "unknown: its run's config.json is missing"
            raise UserError(f"--resume {path}: the checkpoint was written by a different configuration (changed: {changed}); rerun with the original flags")
    elif existing is not None or cfg.resume == "latest":  # same config: continue from the newest checkpoint
        found = list_checkpoints(out / CHECKPOINTS)
        if cfg.resume == "latest" and not found:
            raise UserError(f"--resume: {out / CHECKPOINTS} has no checkpoint to resume from; drop --resume to start the run")
        state = load_checkpoint(found[-1], trust=cfg.trust_checkpoint) if found else None
        if state is not None and state["fingerprint"] != fingerprint:
            raise UserError(f"--resume: {found[-1]} was written by a different configuration than {out / CONFIG} records; pass --overwrite to start again")

    # An unwritable or read-only --out fails here as one line (EACCES/EROFS), not a traceback.
    with reporting_write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    with reporting_write_errors(out):
        _remove_temp_files(out)
    log = MetricsLog(out / METRICS)
    if state is None:
        _discard_run_outputs(out)  # a same-config run without any checkpoint starts from scratch
    else:
        with reporting_write_errors(out / METRICS):
            log.keep_until(state["position"]["step"])
    atomic_write_json(
        out / CONFIG,
        {
            "format": "transferset-run",
            "transferset_version": __version__,
            "fingerprint": fingerprint,
            "data_identity": identity,
            "config": cfg.to_dict(),
            "trajectory": cfg.trajectory(),
            "resolved": resolved,
            "finished": False,
        },
    )
    return state


def _read_run_config(path: Path, damaged_ok: bool = False) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        if damaged_ok:
            return {"damaged": True}  # --overwrite: replaced anyway
        raise UserError(f"{path} is not valid JSON; the run directory is damaged: pass --overwrite to start again") from None


def _remove_temp_files(out: Path) -> None:
    """Temp files of writes a kill or a full disk interrupted (checkpoints, student.pt,
    student.pt2, config.json, metrics.jsonl). Nothing reads them, but after a full disk
    they hold the space the rerun needs; one process writes a run directory, so none
    of them is in use."""
    for folder in (out, out / CHECKPOINTS):
        for p in folder.iterdir() if folder.is_dir() else []:
            if p.is_file() and ((p.name.startswith(".") and ".tmp-" in p.name) or p.name == f"{METRICS}.tmp"):
                p.unlink()


_RUN_OUTPUTS = (CONFIG, METRICS, "student.pt", "student.pt2", CHECKPOINTS)
# temporary files of a killed write (export, state dict, config.json, metrics.jsonl) and export's scratch folder
_RUN_TEMP_PREFIXES = (".student.pt.tmp-", ".student.pt2.tmp-", ".tmp-", ".export-", f".{CONFIG}.tmp-", f"{METRICS}.tmp")


def _is_run_output(path: Path) -> bool:
    return path.name in _RUN_OUTPUTS or path.name.startswith(_RUN_TEMP_PREFIXES)


def _discard_run_outputs(out: Path) -> None:
    """Delete what a run writes, and nothing else, so that a kill at any point leaves a
    directory the same command recovers (replace.discard: moved aside first)."""
    replace.discard(out, _is_run_output, owner="train")


def _nothing_learned(out: Path, existing: dict) -> bool:
    """A recorded run that is not finished and has neither a checkpoint nor a student."""
    return (not existing.get("finished") and not list_checkpoints(out / CHECKPOINTS)
            and not (out / "student.pt").exists() and not (out / "student.pt2").exists())


def _changed_fields(existing: dict, cfg: "TrainConfig", identity: dict) -> list[str]:
    """The flags (and data) whose values differ from the run recorded in `existing`."""
    old, new = existing.get("trajectory", {}), cfg.trajectory()
    flags = {"student_args": "--student-arg", "input": "--input-*/--transform"}
    changed = [flags.get(k, f"--{k.replace('_', '-')}") for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if existing.get("data_identity") != identity:
        changed.append(_changed_data(existing.get("data_identity") or {}, identity, cfg))
    return changed or ["the defaults of this transferset version"]


def _changed_data(old: dict, new: dict, cfg: "TrainConfig") -> str:
    """Which training data changed: the --data files whose content differs, by name."""
    old_files, new_files = old.get("data_files"), new.get("data_files")
    if not cfg.data or old_files is None or new_files is None or len(old_files) != len(new_files):
        return "the training data"
    from transferset.io import expand_parquet_paths

    if any("sha256" not in f for f in old_files):
        return "the training data's identity (the run was recorded without content hashes)"
    paths = expand_parquet_paths(list(cfg.data), "--data")  # the order the identity lists them in
    differ = [path for path, a, b in zip(paths, old_files, new_files) if a != b]
    if not differ:
        return "the training data"
    return "the content of --data " + ", ".join(differ)
