"""Kill anywhere, lose nothing: SIGKILL `generate` and `train` at random moments.

    python benchmarks/kill_campaign.py [--kills 20] [--seed 0] [--commands generate,train,...]
                                       [--window run|work] [--work DIR] [--keep]

Commands: generate, train, and the ones that replace or delete what exists:
generate-overwrite and train-overwrite (every chain starts from a copy of an old
set / run of another configuration, which `--overwrite` must replace: a kill while
it goes must leave what the same command recovers), convert (`--overwrite`, into
a fresh folder), verify-drop-bad (every chain starts from a copy of a set with two
bad shards; its final check is the user's repair: the generate that made the set,
which must rebuild it equal to the reference).

For each command: one uninterrupted reference run first (its wall time T sets
the kill times), then kills drawn uniformly over [0, T) (`--window run`, every
moment of the process's life, imports and exit included) or over the span in
which the reference run's output directory changed (`--window work`). A
kill lands on a *chain*: the command is started in a fresh output directory,
SIGKILLed at its drawn time, started again with the same command line, killed
again at the next drawn time, and so on until one run finishes before its kill
time; that run's output is then compared with the reference. Every kill is
checked twice:

- right after it, on what is on disk: nothing published may be half-written.
  generate: every `part-*.parquet` reads completely and equals the reference's
  shard; every shard record matches its file's sha256; a manifest only when
  `transferset verify` passes. train: every published checkpoint loads with
  weights_only=True; `student.pt`, if there, loads.
- at the end of its chain, on the result: generate: every source row exactly
  once, all columns (sorted by id) equal to the reference's, the provenance
  equal but for its creation time, `transferset verify` passes. train:
  `student.pt` bit-identical (torch.equal on every tensor), `student.pt2` the
  same bytes, `metrics.jsonl` equal but for timings. Both: no temp file left.

A kill "survives" when both checks pass. Kill times are seeded (`--seed`);
where they land is not (this machine is shared and noisy), so every kill is
printed with what existed on disk when it landed.

The workloads are small (a few thousand 8x8 digits; generate runs the `slow`
teacher of tests/teacher_models.py, 10 ms a batch, so there is a run to kill)
and the whole 20-kill campaign for both commands takes a few minutes on 2 cores.
tests/test_kill_campaign.py runs the same harness with 3 kills each for generate
and train, 2 each for the other four.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import cli  # noqa: E402
from transferset.format.manifest import JOB, MANIFEST, RECORDS_DIR, read_manifest  # noqa: E402
from transferset.errors import UserError  # noqa: E402
from transferset.ownership import DISCARD  # noqa: E402
from transferset.io import file_sha256  # noqa: E402

DIGITS = ROOT / "data" / "digits.parquet"
COMMANDS = ("generate", "train", "generate-overwrite", "train-overwrite", "convert", "verify-drop-bad")
TIMING_KEYS = ("seconds", "rows_per_s")  # metrics.jsonl fields that measure the machine, not the run


# -- running the command ----------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The subprocess environment: the repo and tests/ (teacher factories) importable."""
    extra = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), str(TESTS), extra) if p))


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *argv], cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@dataclass
class Timing:
    """An uninterrupted run: its wall time, and when its output directory first and
    last changed (the span in which the command writes: `--window work`)."""

    seconds: float
    first_write: float
    last_write: float


def _listing(out: Path) -> frozenset[str]:
    while True:  # a folder may vanish while we walk it (a temp folder, --overwrite's discard): look again
        try:
            return frozenset(str(p.relative_to(out)) for p in out.rglob("*")) if out.is_dir() else frozenset()
        except FileNotFoundError:
            continue


def run_to_end(argv: list[str], out: Path, timeout: float = 600, ok_codes: tuple[int, ...] = (0,)) -> Timing:
    """Run the command uninterrupted, watching `out` every 5 ms."""
    seen, first_write, last_write = _listing(out), None, 0.0  # what a workload's prepare() put there is not a write
    started = time.monotonic()
    proc = start(argv)
    while proc.poll() is None:
        now = time.monotonic() - started
        listing = _listing(out)
        if listing != seen:  # a file appeared or went (temp files, renames)
            seen, last_write = listing, now
            first_write = now if first_write is None else first_write
        if now > timeout:
            proc.kill()
            raise RuntimeError(f"transferset {argv[0]} did not finish in {timeout} s")
        time.sleep(0.005)
    seconds = time.monotonic() - started
    stderr = proc.communicate()[1]
    if proc.returncode not in ok_codes:
        raise RuntimeError(f"transferset {' '.join(argv)} failed ({proc.returncode}): {stderr.strip()}")
    if _listing(out) != seen:
        last_write = seconds
    return Timing(seconds, first_write if first_write is not None else 0.0, last_write)


def verify_cli(directory: Path) -> str | None:
    """`transferset verify DIR` (in-process): None when it passes, else its message."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["verify", str(directory)])
    return None if code == 0 else (err.getvalue().strip() or f"exit code {code}")


# -- workloads: the command line, and what to check ---------------------------------------------


@dataclass
class Workload:
    """One command under test. `argv(out)` is the command line writing to `out`;
    `landing(out)` describes what is on disk; `check_partial(out, reference)` lists
    what is wrong with a killed run's leftovers; `check_final(out, reference)` what is
    wrong with a finished run's output compared with the reference's. `prepare(out)`
    puts what the command starts from into a chain's fresh `out` (the old output that
    --overwrite replaces, the damaged set that --drop-bad repairs); `ok_codes` are the
    exit codes of a run that finished as it should."""

    name: str
    argv: Callable[[Path], list[str]]
    landing: Callable[[Path], str]
    check_partial: Callable[[Path, Path], list[str]]
    check_final: Callable[[Path, Path], list[str]]
    prepare: Callable[[Path], None] | None = None
    ok_codes: tuple[int, ...] = (0,)


def write_digits_source(path: Path, copies: int) -> int:
    """`copies` x the 1,797 bundled digits (pixels + label) as one Parquet source."""
    table = pq.read_table(DIGITS, columns=["pixels", "label"])
    pq.write_table(pa.concat_tables([table] * copies), path, row_group_size=1000)
    return table.num_rows * copies


def generate_workload(source: Path, *, teacher: str = "teacher_models:slow", batch_size: int = 16, shard_rows: int = 500) -> Workload:
    """`transferset generate` over `source` with small batches and shards (many shard boundaries to land on)."""

    def argv(out: Path) -> list[str]:
        return [
            "generate", "--teacher", teacher, "--source", str(source),
            "--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16",
            "--combine", "geometric", "--temperature", "2", "--keep-teacher-logits",
            "--batch-size", str(batch_size), "--shard-rows", str(shard_rows), "--row-group-rows", str(shard_rows // 2 + 1),
            "--out", str(out), "--quiet",
        ]  # fmt: skip

    return Workload("generate", argv, _generate_landing, _generate_partial, _generate_final)


def _published_shards(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet")) if out.is_dir() else []


def _generate_landing(out: Path) -> str:
    if not out.is_dir() or not any(out.iterdir()):
        return "nothing written yet"
    shards = len(_published_shards(out))
    records = len(list((out / RECORDS_DIR).glob("part-*.json"))) if (out / RECORDS_DIR).is_dir() else 0
    temp = len(list(out.glob(".part-*.tmp-*")))
    planned = "?"
    if (out / JOB).is_file():
        provenance = json.loads((out / JOB).read_text())["provenance"]
        planned = -(-provenance["rows"] // provenance["shard_rows"])
    parts = [f"{shards}/{planned} shards", f"{records} records"]
    if temp:
        parts.append(f"{temp} temp file")
    if (out / MANIFEST).exists():
        parts.append("manifest")
    return ", ".join(parts)


def sorted_table(paths: list[Path]) -> pa.Table:
    table = pa.concat_tables([pq.read_table(p) for p in paths]).replace_schema_metadata(None)
    return table.sort_by("id").combine_chunks()


def _diff_columns(got: pa.Table, want: pa.Table) -> list[str]:
    if got.schema != want.schema:
        return [f"schema differs: {got.schema} vs {want.schema}"]
    return [f"column {name!r} differs" for name in want.column_names if not got.column(name).equals(want.column(name))]


def _generate_partial(out: Path, reference: Path) -> list[str]:
    problems = []
    expected = {s.path: s for s in read_manifest(reference).shards}
    for shard in _published_shards(out):
        try:
            got = sorted_table([shard])
        except Exception as error:  # noqa: BLE001 - any failure to read is the finding
            problems.append(f"{shard.name} is published but unreadable ({type(error).__name__}: {error})")
            continue
        if shard.name not in expected:
            problems.append(f"{shard.name} is published but the reference has no such shard")
            continue
        problems += [f"{shard.name}: {p}" for p in _diff_columns(got, sorted_table([reference / shard.name]))]
        if got.num_rows != expected[shard.name].rows:
            problems.append(f"{shard.name} has {got.num_rows} rows, the reference's has {expected.get(shard.name)}")
    for record_path in (out / RECORDS_DIR).glob("part-*.json") if (out / RECORDS_DIR).is_dir() else []:
        record = json.loads(record_path.read_text())
        shard = out / record["path"]
        if not shard.is_file() or file_sha256(shard) != record["sha256"]:
            problems.append(f"record {record_path.name} names a shard that is missing or has other bytes")
    if (out / MANIFEST).exists() and (message := verify_cli(out)):
        problems.append(f"a manifest was published but verify fails: {message}")
    return problems


def _generate_final(out: Path, reference: Path) -> list[str]:
    message = verify_cli(out)
    problems = [f"transferset verify fails: {message}"] if message is not None else []
    try:
        got_manifest, want_manifest = read_manifest(out), read_manifest(reference)
    except UserError:
        return problems  # verify said why
    got, want = sorted_table(got_manifest.shard_paths()), sorted_table(want_manifest.shard_paths())
    ids = got.column("id").to_pylist()
    source_rows = want_manifest.provenance.rows
    if len(ids) != source_rows or len(set(ids)) != len(ids):
        problems.append(f"{len(ids)} rows, {len(set(ids))} distinct ids, for {source_rows} source rows")
    problems += _diff_columns(got, want)
    strip = lambda p: {k: v for k, v in p.encode().items() if k != "created"}  # noqa: E731
    if strip(got_manifest.provenance) != strip(want_manifest.provenance):
        problems.append("provenance differs from the reference's")
    return problems + _leftovers(out)


def _leftovers(out: Path) -> list[str]:
    """Temp files a finished run left behind: harmless to readers, but after a full disk
    they are the space the user needs back."""
    temp = sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name)
    return [f"temp files left behind: {', '.join(temp)}"] if temp else []


def train_workload(transfer: Path, *, epochs: int = 2, batch_size: int = 32, checkpoint_every: int = 10) -> Workload:
    """`transferset train` from `transfer`, with dropout, --jitter and alpha < 1 so that a
    resume that lost any RNG state, momentum, schedule or batch position would differ."""

    def argv(out: Path) -> list[str]:
        return [
            "train", "--transfer", str(transfer), "--student-arg", "hidden=32", "--student-arg", "dropout=0.2",
            "--jitter", "1", "--alpha", "0.7", "--lr", "0.1", "--warmup-steps", "5",
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", "7",
            "--checkpoint-every", str(checkpoint_every), "--keep-checkpoints", "2", "--out", str(out), "--quiet",
        ]  # fmt: skip

    return Workload("train", argv, _train_landing, _train_partial, _train_final)


def _train_landing(out: Path) -> str:
    from train import checkpoint as ckpt

    if not out.is_dir() or not any(out.iterdir()):
        return "nothing written yet"
    found = ckpt.list_checkpoints(out / ckpt.CHECKPOINTS)
    parts = [f"{len(found)} checkpoints" + (f" (newest {found[-1].stem})" if found else "")]
    temp = [p for p in out.rglob(".*") if ".tmp-" in p.name]
    if temp:
        parts.append(f"{len(temp)} temp file")
    parts += [name for name in ("student.pt", "student.pt2") if (out / name).exists()]
    config = out / ckpt.CONFIG
    if config.is_file() and json.loads(config.read_text()).get("finished"):
        parts.append("finished")
    return ", ".join(parts)


def _train_partial(out: Path, reference: Path) -> list[str]:
    import torch

    from train import checkpoint as ckpt
    from transferset.errors import UserError

    problems = []
    for path in ckpt.list_checkpoints(out / ckpt.CHECKPOINTS):
        try:
            ckpt.load_checkpoint(path)
        except UserError as error:
            problems.append(f"published checkpoint {path.name} does not load: {error}")
    if (out / "student.pt").exists():
        try:
            torch.load(out / "student.pt", weights_only=True)
        except Exception as error:  # noqa: BLE001
            problems.append(f"student.pt is published but does not load ({type(error).__name__})")
    if (out / ckpt.CONFIG).exists():
        try:
            json.loads((out / ckpt.CONFIG).read_text())
        except ValueError:
            problems.append("config.json is half-written")
    return problems


def _train_final(out: Path, reference: Path) -> list[str]:
    import torch

    problems = []
    got = torch.load(out / "student.pt", weights_only=True)
    want = torch.load(reference / "student.pt", weights_only=True)
    if got.keys() != want.keys():
        return [f"student.pt holds {sorted(got)} but the reference {sorted(want)}"]
    problems += [f"student.pt tensor {name!r} differs" for name in want if not torch.equal(got[name], want[name])]
    if (out / "student.pt2").read_bytes() != (reference / "student.pt2").read_bytes():
        problems.append("student.pt2 bytes differ")

    def log(run: Path) -> list[dict]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]

    if log(out) != log(reference):
        problems.append("metrics.jsonl differs (timings aside)")
    if not json.loads((out / "config.json").read_text()).get("finished"):
        problems.append("config.json does not say finished")
    return problems + _leftovers(out)


# -- the commands that replace or delete: --overwrite, convert, verify --drop-bad ------------------


def _copy_of(original: Path) -> Callable[[Path], None]:
    def prepare(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(original, out)

    return prepare


def _replacing(landing: Callable[[Path], str]) -> Callable[[Path], str]:
    """A landing description that says when the kill hit the middle of a replacement."""
    return lambda out: ("old output half moved aside; " if (out / DISCARD).is_dir() else "") + landing(out)


def generate_overwrite_workload(source: Path, old_set: Path, **options) -> Workload:
    """`generate --overwrite` over a copy of `old_set` (a set of another configuration,
    best with many shards): a kill while the old set goes must leave a directory the
    same command recovers (issue: it left orphan shards that were refused forever)."""
    base = generate_workload(source, **options)
    old_key = json.loads((old_set / JOB).read_text())["config_fingerprint"]

    def partial(out: Path, reference: Path) -> list[str]:
        if (out / DISCARD).is_dir():
            return []  # mid-replacement: the rerun finishes removing the old set first
        job = out / JOB
        if job.is_file() and json.loads(job.read_text()).get("config_fingerprint") == old_key:
            message = verify_cli(out)  # not started replacing yet: the old set must still be whole
            return [f"the old set no longer verifies before its replacement began: {message}"] if message else []
        return _generate_partial(out, reference)

    return Workload("generate-overwrite", lambda out: [*base.argv(out), "--overwrite"], _replacing(_generate_landing), partial,
                    _generate_final, _copy_of(old_set))


def train_overwrite_workload(transfer: Path, old_run: Path, **options) -> Workload:
    """`train --overwrite` over a copy of `old_run` (a finished run of another configuration:
    config.json, checkpoints, student.pt, student.pt2). Every run starts from scratch
    (--overwrite), so the chain's last run must still equal the reference bit for bit."""
    base = train_workload(transfer, **options)
    return Workload("train-overwrite", lambda out: [*base.argv(out), "--overwrite"], _replacing(_train_landing), _train_partial,
                    _train_final, _copy_of(old_run))


def write_digits_npz(path: Path, copies: int) -> int:
    """`copies` x the bundled digits as an .npz of images [N, 8, 8] uint8 and labels [N]."""
    import numpy as np

    table = pq.read_table(DIGITS, columns=["pixels", "label"])
    pixels = table.column("pixels").combine_chunks().flatten().to_numpy().reshape(-1, 8, 8)
    labels = table.column("label").to_numpy()
    np.savez(path, images=np.concatenate([pixels] * copies), labels=np.concatenate([labels] * copies))
    return len(labels) * copies


def convert_workload(npz: Path) -> Workload:
    """`transferset convert --overwrite` of `npz` into `out/digits.parquet` (a user reruns a
    killed convert with the same flags; --overwrite because a kill after the rename
    leaves a finished file)."""
    name = "digits.parquet"

    def argv(out: Path) -> list[str]:
        return ["convert", "--npz", str(npz), "--images-key", "images", "--labels-key", "labels",
                "--row-group-rows", "64", "--overwrite", "--out", str(out / name)]

    def landing(out: Path) -> str:
        temp = [p for p in out.iterdir() if ".tmp" in p.name] if out.is_dir() else []
        return ("published" if (out / name).exists() else "nothing published") + (f", {len(temp)} temp file" if temp else "")

    def partial(out: Path, reference: Path) -> list[str]:
        if not (out / name).exists():
            return []
        try:
            got = pq.read_table(out / name)
        except Exception as error:  # noqa: BLE001
            return [f"{name} is published but unreadable ({type(error).__name__}: {error})"]
        return [] if got.equals(pq.read_table(reference / name)) else [f"{name} is published but differs from the reference"]

    def final(out: Path, reference: Path) -> list[str]:
        got, want = pq.read_table(out / name), pq.read_table(reference / name)
        return ([] if got.equals(want) else [f"{name} differs from the reference"]) + _leftovers(out)

    return Workload("convert", argv, landing, partial, final, lambda out: out.mkdir(parents=True, exist_ok=True))


def drop_bad_workload(damaged: Path, repair: Workload, good: Path) -> Workload:
    """`verify --drop-bad` over a copy of `damaged` (a set with bad shards), then the
    user's repair: `repair` (the generate that made the set) must rebuild a set equal to
    `good`. Exit 2 is how --drop-bad finishes (the set failed verification)."""

    def final(out: Path, reference: Path) -> list[str]:
        proc = start(repair.argv(out))
        stderr = proc.communicate()[1]
        if proc.returncode != 0:
            return [f"the generate that should redo the dropped shards failed ({proc.returncode}): {_last_line(stderr)}"]
        return _generate_final(out, good)

    return Workload("verify-drop-bad", lambda out: ["verify", str(out), "--drop-bad"], _generate_landing,
                    lambda out, reference: [], final, _copy_of(damaged), ok_codes=(0, 2))


def damage_shards(directory: Path, count: int = 2) -> None:
    """Flip a byte in one shard, truncate another (what --drop-bad repairs)."""
    shards = sorted(directory.glob("part-*.parquet"))[:count]
    for number, shard in enumerate(shards):
        data = bytearray(shard.read_bytes())
        if number % 2:
            shard.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[len(data) // 2] ^= 0xFF
            shard.write_bytes(bytes(data))


# -- the campaign -------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    chain: int
    at_s: float  # seconds after the process started
    landed: str  # what was on disk right after the kill
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems


@dataclass
class Campaign:
    command: str
    reference: Timing
    window: tuple[float, float]  # kill times were drawn uniformly from [window[0], window[1])
    kills: list[Kill]
    finished_before_kill: int  # runs that ended before their drawn kill time (each closes a chain)
    seconds: float

    @property
    def survived(self) -> int:
        return sum(k.survived for k in self.kills)

    def summary(self) -> str:
        return (
            f"{self.command}: {self.survived}/{len(self.kills)} kills survived "
            f"({len({k.chain for k in self.kills})} chains, {self.finished_before_kill} runs finished before their kill time; "
            f"reference run {self.reference.seconds:.1f} s, kills over [{self.window[0]:.1f}, {self.window[1]:.1f}) s; "
            f"campaign {self.seconds:.0f} s)"
        )


def run_campaign(
    workload: Workload, work: Path, *, kills: int, seed: int, window: str = "run", say: Callable[[str], None] = print, keep: bool = False
) -> Campaign:
    """Kill `workload` `kills` times (see the module docstring) under `work`."""
    if window not in ("run", "work"):
        raise ValueError(f"window must be 'run' or 'work', got {window!r}")
    started = time.monotonic()
    rng = random.Random(seed)
    reference = work / f"{workload.name}-reference"
    if workload.prepare is not None:
        workload.prepare(reference)
    timing = run_to_end(workload.argv(reference), reference, ok_codes=workload.ok_codes)
    low, high = (timing.first_write, max(timing.last_write, timing.first_write + 0.01)) if window == "work" else (0.0, timing.seconds)
    say(
        f"{workload.name}: reference run {timing.seconds:.2f} s (writes from {timing.first_write:.2f} s to "
        f"{timing.last_write:.2f} s); kills over [{low:.2f}, {high:.2f}) s"
    )

    done: list[Kill] = []
    chain_kills: list[Kill] = []
    chain, out, finished_early = 0, None, 0

    def close_chain(out: Path) -> None:
        """Rerun to the end (unless the last run already finished), compare, record."""
        problems = _checked(workload.check_final, out, reference)
        for k in chain_kills:
            k.problems += problems
            say(f"  kill {k.number:2d} (chain {k.chain}) at {k.at_s:5.2f} s: {k.landed} -> {'survived' if k.survived else 'FAILED: ' + '; '.join(k.problems)}")
        chain_kills.clear()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)

    while len(done) < kills:
        if out is None:
            chain += 1
            out = work / f"{workload.name}-chain-{chain:02d}"
            if workload.prepare is not None:
                workload.prepare(out)
        at = rng.uniform(low, high)
        proc = start(workload.argv(out))
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate()[1]
        if proc.returncode != -signal.SIGKILL:  # it finished before its kill time: the chain's result
            finished_early += 1
            if proc.returncode not in workload.ok_codes:
                for k in chain_kills:
                    k.problems.append(f"a rerun failed ({proc.returncode}): {_last_line(stderr)}")
            if chain_kills:
                close_chain(out)
            else:
                shutil.rmtree(out, ignore_errors=True)  # a run that was never killed: nothing to check
            out = None
            continue
        kill = Kill(len(done) + 1, chain, at, workload.landing(out))
        kill.problems += [f"after the kill: {p}" for p in _checked(workload.check_partial, out, reference)]
        done.append(kill)
        chain_kills.append(kill)

    if out is not None:  # the last chain: one rerun to the end
        proc = start(workload.argv(out))
        stderr = proc.communicate()[1]
        if proc.returncode not in workload.ok_codes:
            for k in chain_kills:
                k.problems.append(f"the final rerun failed ({proc.returncode}): {_last_line(stderr)}")
        close_chain(out)
    return Campaign(workload.name, timing, (low, high), done, finished_early, time.monotonic() - started)


def _checked(check: Callable[[Path, Path], list[str]], out: Path, reference: Path) -> list[str]:
    """Run a check; a check that cannot even run (a file it needs is missing) is a finding too."""
    try:
        return check(out, reference)
    except Exception as error:  # noqa: BLE001
        return [f"{check.__name__.strip('_')} could not run: {type(error).__name__}: {error}"]


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="kills per command (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: 0)")
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"comma list of {', '.join(COMMANDS)} (default: all)")
    parser.add_argument("--window", default="run", choices=("run", "work"),
                        help="run: kill times over the whole process life (default); work: only while it writes output")
    parser.add_argument("--copies", type=int, default=3, help="copies of the 1,797 digits in the source (default: 3)")
    parser.add_argument("--work", help="working directory (default: a new temporary one, deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep every run's output")
    args = parser.parse_args(argv)
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    if not commands or set(commands) - set(COMMANDS):
        parser.error(f"--commands takes {', '.join(COMMANDS)}")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        source = work / "digits.parquet"
        rows = write_digits_source(source, args.copies)
        print(f"source: {rows:,} rows of 8x8 digits; {args.kills} SIGKILLs per command, seed {args.seed}")
        if "generate" in commands:
            results.append(run_campaign(generate_workload(source), work, kills=args.kills, seed=args.seed, window=args.window, keep=args.keep))
        transfer = work / "generate-reference"
        if set(commands) - {"generate", "convert"} and not (transfer / MANIFEST).exists():  # a transfer set from a fast teacher
            run_to_end(generate_workload(source, teacher="teacher_models:tiny_a").argv(transfer), transfer)
        kill = lambda workload, offset: run_campaign(workload, work, kills=args.kills, seed=args.seed + offset,  # noqa: E731
                                                     window=args.window, keep=args.keep)
        if "train" in commands:
            results.append(kill(train_workload(transfer), 1))
        if "generate-overwrite" in commands:
            old_set = work / "old-set"  # another temperature, 50-row shards: a long list of files to move aside
            run_to_end([*generate_workload(source, teacher="teacher_models:tiny_a", shard_rows=50).argv(old_set), "-T", "5"], old_set)
            results.append(kill(generate_overwrite_workload(source, old_set), 2))
        if "train-overwrite" in commands:
            old_run = work / "old-run"
            run_to_end([*train_workload(transfer).argv(old_run), "--lr", "0.05"], old_run)
            results.append(kill(train_overwrite_workload(transfer, old_run), 3))
        if "convert" in commands:
            npz = work / "digits.npz"
            write_digits_npz(npz, args.copies * 10)
            results.append(kill(convert_workload(npz), 4))
        if "verify-drop-bad" in commands:
            fast = generate_workload(source, teacher="teacher_models:tiny_a")
            damaged = work / "damaged-set"
            shutil.rmtree(damaged, ignore_errors=True)
            shutil.copytree(transfer, damaged)
            damage_shards(damaged)
            results.append(kill(drop_bad_workload(damaged, fast, transfer), 5))
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    for result in results:
        print(result.summary())
    return 0 if all(r.survived == len(r.kills) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
