"""float16 vs float32 storage of soft targets: what is lost, what is saved.

    python benchmarks/bench_storage.py

Trains two small MNIST teachers briefly (so logits have realistic scale and
confidence), combines them both ways at T = 1 and T = 20 exactly as `generate`
does, stores the target logits through the same Parquet options in float16 and
float32, reads them back, and reports KL(float32 distribution || stored
distribution) at the stored T, and bytes per row of the logits column.
The figures behind the float16 default are in docs/format.md.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transferset.combine import combine, normalised_weights  # noqa: E402
from transferset.format.codecs.dense import fixed_floats  # noqa: E402
from transferset.format.provenance import Provenance  # noqa: E402
from transferset.format.schema import parquet_options  # noqa: E402

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"


def idx(name: str) -> np.ndarray:
    data = gzip.open(MNIST / name).read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def teacher(seed: int, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for epoch in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def kl(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    p = np.exp(p_log)
    return (p * (p_log - q_log)).sum(-1)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def main() -> None:
    x_train = torch.from_numpy(idx("train-images-idx3-ubyte.gz").astype(np.float32) / 255)
    y_train = torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    x_test = torch.from_numpy(idx("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255)
    nets = [teacher(s, x_train[:20000], y_train[:20000]) for s in (1, 2)]
    with torch.inference_mode():
        members = torch.stack([n(x_test) for n in nets])  # (K, N, C)
    print(f"teacher logits: |z| max {members.abs().max():.1f}, mean spread (max - min) {(members.max(-1).values - members.min(-1).values).mean():.1f}")
    print(f"{'combine':10} {'T':>4} {'dtype':8} {'mean KL':>10} {'max KL':>10} {'B/row':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("geometric", "arithmetic"):
            for T in (1.0, 20.0):
                target = combine(members, method, T, normalised_weights(None, 2)).numpy()
                exact = log_softmax(target.astype(np.float64) / T)
                for dtype in ("float32", "float16"):
                    column = fixed_floats(target, dtype)
                    schema = pa.schema([pa.field("logits", column.type, nullable=False)])
                    path = Path(tmp) / f"{method}-{T}-{dtype}.parquet"
                    provenance = Provenance(target_kind="dense", num_classes=target.shape[1], temperature=T, combine=method,
                                            storage_dtype=dtype, teachers=[{}], sources=[{}], input={})
                    pq.write_table(pa.table([column], schema=schema), path, **parquet_options(schema, provenance))
                    back = pq.read_table(path)["logits"].combine_chunks().flatten().to_numpy().reshape(target.shape)
                    stored = log_softmax(back.astype(np.float64) / T)
                    d = kl(exact, stored)
                    print(f"{method:10} {T:4g} {dtype:8} {d.mean():10.2e} {d.max():10.2e} {path.stat().st_size / len(target):7.1f}")


if __name__ == "__main__":
    main()
