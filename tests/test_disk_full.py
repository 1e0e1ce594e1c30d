"""A full disk, a file-size limit, a read-only or unwritable output: one line, nothing half-written, resumable.

What the user must see: `transferset <cmd>: error: ...` naming the file and the
fix, exit code 2, no traceback; on disk no temp file, no shard or checkpoint
that looks finished but is not, no manifest; and the same command, rerun once
there is space, ends identical to an uninterrupted run (the checks of
benchmarks/kill_campaign.py).

How each failure is made real, as root in a sandbox:

- file-size limit: RLIMIT_FSIZE in the child (applies to root too). CPython
  ignores SIGXFSZ at startup, so a write past the limit raises OSError(EFBIG)
  even when the parent's preexec_fn leaves SIGXFSZ at its default (killing)
  disposition; both variants are run.
- disk full / read-only: a tiny tmpfs in a private mount namespace
  (`unshare --mount`), remounted read-only for EROFS. Skipped where mount
  namespaces are not allowed.
- permission denied: chmod 0o500, and, as root (whom chmod does not stop),
  `setpriv` dropping CAP_DAC_OVERRIDE so that the mode bits apply.
- `--out` under a file: ENOTDIR, refused before any work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import cli
from conftest import ROOT
from transferset.errors import UserError
from transferset.io import atomic_write, atomic_write_json, write_failure

sys.path.insert(0, str(ROOT / "benchmarks"))
import kill_campaign as kc  # noqa: E402

STEP_DELAY = 0.025  # seconds the test student sleeps per training step: room to fill the disk mid-run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Reference runs, uninterrupted: a 5-shard transfer set and a student trained on it."""
    root = tmp_path_factory.mktemp("diskfull")
    os.chmod(root, 0o755)  # the setpriv runs below lose the power to ignore mode bits
    (root / "slow_students.py").write_text(
        textwrap.dedent(
            f"""
            import time
            import torch
            from train.students import mlp

            class Slow(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, x):
                    if self.training:
                        time.sleep({STEP_DELAY})
                    return self.inner(x)

            def student(num_classes, input_shape, **kwargs):
                return Slow(mlp(num_classes, input_shape, **kwargs))
            """
        )
    )
    sys.path.insert(0, str(root))
    source = root / "digits.parquet"
    kc.write_digits_source(source, copies=1)
    gen = kc.generate_workload(source, teacher="teacher_models:tiny_a", batch_size=128, shard_rows=400)  # 5 shards of ~30 kB
    base = kc.train_workload(root / "reference-set", epochs=2, batch_size=64, checkpoint_every=5)  # 29 steps an epoch
    train = kc.Workload("train", lambda out: [*base.argv(out), "--student", "slow_students:student"], base.landing, base.check_partial, base.check_final)
    assert cli.main(gen.argv(root / "reference-set")) == 0
    assert cli.main(train.argv(root / "reference-run")) == 0
    yield {"root": root, "gen": gen, "train": train, "set": root / "reference-set", "run": root / "reference-run"}
    sys.path.remove(str(root))


def _env(root: Path) -> dict[str, str]:
    env = kc.cli_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(root)])
    return env


def _cli(argv: list[str], root: Path, *, wrapper: list[str] = (), preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([*wrapper, sys.executable, "-m", "cli", *argv], cwd=ROOT, env=_env(root), preexec_fn=preexec_fn,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The failed run's message, after checking the contract: exit 2, one line, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"transferset {command}: error: "), proc.stderr
    return proc.stderr.strip()


def _temp_files(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name]


def _assert_clean_leftovers(workload: kc.Workload, out: Path, reference: Path) -> None:
    """No temp file, nothing published that is not whole (the kill campaign's check)."""
    assert _temp_files(out) == []
    assert workload.check_partial(out, reference) == []


# -- the error itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, ["no space left to write /o/part-00003.parquet (ENOSPC); free space and rerun the same command to resume"]),
        (errno.EDQUOT, ["disk quota exceeded writing /o/part-00003.parquet", "rerun the same command to resume"]),
        (errno.EFBIG, ["/o/part-00003.parquet is larger than the file-size limit allows (EFBIG", "ulimit -f"]),
        (errno.EROFS, ["cannot write /o/part-00003.parquet: read-only file system (EROFS)", "or choose another --out"]),
        (errno.EACCES, ["cannot write /o/part-00003.parquet: permission denied (EACCES); make /o writable"]),
        (errno.ENOTDIR, ["cannot write /o/part-00003.parquet: a folder on its path is a file (ENOTDIR); choose another --out"]),
    ],
)
def test_refused_writes_become_one_line_user_errors(code, words):
    error = write_failure(OSError(code, os.strerror(code)), "/o/part-00003.parquet")
    assert isinstance(error, UserError) and "\n" not in str(error)
    for w in words:
        assert w in str(error)


def test_other_errors_stay_what_they_are():
    assert write_failure(OSError(errno.EIO, "I/O error"), "/o/x") is None  # a device fault is not the user's to fix
    assert write_failure(RuntimeError("unexpected pos"), "/o/x") is None


@contextlib.contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE on this process, briefly (CPython ignores SIGXFSZ: writes past it raise EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"old": True})
    with file_size_limit(4096), pytest.raises(UserError, match=r"config.json is larger than the file-size limit"):
        atomic_write_json(path, {"new": "x" * 10000})
    assert path.read_text() == '{\n "old": true\n}' and _temp_files(tmp_path) == []
    with pytest.raises(ZeroDivisionError):  # any other failure: re-raised as it is, temp file gone too
        atomic_write(path, lambda f: f.write(b"half") and 1 / 0)
    assert _temp_files(tmp_path) == []


def test_torch_writers_raise_one_line_errors_in_process(tmp_path):
    """torch.save / torch.export.save through a file: EFBIG is a UserError naming the file.
    (Given a path, torch.export.save's writer aborts the process from a C++ destructor when the
    disk is full: this test would then kill pytest instead of failing.)"""
    from train import checkpoint as ckpt
    from train.export import export_program, save_state_dict

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))  # ~18 kB of weights
    state = {"position": {"step": 3}, "model": model.state_dict()}
    ckpt.save_checkpoint(tmp_path / "checkpoints", state)
    with file_size_limit(8192):
        with pytest.raises(UserError, match=r"step-00000004.pt is larger than the file-size limit"):
            ckpt.save_checkpoint(tmp_path / "checkpoints", {**state, "position": {"step": 4}})
        with pytest.raises(UserError, match=r"student.pt is larger than the file-size limit"):
            save_state_dict(model, tmp_path)
        with pytest.raises(UserError, match=r"student.pt2 is larger than the file-size limit"):
            export_program(model, torch.zeros(2, 1, 8, 8), tmp_path)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000003.pt"]
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-00000003.pt")["position"] == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"] and _temp_files(tmp_path) == []


def test_shard_writer_thread_error_reaches_the_caller_as_one_line(tmp_path, setup):
    """The writer thread's EFBIG surfaces in the calling thread as the UserError; no shard, no temp."""
    from transferset.format.schema import parquet_options, provenance_of
    from transferset.writer import ShardWriter

    table = pa.concat_tables([kc.sorted_table([p]) for p in sorted(setup["set"].glob("part-*.parquet"))])
    first = sorted(setup["set"].glob("part-*.parquet"))[0]
    options = parquet_options(table.schema, provenance_of(pq.read_schema(first), str(first)))
    writer = ShardWriter(tmp_path, table.schema, options, row_group_rows=1000)
    with file_size_limit(8192), pytest.raises(UserError, match=r"part-00000.parquet is larger than the file-size limit"):
        writer.open_shard(0)
        for batch in table.to_batches(max_chunksize=100):
            writer.write(0, batch)
        writer.close_shard(0)
        writer.finish()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_rerun_deletes_temp_files_of_interrupted_writes(setup, tmp_path):
    """What a kill or a full disk mid-write leaves (temp files nobody reads) is deleted
    by the rerun: after a full disk, that is the space the rerun needs."""
    out_set = tmp_path / "set"
    _partial_set(setup["set"], out_set)
    for leftover in (".part-00003.parquet.tmp-999", "_shards/.part-00003.json.tmp-999", "._manifest.json.tmp-999", "._job.json.tmp-999"):
        (out_set / leftover).write_bytes(b"half")
    assert cli.main(setup["gen"].argv(out_set)) == 0
    assert setup["gen"].check_final(out_set, setup["set"]) == []  # includes "no temp file left"

    out_run = tmp_path / "run"
    shutil.copytree(setup["run"], out_run)
    for leftover in (".student.pt2.tmp-999", ".config.json.tmp-999", "metrics.jsonl.tmp", "checkpoints/.step-00000099.pt.tmp-999"):
        (out_run / leftover).write_bytes(b"half")
    assert cli.main(setup["train"].argv(out_run)) == 0  # already trained: writes its outputs again
    assert setup["train"].check_final(out_run, setup["run"]) == []


# -- through the CLI: file-size limit ------------------------------------------------------------


def _limit_fsize(limit: int, sigxfsz):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, sigxfsz)

    return preexec


@pytest.mark.parametrize("sigxfsz", [signal.SIG_DFL, signal.SIG_IGN], ids=["SIGXFSZ-default", "SIGXFSZ-ignored"])
def test_generate_past_the_file_size_limit_then_rerun(setup, tmp_path, sigxfsz):
    out = tmp_path / "set"
    proc = _cli(setup["gen"].argv(out), setup["root"], preexec_fn=_limit_fsize(16384, sigxfsz))  # a shard is ~30 kB
    message = _one_line_error(proc, "generate")
    assert f"{out}/part-00000.parquet is larger than the file-size limit" in message and "rerun the same command to resume" in message
    assert not list(out.glob("part-*")) and not (out / "_manifest.json").exists()
    _assert_clean_leftovers(setup["gen"], out, setup["set"])
    assert cli.main(setup["gen"].argv(out)) == 0  # the limit lifted: the same command
    assert setup["gen"].check_final(out, setup["set"]) == []


def test_train_past_the_file_size_limit_then_rerun(setup, tmp_path):
    out = tmp_path / "run"
    proc = _cli(setup["train"].argv(out), setup["root"], preexec_fn=_limit_fsize(16384, signal.SIG_DFL))  # a checkpoint is ~40 kB
    message = _one_line_error(proc, "train")
    assert f"{out}/checkpoints/step-00000005.pt is larger than the file-size limit" in message
    _assert_clean_leftovers(setup["train"], out, setup["run"])
    assert cli.main(setup["train"].argv(out)) == 0
    assert setup["train"].check_final(out, setup["run"]) == []


# -- through the CLI: a real full or read-only file system (tmpfs in a mount namespace) -------------


def _in_mount_namespace(script: str, root: Path) -> None:
    """Run `script` (sh) in a private mount namespace; skip the test where that is not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces not allowed here ({probe.stderr.decode().strip()})")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=ROOT, env=_env(root),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode == 97:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    assert proc.returncode == 0, proc.stderr


def _pages(n: int) -> int:
    return -(-n // 4096) * 4096


def _cmd(argv: list[str]) -> str:
    return " ".join(f"'{a}'" for a in [sys.executable, "-m", "cli", *argv])


def test_generate_on_a_full_disk_then_rerun(setup, tmp_path):
    """A tmpfs with room for two of the five shards: the third write fails with ENOSPC."""
    reference, mnt, saved = setup["set"], tmp_path / "disk", tmp_path / "saved"
    mnt.mkdir()
    shards = sorted(reference.glob("part-*.parquet"))
    size = _pages((reference / "_job.json").stat().st_size) + sum(_pages(p.stat().st_size) + 4096 for p in shards[:2]) + 4 * 4096
    out = mnt / "set"
    _in_mount_namespace(
        f"""
        mount -t tmpfs -o size={size} transferset-test '{mnt}' || exit 97
        {_cmd(setup["gen"].argv(out))} 2> '{tmp_path}/stderr'; echo $? > '{tmp_path}/rc'
        cp -a '{out}' '{saved}'
        """,
        setup["root"],
    )
    proc = subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()), "", (tmp_path / "stderr").read_text())
    message = _one_line_error(proc, "generate")
    assert f"no space left to write {out}/" in message and "free space and rerun the same command to resume" in message
    shutil.copytree(saved, out)  # the namespace is gone: its disk's contents, back at the same path
    assert 1 <= len(list(out.glob("part-*.parquet"))) < len(shards) and not (out / "_manifest.json").exists()
    _assert_clean_leftovers(setup["gen"], out, reference)
    assert cli.main(setup["gen"].argv(out)) == 0  # space freed: the same command finishes the set
    assert setup["gen"].check_final(out, reference) == []


def test_train_when_the_disk_fills_mid_run_then_rerun(setup, tmp_path):
    """Another process fills the disk after the first checkpoint: the next write fails with
    ENOSPC; once space is freed the same command resumes and ends bit-identical."""
    mnt, saved = tmp_path / "disk", tmp_path / "saved"
    mnt.mkdir()
    out = mnt / "run"
    _in_mount_namespace(
        f"""
        mount -t tmpfs -o size=4m transferset-test '{mnt}' || exit 97
        {_cmd(setup["train"].argv(out))} 2> '{tmp_path}/stderr' &
        while [ ! -e '{out}/checkpoints/step-00000005.pt' ] && kill -0 $! 2>/dev/null; do sleep 0.005; done
        dd if=/dev/zero of='{mnt}/filler' bs=4k 2>/dev/null
        wait $!; echo $? > '{tmp_path}/rc'
        cp -a '{out}' '{saved}'
        """,
        setup["root"],
    )
    proc = subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()), "", (tmp_path / "stderr").read_text())
    message = _one_line_error(proc, "train")
    assert f"no space left to write {out}/checkpoints/step-" in message, message
    shutil.copytree(saved, out)
    assert "step-00000005.pt" in [p.name for p in (out / "checkpoints").iterdir()]
    _assert_clean_leftovers(setup["train"], out, setup["run"])
    assert cli.main(setup["train"].argv(out)) == 0
    assert setup["train"].check_final(out, setup["run"]) == []


def _partial_set(reference: Path, out: Path) -> None:
    """A transfer set as a killed generate leaves it: two shards done, no manifest."""
    shutil.copytree(reference, out)
    for name in ("part-00002", "part-00003", "part-00004"):
        (out / f"{name}.parquet").unlink()
        (out / "_shards" / f"{name}.json").unlink()
    (out / "_manifest.json").unlink()


def test_read_only_output_then_rerun(setup, tmp_path):
    """generate resuming into a read-only set, and train into a read-only disk: one line each."""
    mnt, saved = tmp_path / "disk", tmp_path / "saved"
    mnt.mkdir()
    _partial_set(setup["set"], tmp_path / "partial")
    out_set, out_run = mnt / "set", mnt / "run"
    _in_mount_namespace(
        f"""
        mount -t tmpfs -o size=4m transferset-test '{mnt}' || exit 97
        cp -a '{tmp_path}/partial' '{out_set}'
        mount -o remount,ro '{mnt}' || exit 97
        {_cmd(setup["gen"].argv(out_set))} 2> '{tmp_path}/gen.stderr'; echo $? > '{tmp_path}/gen.rc'
        {_cmd(setup["train"].argv(out_run))} 2> '{tmp_path}/train.stderr'; echo $? > '{tmp_path}/train.rc'
        cp -a '{out_set}' '{saved}'
        """,
        setup["root"],
    )
    for command, out in (("gen", out_set), ("train", out_run)):
        proc = subprocess.CompletedProcess([], int((tmp_path / f"{command}.rc").read_text()), "", (tmp_path / f"{command}.stderr").read_text())
        message = _one_line_error(proc, "generate" if command == "gen" else "train")
        assert f"cannot write {out}" in message and "read-only file system (EROFS); remount it writable" in message, message
    shutil.copytree(saved, out_set)
    assert sorted(p.name for p in out_set.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert cli.main(setup["gen"].argv(out_set)) == 0  # writable again: the same command finishes the set
    assert setup["gen"].check_final(out_set, setup["set"]) == []


# -- through the CLI: an unwritable output directory ----------------------------------------------


def _without_root_powers() -> list[str]:
    """A command prefix under which chmod applies: none for a normal user; for root,
    setpriv without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (skip if unavailable)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv(1): chmod cannot make a directory unwritable")
    wrapper = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if subprocess.run([*wrapper, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return wrapper


def test_output_under_a_file(setup, tmp_path, capsys):
    """`--out some-file/out`: refused in one line before any work (as root too)."""
    (tmp_path / "a-file").write_text("not a folder")
    for workload, command in ((setup["gen"], "generate"), (setup["train"], "train")):
        out = tmp_path / "a-file" / "out"
        assert cli.main(workload.argv(out)) == 2
        err = capsys.readouterr().err
        assert err == f"transferset {command}: error: cannot write {out}: a folder on its path is a file (ENOTDIR); choose another --out\n"


def test_unwritable_output_then_rerun(setup, tmp_path):
    wrapper = _without_root_powers()
    os.chmod(tmp_path, 0o755)
    out_set = tmp_path / "set"
    _partial_set(setup["set"], out_set)
    locked = tmp_path / "locked"
    locked.mkdir()
    out_run = locked / "run"
    os.chmod(out_set, 0o500)  # a set being resumed whose directory lost its write permission
    os.chmod(locked, 0o500)  # a new run under a directory the user may not write
    try:
        gen = _cli(setup["gen"].argv(out_set), setup["root"], wrapper=wrapper)
        train = _cli(setup["train"].argv(out_run), setup["root"], wrapper=wrapper)
    finally:
        os.chmod(out_set, 0o755)
        os.chmod(locked, 0o755)
    message = _one_line_error(gen, "generate")
    assert f"cannot write {out_set}/" in message and f"permission denied (EACCES); make {out_set} writable" in message, message
    message = _one_line_error(train, "train")
    assert f"cannot write {out_run}: permission denied (EACCES); make {locked} writable" in message, message
    _assert_clean_leftovers(setup["gen"], out_set, setup["set"])
    assert cli.main(setup["gen"].argv(out_set)) == 0
    assert setup["gen"].check_final(out_set, setup["set"]) == []
