import os
import subprocess
import sys
from pathlib import Path

# One torch thread per test process and per command a test starts (they inherit the
# environment): pytest-xdist runs two test processes on CI's two cores, and two
# 2-thread processes on 2 cores ran ~20x slower per step than 1-thread ones.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)


def run_cli(*args, cwd=None, check=False, timeout=300):
    """Run `transferset ARGS` in a fresh interpreter, as a user would."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"transferset {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_torchrun(*args, nproc: int = 2, paths=(), env_extra: dict | None = None, wait: bool = True, timeout: int = 240):
    """`torchrun --standalone --nproc-per-node N -m cli ARGS`, as a user launches it
    (CPU: gloo; one torch thread per process). `paths` join PYTHONPATH (student modules).
    wait=False returns the Popen (text pipes) for a test that kills a rank."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), *map(str, paths), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", **(env_extra or {}))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_in_process(*args, check=False):
    """`transferset ARGS` in this process, answering like run_cli (returncode, stdout,
    stderr): for tests that run many commands, where a fresh interpreter per command
    would cost ~2 s of imports each. Keep one run_cli per feature, as a user runs it."""
    import contextlib
    import io
    from types import SimpleNamespace

    import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code
    if check and code != 0:
        raise AssertionError(f"transferset {' '.join(map(str, args))} failed ({code}):\n{err.getvalue()}")
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def shared_dataset(path: Path) -> Path:
    """A file from ../shared/datasets. CI always has shared/ beside the clone, so there a
    missing file fails the test loudly; elsewhere (a clone on its own) the test skips,
    saying which file it needs."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing, but CI runs with ../shared/datasets beside the clone")
        pytest.skip(f"needs {path} (../shared/datasets beside the clone)")
    return path


def write_pixels_source(path, pixels: np.ndarray, labels=None, row_group_size=None, fixed=True):
    """A Parquet source with a `pixels` column (+ optional nullable `label`)."""
    n, d = pixels.shape
    if fixed:
        col = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), d)
    else:
        col = pa.array(list(pixels), type=pa.list_(pa.from_numpy_dtype(pixels.dtype)))
    columns = {"pixels": col}
    if labels is not None:
        columns["label"] = pa.array(labels, type=pa.int64())
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@pytest.fixture
def sources(tmp_path):
    """An odd-sized labelled source (with some null labels) and an unlabelled one."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 16, size=(517, 64), dtype=np.uint8)  # never 16: the NaN teacher stays quiet
    labels = rng.integers(0, 10, size=517).tolist()
    for i in range(0, 517, 50):
        labels[i] = None
    lab = write_pixels_source(tmp_path / "lab.parquet", pixels, labels, row_group_size=97)
    unl = write_pixels_source(tmp_path / "unl.parquet", rng.integers(0, 16, size=(203, 64), dtype=np.uint8), row_group_size=64)
    return lab, unl
