"""transferset/gcpause.py: generate pauses the cyclic collector for its start-up only."""

import gc

import pytest

from transferset import gcpause


@pytest.fixture(autouse=True)
def restore_gc():
    was = gc.isenabled()
    gcpause._frozen = False  # each test starts as a fresh process would
    yield
    gcpause._paused = gcpause._frozen = False
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


def test_pause_then_resume_enables_and_freezes():
    gc.enable()
    gcpause.pause()
    assert not gc.isenabled()
    before = gc.get_freeze_count()
    kept = [[] for _ in range(100)]  # start-up's long-lived objects
    gcpause.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(kept)
    gcpause.resume()  # a second resume does nothing
    assert gc.isenabled()
    gcpause.pause()  # nor does a second start-up in the same process: it would freeze its garbage for good
    assert gc.isenabled()


def test_a_collector_the_caller_disabled_stays_disabled():
    gc.disable()
    gcpause.pause()
    gcpause.resume()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_generate_leaves_the_collector_running(tmp_path):
    """After a whole generate run in this process the collector is on again, whatever
    happened: also after a refused run (here, a missing source)."""
    from conftest import run_in_process

    gc.enable()
    result = run_in_process("generate", "--teacher", "bench_models:trivial", "--source", str(tmp_path / "missing.parquet"),
                          "--input-shape", "784", "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2, result.stderr
    assert gc.isenabled()
