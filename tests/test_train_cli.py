"""`transferset train` and `transferset eval` end to end, as a user runs them.

The fixtures are tiny learnable problems: 6x6 "images" of 4-bit pixels and a
fixed linear teacher; the transfer set stores that teacher's logits (geometric:
the logits themselves; arithmetic: T * log softmax(z / T)), shifted to max 0, in
the generator's schema and manifest. Labels are the teacher's argmax, some null.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import cli
from conftest import ROOT, TESTS
from transferset.format import schema
from transferset.format.codecs.dense import storage_numpy_dtype
from transferset.format.provenance import Provenance
from transferset.inputs import InputSpec
from transferset.format.manifest import MANIFEST, ShardRecord, shard_name, write_manifest
from transferset.io import file_sha256

SIDE = 6
C = 4
SPEC = InputSpec(columns=("pixels",), shape=(1, SIDE, SIDE), scale=1 / 16)


def _teacher_logits(pixels: np.ndarray) -> np.ndarray:
    """A fixed teacher: float64 [N, C], logit k grows with the brightness of quadrant k."""
    images = pixels.reshape(-1, SIDE, SIDE).astype(np.float64) / 16
    h = SIDE // 2
    quadrants = [images[:, :h, :h], images[:, :h, h:], images[:, h:, :h], images[:, h:, h:]]
    return np.stack([(q.mean(axis=(1, 2)) - 0.5) * 8 for q in quadrants], axis=1)


def _pixels(n: int, seed: int) -> np.ndarray:
    """uint8 [N, 36]: noise in 0..11, one random quadrant brightened by 4 (so the classes are learnable)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 12, (n, SIDE, SIDE))
    h = SIDE // 2
    for i, quadrant in enumerate(rng.integers(0, C, n)):
        r, c = divmod(int(quadrant), 2)
        images[i, r * h : (r + 1) * h, c * h : (c + 1) * h] += 4
    return images.reshape(n, -1).astype(np.uint8)


def _pixel_column(pixels: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), SIDE * SIDE)


def build_transfer_set(
    directory: Path,
    *,
    rows: int = 157,
    combine: str = "geometric",
    temperature: float = 2.0,
    labelled_every: int | None = 3,
    shard_rows: int = 64,
    row_group_rows: int = 23,
    storage_dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """A transfer set in the generator's format; every `labelled_every`-th row has a label (None: no labels)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pixels = _pixels(rows, seed)
    z = _teacher_logits(pixels)
    if combine == "geometric":
        target = z
    else:
        shifted = z / temperature - (z / temperature).max(axis=1, keepdims=True)
        target = temperature * (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
    target = (target - target.max(axis=1, keepdims=True)).astype(storage_numpy_dtype(storage_dtype))
    labels = z.argmax(axis=1).astype(np.int64)
    keep = np.zeros(rows, bool) if labelled_every is None else (np.arange(rows) % labelled_every == 0)
    provenance = Provenance(
        target_kind="dense", num_classes=C, temperature=temperature, combine=combine, storage_dtype=storage_dtype,
        teachers=[{"name": "linear-fixture", "format": "fixture", "sha256": "0" * 64, "weight": 1.0}],
        sources=[{"path": "fixture"}], input=SPEC.to_dict(), class_names=["zero", "one", "two", "three"],
    )
    input_field = pa.field("pixels", pa.list_(pa.field("element", pa.uint8(), nullable=False), SIDE * SIDE), nullable=False)
    target_schema = schema.target_schema(provenance, [input_field])
    records = []
    for index, start in enumerate(range(0, rows, shard_rows)):
        part = slice(start, min(start + shard_rows, rows))
        n = part.stop - part.start
        table = pa.table(
            {
                schema.ID: pa.array([f"r{i}" for i in range(part.start, part.stop)]),
                schema.SOURCE: pa.array(["fixture"] * n),
                schema.LABEL: pa.array(labels[part], mask=~keep[part], type=pa.int32()),
                schema.LOGITS: pa.FixedSizeListArray.from_arrays(pa.array(target[part].reshape(-1)), C),
                "pixels": _pixel_column(pixels[part]),
            },
            schema=target_schema,
        )
        path = directory / shard_name(index)
        pq.write_table(table, path, row_group_size=row_group_rows)
        records.append(ShardRecord(path.name, index, n, int(keep[part].sum()), path.stat().st_size, file_sha256(path)))
    write_manifest(directory, provenance, records)
    return directory


def write_labelled_parquet(path: Path, rows: int = 101, seed: int = 99, label_offset: int = 0) -> Path:
    """Labelled Parquet with the transfer set's input column: eval data, or --data training data."""
    pixels = _pixels(rows, seed)
    labels = _teacher_logits(pixels).argmax(axis=1) + label_offset
    pq.write_table(pa.table({"pixels": _pixel_column(pixels), "label": pa.array(labels, type=pa.int64())}), path, row_group_size=40)
    return path


def run_inprocess(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


FAST = ["--epochs", "2", "--batch-size", "16", "--student-arg", "hidden=32", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "geometric": build_transfer_set(root / "geo"),
        "arithmetic": build_transfer_set(root / "arith", combine="arithmetic", storage_dtype="float16"),
        "unlabelled": build_transfer_set(root / "unl", labelled_every=None),
        "eval": write_labelled_parquet(root / "test.parquet"),
        "eval_bad_labels": write_labelled_parquet(root / "bad.parquet", rows=13, label_offset=C),
        "root": root,
    }


# -- the main path, in a fresh interpreter --------------------------------------------------


def test_train_from_transfer_set_never_loads_a_teacher_then_eval(tmp_path, data):
    """Part 1 and the user's flow: train (subprocess, teacher module must stay unimported),
    outputs, metrics, the exported program as a teacher-shaped module, then eval."""
    wrapper = tmp_path / "run_train.py"
    wrapper.write_text(
        textwrap.dedent(
            """
            import sys
            import cli
            code = cli.main(sys.argv[1:])
            loaded = sorted(m for m in sys.modules if m == "transferset.teachers" or m.startswith("transferset.teachers."))
            assert not loaded, f"training imported {loaded}"
            assert "transferset.generate" not in sys.modules
            sys.exit(code)
            """
        )
    )
    out = tmp_path / "run"
    env_path = f"{ROOT}:{TESTS}"
    proc = subprocess.run(
        [sys.executable, str(wrapper), "train", "--transfer", str(data["geometric"]), "--student", "train.students:mlp",
         "--student-arg", "hidden=64,32", "--alpha", "0.9", "--epochs", "3", "--batch-size", "16", "--lr", "0.3",
         "--eval", str(data["eval"]), "--out", str(out), "--json"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=env_path), timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert final["epoch"] == 3 and final["step"] == 3 * 10  # ceil(157 / 16) = 10 batches per epoch
    assert final["accuracy"] > 0.6, final  # 4 classes: chance is ~0.25
    assert 0 <= final["ece"] <= 1 and final["nll"] > 0 and final["errors"] == round((1 - final["accuracy"]) * 101)

    for name in ("student.pt", "student.pt2", "config.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["accuracy"] == final["accuracy"]
    config = json.loads((out / "config.json").read_text())
    assert config["finished"] is True
    assert config["resolved"]["input"] == SPEC.to_dict() and config["resolved"]["num_classes"] == C
    assert config["resolved"]["class_names"] == ["zero", "one", "two", "three"]
    assert config["resolved"]["temperature"] == 2.0 and config["config"]["alpha"] == 0.9
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000020.pt", "step-00000030.pt"]

    # student.pt2: loadable without the student's code, dynamic batch, same logits as the state dict.
    program = torch.export.load(str(out / "student.pt2")).module()
    from train.students import mlp

    student = mlp(num_classes=C, input_shape=(1, SIDE, SIDE), hidden=(64, 32))
    student.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    student.eval()
    for batch in (1, 5, 33):
        x = torch.rand(batch, 1, SIDE, SIDE)
        assert torch.allclose(program(x), student(x), atol=1e-6)

    # eval: no input flags; --json parses; the same numbers as the last epoch.
    proc = subprocess.run([sys.executable, "-m", "cli", "eval", str(out), "--data", str(data["eval"]), "--json"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=env_path), timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    for key in ("accuracy", "errors", "nll", "ece", "per_class_errors"):
        assert metrics[key] == pytest.approx(final[key] if key in final else final["eval"][str(data["eval"])][key], rel=1e-6), key
    assert sum(metrics["per_class_errors"]) == metrics["errors"] and sum(metrics["per_class_rows"]) == 101


def test_eval_on_transfer_set_reports_agreement_and_class_bias(tmp_path, data, capsys):
    out = tmp_path / "run"
    code, _, err = run_inprocess(capsys, "train", "--transfer", data["geometric"], *FAST, "--out", out)
    assert code == 0, err
    code, stdout, err = run_inprocess(capsys, "eval", out, "--data", data["geometric"], "--json")
    assert code == 0, err
    plain = json.loads(stdout)
    assert plain["rows"] == 157 and plain["labelled"] == 53  # every 3rd row of 157
    assert 0 <= plain["agreement"] <= 1 and plain["class_bias"] is None

    code, stdout, err = run_inprocess(capsys, "eval", out, "--data", data["geometric"], "--json", "--class-bias", "two=100")
    biased = json.loads(stdout)
    assert biased["class_bias"] == {"2": 100.0}
    # a huge bias makes every prediction class 2: errors are exactly the rows labelled otherwise
    assert biased["errors"] == biased["labelled"] - biased["per_class_rows"][2]
    assert biased["per_class_errors"][2] == 0

    code, stdout, err = run_inprocess(capsys, "eval", out, "--data", data["eval"])  # human-readable
    assert code == 0 and "accuracy" in stdout and "errors per class: zero:" in stdout


def test_train_on_plain_labelled_data_and_cnn_with_jitter(tmp_path, data, capsys):
    out = tmp_path / "baseline"
    train_file = write_labelled_parquet(tmp_path / "train.parquet", rows=131, seed=5)
    code, stdout, err = run_inprocess(
        capsys, "train", "--data", train_file, "--input-column", "pixels", "--input-shape", f"1,{SIDE},{SIDE}",
        "--input-scale", "1/16", "--label-column", "label", "--student", "train.students:cnn",
        "--student-arg", "channels=4,8", "--student-arg", "hidden=16", "--jitter", "1",
        "--optimizer", "adamw", "--lr", "0.01", "--warmup-fraction", "0.2", "--grad-clip", "1.0",
        "--epochs", "2", "--batch-size", "32", "--eval", data["eval"], "--out", out, "--json", "--quiet",
    )
    assert code == 0, err
    final = json.loads(stdout)
    assert final["train_soft"] == 0.0 and final["train_hard"] == pytest.approx(final["train_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["input"]["columns"] == ["pixels"] and config["resolved"]["num_classes"] == C
    code, stdout, err = run_inprocess(capsys, "eval", out, "--data", data["eval"], "--json")
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == pytest.approx(final["accuracy"])


def test_different_temperature_on_geometric_targets_and_mse(tmp_path, data, capsys):
    code, stdout, err = run_inprocess(capsys, "train", "--transfer", data["geometric"], *FAST, "--epochs", "1",
                                      "--temperature", "5", "--loss", "mse", "--alpha", "0.5", "--out", tmp_path / "r", "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]["temperature"] == 5.0


def test_existing_run_dir_rules(tmp_path, data, capsys):
    out = tmp_path / "run"
    args = ["train", "--transfer", data["geometric"], *FAST, "--epochs", "1", "--out", out]
    assert run_inprocess(capsys, *args)[0] == 0
    # same command again: already trained, resumes at the end, rewrites the outputs
    code, _, err = run_inprocess(capsys, *args)
    assert code == 0, err
    # another config: refused, naming what changed; --overwrite replaces it
    code, _, err = run_inprocess(capsys, *args, "--lr", "0.2")
    assert code == 2 and "different configuration (changed: --lr)" in err and "--overwrite" in err
    code, _, err = run_inprocess(capsys, *args, "--lr", "0.2", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 0.2
    # --resume with a checkpoint from another config
    code, _, err = run_inprocess(capsys, *args, "--resume")
    assert code == 2 and "--resume: the checkpoint was written by a different configuration (changed: --lr)" in err
    # a directory that is not a run
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_inprocess(capsys, "train", "--transfer", data["geometric"], *FAST, "--out", other)
    assert code == 2 and "not a transferset run" in err


# -- bad input: one line, exit code 2, no traceback --------------------------------------------------


def _bad_inputs(data, tmp_path):
    geo, arith, unl = data["geometric"], data["arithmetic"], data["unlabelled"]
    empty = tmp_path / "empty"
    empty.mkdir()
    future = build_transfer_set(tmp_path / "future", rows=20)
    manifest = json.loads((future / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (future / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "wrong_size.py").write_text(
        "import torch\n\ndef student(num_classes, input_shape):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 7))\n"
    )
    return [
        (["--transfer", tmp_path / "missing"], "does not exist"),
        (["--transfer", empty], f"not a transfer set (no {MANIFEST})"),
        (["--transfer", future], "schema version 99 is not supported"),
        (["--transfer", geo, "--student", "wrong_size:student"], "outputs 7 logits per row but the data has 4 classes"),
        (["--transfer", geo, "--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
        (["--transfer", unl, "--alpha", "0.9"], "has no labelled rows; use --alpha 1"),
        (["--transfer", arith, "--loss", "mse"], "--loss mse matches logits, but this transfer set stores an arithmetic mean"),
        (["--transfer", arith, "--temperature", "4"], "--temperature 4.0 differs from the transfer set's T=2.0"),
        (["--transfer", geo, "--lr", "0", "--epochs", "0", "--batch-size", "-1"],
         "--lr must be a positive number, got 0.0; --epochs must be a positive integer, got 0; --batch-size must be a positive integer, got -1"),
        (["--transfer", geo, "--eval", data["eval_bad_labels"]], "in column 'label' is outside [0, 4)"),
        (["--transfer", geo, "--input-shape", "1,6,6"], "--input-shape: the transfer set's provenance defines its inputs"),
        (["--data", data["eval"], "--input-shape", "1,6,6", "--input-scale", "1/16", "--alpha", "0.5"], "--data trains on hard labels only"),
        (["--transfer", geo, "--device", "cuda"], "no GPU is visible"),
        (["--transfer", geo, "--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA device"),
        (["--transfer", geo, "--optimizer", "lion"], "unknown --optimizer 'lion'"),
    ]


def test_bad_input_is_one_line_exit_2(tmp_path, data, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    for extra, message in _bad_inputs(data, tmp_path):
        # defaults first: a later flag wins, so a case can override them
        code, _, err = run_inprocess(capsys, "train", "--epochs", "1", "--quiet", "--out", tmp_path / "out", *extra)
        assert code == 2, (extra, err)
        assert message in err, (extra, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err


def test_eval_bad_input(tmp_path, data, capsys):
    code, _, err = run_inprocess(capsys, "eval", tmp_path, "--data", data["eval"])
    assert code == 2 and "is not a training run" in err
    out = tmp_path / "run"
    assert run_inprocess(capsys, "train", "--transfer", data["geometric"], *FAST, "--epochs", "1", "--out", out)[0] == 0
    code, _, err = run_inprocess(capsys, "eval", out, "--data", data["eval_bad_labels"])
    assert code == 2 and "outside [0, 4)" in err and err.count("\n") == 1
    code, _, err = run_inprocess(capsys, "eval", out, "--data", data["eval"], "--class-bias", "9=1")
    assert code == 2 and "--class-bias '9=1': class must be 0..3" in err
    (out / "student.pt").unlink()
    code, _, err = run_inprocess(capsys, "eval", out, "--data", data["eval"])
    assert code == 2 and "has not finished" in err


def test_bad_input_through_a_real_subprocess(tmp_path, data):
    """The same contract as users see it: no traceback, exit code 2, one line."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{TESTS}")
    proc = subprocess.run([sys.executable, "-m", "cli", "train", "--transfer", str(data["unlabelled"]), "--alpha", "0.5",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "transferset train: error: --alpha 0.5 asks for a hard-label term but the transfer set has no labelled rows; use --alpha 1"
    ]


def test_help_does_not_import_torch():
    code = "import sys, cli\ntry:\n    cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--student-arg" in proc.stdout and "--checkpoint-every" in proc.stdout


def test_exported_student_is_accepted_by_generate_as_a_teacher(tmp_path, data, capsys):
    """student.pt2 -> `transferset generate --teacher` -> targets equal the student's own logits."""
    out = tmp_path / "run"
    assert run_inprocess(capsys, "train", "--transfer", data["geometric"], *FAST, "--epochs", "1", "--out", out)[0] == 0
    code, _, err = run_inprocess(
        capsys, "generate", "--teacher", out / "student.pt2", "--source", data["eval"], "--input-column", "pixels",
        "--input-shape", f"1,{SIDE},{SIDE}", "--input-scale", "1/16", "--storage-dtype", "float32", "--out", tmp_path / "ts2", "--quiet",
    )
    assert code == 0, err
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "ts2").glob("part-*.parquet")))
    x = torch.from_numpy(np.stack(table["pixels"].to_numpy(zero_copy_only=False)).astype(np.float32) / 16).view(-1, 1, SIDE, SIDE)
    from train.students import mlp

    student = mlp(num_classes=C, input_shape=(1, SIDE, SIDE), hidden=(32,))
    student.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    with torch.no_grad():
        z = student.eval()(x)
    stored = torch.from_numpy(np.stack(table["logits"].to_numpy(zero_copy_only=False)))
    assert torch.allclose(stored, z - z.max(dim=1, keepdim=True).values, atol=1e-5)


def test_warmup_cosine_schedule():
    from train.optim import resolve_warmup, warmup_cosine

    lrs = [warmup_cosine(step, total_steps=20, warmup_steps=4) for step in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # strictly decaying after warm-up
    assert lrs[12] == pytest.approx(0.5)  # half-way through the decay: cos(pi/2)
    assert warmup_cosine(20, total_steps=20, warmup_steps=4) == pytest.approx(0.0)
    assert warmup_cosine(20, total_steps=20, warmup_steps=4, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert resolve_warmup(100, None, 0.15) == 15 and resolve_warmup(100, 7, None) == 7 and resolve_warmup(10, 50, None) == 10
    assert resolve_warmup(100, None, None) == 5 and resolve_warmup(100, 0, None) == 0  # the default fraction; 0 steps: off


def test_config_defaults_agree_with_optim():
    """config.py repeats the optimiser defaults so that it needs no torch: keep them equal."""
    from train.config import TrainConfig
    from train.optim import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, OPTIMIZERS

    for name in OPTIMIZERS:
        cfg = TrainConfig(optimizer=name)
        assert (cfg.resolved_lr, cfg.resolved_weight_decay) == (DEFAULT_LR[name], DEFAULT_WEIGHT_DECAY[name])
    import train.config
    import train.optim

    assert (train.config.DEFAULT_GRAD_CLIP, train.config.DEFAULT_WARMUP_FRACTION) == (train.optim.DEFAULT_GRAD_CLIP, train.optim.DEFAULT_WARMUP_FRACTION)
    assert TrainConfig().grad_clip == train.optim.DEFAULT_GRAD_CLIP


def test_exporting_the_same_weights_twice_gives_the_same_bytes(tmp_path, monkeypatch):
    """A teacher's sha256 is part of a transfer set's configuration: re-exporting an
    unchanged student must not change it (torch.export names the archive's folder
    after the file's stem, so the temp file must carry the final name)."""
    import torch

    from train.export import export_program

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    first = export_program(model, torch.zeros(2, 1, 2, 2), a).read_bytes()
    monkeypatch.setattr("os.getpid", lambda: 424242)  # a later process exporting the same weights
    assert export_program(model, torch.zeros(2, 1, 2, 2), b).read_bytes() == first
    assert [p.name for p in a.iterdir()] == ["student.pt2"]
