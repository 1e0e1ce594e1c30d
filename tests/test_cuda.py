"""The GPU paths, run for real where CUDA is visible (skipped elsewhere, e.g. in CI).

- generate on CUDA in float32 stores what the CPU stores (to float tolerance), and in
  bf16 within a bound that bf16 teachers can meet; the combine is float32 either way;
- per-token top-k on CUDA with bf16 teachers: the same supports, log-probs within bf16's error;
- train on CUDA (pinned batches, non_blocking copies) in fp32, bf16 and fp16 (with the
  gradient scaler), with DataLoader workers; a mid-epoch resume on CUDA ends where the
  uninterrupted run ends;
- views (issue 11): the stored params replay each view bit for bit on the device, and
  generate --views on the device stores the CPU's params, top-k ids and (to float
  tolerance) log-probs.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

import cli
from conftest import write_pixels_source
from text_fixtures import SENTENCES, save_tokenizer, write_jsonl

# TRANSFERSET_TEST_GPU=cpu runs the module's logic on the CPU (a dry run of the test itself).
GPU = os.environ.get("TRANSFERSET_TEST_GPU", "cuda")
pytestmark = pytest.mark.skipif(GPU == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")

TEACHERS = ["--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b"]
LM = ["--teacher", "teacher_models:tiny_lm_a", "--teacher", "teacher_models:tiny_lm_b"]


def _table(directory):
    return ds.dataset(str(directory), format="parquet", exclude_invalid_files=True).to_table().sort_by("id")


def _generate(source, out, *extra):
    assert cli.main(["generate", *TEACHERS, "--source", str(source), "--input-shape", "64", "--temperature", "2",
                     "--storage-dtype", "float32", "--out", str(out), "--quiet", *extra]) == 0
    return _table(out)


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    rng = np.random.default_rng(0)
    source = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, size=(1000, 64), dtype=np.uint8),
                                 rng.integers(0, 10, size=1000).tolist(), row_group_size=300)
    return root, source


def test_generate_on_cuda_stores_the_cpu_values(pixels):
    root, source = pixels
    cpu = _generate(source, root / "cpu", "--device", "cpu")
    gpu = _generate(source, root / "gpu", "--device", GPU)
    bf16 = _generate(source, root / "bf16", "--device", GPU, "--precision", "bf16")
    want = np.stack(cpu.column("logits").to_numpy(zero_copy_only=False))
    assert cpu.column("id").to_pylist() == gpu.column("id").to_pylist() == bf16.column("id").to_pylist()
    np.testing.assert_allclose(np.stack(gpu.column("logits").to_numpy(zero_copy_only=False)), want, atol=1e-4)
    got = np.stack(bf16.column("logits").to_numpy(zero_copy_only=False))
    assert np.abs(got - want).max() < 0.1  # bf16 teachers: ~3 significant digits on logits of size ~1
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.95


def test_per_token_topk_on_cuda_with_bf16_teachers(tmp_path):
    tokenizer = save_tokenizer(tmp_path / "tok")
    write_jsonl(tmp_path / "c.jsonl", [{"text": " " + s} for s in SENTENCES * 4])
    assert cli.main(["convert", "--text", str(tmp_path / "c.jsonl"), "--tokenizer", str(tokenizer), "--max-length", "32", "--pack",
                     "--out", str(tmp_path / "c.parquet"), "--quiet"]) == 0
    tables = {}
    for name, extra in (("cpu", ["--device", "cpu"]), ("gpu", ["--device", GPU, "--precision", "bf16"])):
        assert cli.main(["generate", *LM, "--source", str(tmp_path / "c.parquet"), "--targets", "topk:8", "--out", str(tmp_path / name),
                         "--quiet", *extra]) == 0
        tables[name] = _table(tmp_path / name)
    cpu, gpu = tables["cpu"], tables["gpu"]
    mask = np.array(cpu.column("target_mask").to_pylist()).astype(bool)  # [N, L]
    ids_cpu, ids_gpu = (np.array(t.column("target_token_ids").to_pylist()) for t in (cpu, gpu))  # [N, L, K]
    assert (ids_cpu[..., 0] == ids_gpu[..., 0])[mask].mean() > 0.9
    tail_cpu, tail_gpu = (np.array(t.column("target_tail_logmass").to_pylist(), dtype=np.float32) for t in (cpu, gpu))  # [N, L]
    assert np.isfinite(tail_gpu[mask]).all() and np.abs(tail_gpu - tail_cpu)[mask].max() < 0.1


@pytest.mark.parametrize("precision,workers", [("fp32", "0"), ("bf16", "2"), ("fp16", "0")])
def test_train_on_cuda(pixels, precision, workers):
    root, source = pixels
    transfer = root / "train-set"
    if not transfer.exists():
        _generate(source, transfer, "--device", GPU)
    out = root / f"run-{precision}"
    assert cli.main(["train", "--transfer", str(transfer), "--student", "train.students:mlp", "--student-arg", "hidden=64",
                     "--epochs", "2", "--batch-size", "64", "--device", GPU, "--precision", precision, "--workers", workers,
                     "--out", str(out), "--quiet"]) == 0
    state = torch.load(out / "student.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_resume_on_cuda_ends_where_the_uninterrupted_run_ends(pixels):
    from train import checkpoint as ckpt

    root, source = pixels
    transfer = root / "resume-set"
    _generate(source, transfer, "--device", GPU)
    args = ["train", "--transfer", str(transfer), "--student", "train.students:mlp", "--student-arg", "hidden=64", "--epochs", "2",
            "--batch-size", "64", "--device", GPU, "--checkpoint-every", "5", "--keep-checkpoints", "100", "--quiet"]
    assert cli.main([*args, "--out", str(root / "full")]) == 0
    checkpoint = ckpt.checkpoint_path(root / "full" / "checkpoints", 20)  # epoch 2, batch 4 of 16
    assert cli.main([*args, "--resume", str(checkpoint), "--out", str(root / "resumed")]) == 0
    want = torch.load(root / "full" / "student.pt", weights_only=True)
    got = torch.load(root / "resumed" / "student.pt", weights_only=True)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec,shape", [("shift(2)", (1, 28, 28)), ("random-resized-crop(28,scale=0.5-1),shift(2),hflip", (1, 28, 28)),
                                        ("random-resized-crop(32,scale=0.35-1),hflip,color-jitter(brightness=0.4,contrast=0.4,saturation=0.4)",
                                         (3, 32, 32))])
def test_views_replay_on_the_device_bit_for_bit(spec, shape):
    """Issue 11: the stored params replay the view the teachers saw. On the device: the same
    params as on the CPU, a rerun bit-equal, each row alone bit-equal to its batch; across
    devices, equal to float rounding (interpolation kernels differ)."""
    from transferset.views.augment import parse_augment
    from transferset.views.expand import ViewPlan

    plan, device = ViewPlan(8, parse_augment(spec), 0), torch.device(GPU)
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(0))
    ids = [str(i) for i in range(16)]
    cpu, params = plan.expand({"x": x}, ids)
    first, device_params = plan.expand({"x": x.to(device)}, ids)
    again, _ = plan.expand({"x": x.to(device)}, ids)
    np.testing.assert_array_equal(device_params, params)
    assert torch.equal(first["x"], again["x"])
    flat = torch.from_numpy(params.reshape(-1, params.shape[-1]))
    for view in range(0, 128, 13):  # row view // 8 alone, replayed from its stored params
        alone = plan.augmentation.apply(x[view // 8:view // 8 + 1].to(device), flat[view:view + 1])
        assert torch.equal(alone[0], first["x"][view])
    torch.testing.assert_close(first["x"].cpu(), cpu["x"], rtol=0, atol=1e-5)


def test_generate_views_on_the_device_stores_the_cpu_targets(pixels, tmp_path):
    _, source = pixels
    views = ["--input-shape", "1,8,8", "--input-scale", "1/16", "--views", "4", "--augment", "random-resized-crop(8,scale=0.4-1),hflip,shift(1)",
             "--targets", "topk:3", "--batch-size", "64"]
    cpu = _generate(source, tmp_path / "cpu", *views, "--device", "cpu")
    dev = _generate(source, tmp_path / "dev", *views, "--device", GPU)
    assert dev["view_params"].to_pylist() == cpu["view_params"].to_pylist()
    assert dev["target_token_ids"].to_pylist() == cpu["target_token_ids"].to_pylist()
    np.testing.assert_allclose(np.array(dev["target_logprobs"].to_pylist()), np.array(cpu["target_logprobs"].to_pylist()), atol=1e-4)
