"""`transferset demo`, the README's first command, end to end through the CLI."""

from conftest import run_cli


def test_demo_runs_every_stage_and_distillation_helps(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", out, "--json", timeout=240)
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"teacher 1", "teacher 2", "teacher 3", "teacher ensemble (geometric)",
                         "student, hard labels only", "student, distilled"}
    for r in rows.values():
        assert 0.8 < r["accuracy"] <= 1.0 and r["errors"] == round((1 - r["accuracy"]) * 597)
    # The point of the product: the student taught by the transfer set (which
    # includes 900 rows without labels) beats the same net on the 300 labels.
    assert rows["student, distilled"]["accuracy"] > rows["student, hard labels only"]["accuracy"]
    assert set(result["seconds"]) == {"train teachers", "generate", "train students", "evaluate"}
    assert (out / "transfer" / "_manifest.json").exists() and (out / "logs").is_dir()
    logs = sorted((out / "logs").iterdir())  # each stage's log starts with the command it ran
    assert logs and all(p.read_text().startswith("$ transferset ") for p in logs)


def test_demo_checks_its_flags_before_touching_its_directory(tmp_path):
    from transferset.commands.demo import MARKER

    own = tmp_path / "own"
    own.mkdir()
    (own / MARKER).write_text("")
    (own / "previous-run.txt").write_text("old run")
    for flags, message in ((["--labelled", "5", "--test", "1795"], "do not fit"), (["--teachers", "0"], "at least 1 teacher")):
        proc = run_cli("demo", "--out", own, *flags)
        assert proc.returncode == 2 and message in proc.stderr
        assert (own / "previous-run.txt").exists()


def test_demo_never_deletes_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = run_cli("demo", "--out", tmp_path)
    assert proc.returncode == 2 and "was not made by the demo" in proc.stderr
    assert (tmp_path / "keep.txt").exists()
