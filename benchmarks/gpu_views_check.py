"""GPU check of stored views (run from the repository root on a machine with CUDA; ~1 min):

    python benchmarks/gpu_views_check.py

1. replay on CUDA: a rerun is bit-equal; single rows equal the batch; CUDA vs CPU (bit-equal or max abs diff);
2. CUDA augmentation throughput (3x224x224, random-resized-crop + hflip, params drawn on CPU included);
3. generate --views on CUDA vs CPU: the same params and top-k ids, log-probs within float32 rounding.
"""
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import numpy as np  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("no CUDA device here")
print("torch", torch.__version__, torch.cuda.get_device_name(0))
from transferset.views.expand import ViewPlan
from transferset.views.augment import parse_augment
dev = torch.device("cuda")
for spec, shape in (("random-resized-crop(224,scale=0.35-1),hflip", (3, 224, 224)), ("shift(2)", (1, 28, 28)),
                    ("random-resized-crop(28,scale=0.5-1),shift(2),hflip", (1, 28, 28)),
                    ("random-resized-crop(224,scale=0.35-1),hflip,color-jitter(brightness=0.4,contrast=0.4,saturation=0.4)", (3, 224, 224))):
    plan = ViewPlan(16, parse_augment(spec), 0)
    x = torch.rand(64, *shape)
    ids = [str(i) for i in range(64)]
    cpu, params = plan.expand({"x": x}, ids)
    g1, p1 = plan.expand({"x": x.to(dev)}, ids)
    g2, _ = plan.expand({"x": x.to(dev)}, ids)
    flat = torch.from_numpy(params.reshape(-1, params.shape[-1]))
    single = torch.cat([plan.augmentation.apply(x[i // 16:i // 16 + 1].to(dev), flat[i:i + 1]) for i in range(0, 1024, 97)])
    same_run = torch.equal(g1["x"], g2["x"])
    batch_free = torch.equal(single, g1["x"][::97])
    diff = (g1["x"].cpu() - cpu["x"]).abs().max().item()
    bits = torch.equal(g1["x"].cpu(), cpu["x"])
    print(f"{spec}: params equal {np.array_equal(p1, params)}; cuda rerun bit-equal {same_run}; cuda single rows = batch {batch_free}; "
          f"cuda vs cpu bit-equal {bits}, max abs diff {diff:.3g}")
    if shape[1] == 224:
        xx = torch.rand(256, *shape, device=dev)
        ids2 = [str(i) for i in range(256)]
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(3):
            plan.expand({"x": xx}, ids2)
        torch.cuda.synchronize()
        print(f"  cuda augmentation: {3 * 256 * 16 / (time.perf_counter() - t):,.0f} views/s of 3x224x224 (params drawn on CPU included)")
# generate --views on CUDA vs CPU
from conftest import write_pixels_source
import cli  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
work = tempfile.mkdtemp()
rng = np.random.default_rng(0)
write_pixels_source(f"{work}/src.parquet", rng.integers(0, 16, (300, 64)).astype(np.uint8), rng.integers(0, 10, 300))
out = {}
for device in ("cpu", "cuda"):
    code = cli.main(["generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", "--source", f"{work}/src.parquet",
                     "--input-shape", "1,8,8", "--input-scale", "1/16", "--views", "4", "--augment", "random-resized-crop(8,scale=0.4-1),hflip,shift(1)",
                     "--targets", "topk:3", "--storage-dtype", "float32", "--device", device, "--batch-size", "64", "--out", f"{work}/{device}", "-q"])
    out[device] = pq.read_table(f"{work}/{device}/part-00000.parquet").sort_by("id")
    print(device, "generate rc", code)
c, g = out["cpu"], out["cuda"]
print("params equal", c["view_params"].to_pylist() == g["view_params"].to_pylist(),
      "| ids equal", c["target_token_ids"].to_pylist() == g["target_token_ids"].to_pylist(),
      "| max logprob diff", float(np.abs(np.array(c["target_logprobs"].to_pylist()) - np.array(g["target_logprobs"].to_pylist())).max()))
shutil.rmtree(work)
