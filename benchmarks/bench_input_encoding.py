"""How a transfer set stores its passed-through input columns: PLAIN vs BYTE_STREAM_SPLIT.

    python benchmarks/bench_input_encoding.py [--repeats 5]     (~1 min on 2 cores)

Each column is written alone as a shard writes it (zstd-1, no dictionary, page CRCs,
32,768-row groups) with each encoding, then read back with pyarrow; the table gives
bytes per row and the least CPU time of --repeats for writing and reading, and which encoding
`transferset.format.schema.input_encodings` picks for it. Columns:

    MNIST pixels     the 60,000 training images, uint8[784] (`transferset convert`)
    SST-2 token ids  a byte-level BPE (vocabulary 4,096) over SST-2's train sentences,
                     `convert --text --max-length 64 --truncate`: int32[64] ids and the
                     int8[64] attention / target masks (skipped without ../shared/datasets/sst2)
    features         synthetic: float32[16] and float64[16] Gaussians, int64[16] in [0, 1000),
                     uint16[784] (pixels x 200)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
DATA = ROOT.parent / "shared" / "datasets"

from transferset.format.provenance import Provenance  # noqa: E402
from transferset.format.schema import input_encodings  # noqa: E402


def mnist_pixels(work: Path) -> pa.Array:
    source = work / "mnist.parquet"
    subprocess.run([sys.executable, "-m", "cli", "convert", "--images", str(DATA / "mnist" / "train-images-idx3-ubyte.gz"),
                    "--out", str(source), "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return pq.read_table(source, columns=["pixels"]).column(0).combine_chunks()


def sst2_tokens(work: Path) -> pa.Table | None:
    if not (DATA / "sst2" / "train.tsv").exists():
        return None
    import bench_lm_distill

    sentences = bench_lm_distill.read_sentences(DATA / "sst2" / "train.tsv")
    bench_lm_distill.train_tokenizer(work / "tokenizer", sentences, 4096)
    bench_lm_distill.write_tsv(work / "train.tsv", sentences)
    source = work / "sst2.parquet"
    subprocess.run([sys.executable, "-m", "cli", "convert", "--text", str(work / "train.tsv"), "--text-field", "sentence",
                    "--tokenizer", str(work / "tokenizer"), "--max-length", "64", "--truncate", "--out", str(source), "--quiet"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return pq.read_table(source, columns=["input_ids", "attention_mask", "target_mask"])


def fixed(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def columns(work: Path) -> list[tuple[str, pa.Array, bool]]:
    """(name, column, from a token source)."""
    rng = np.random.default_rng(0)
    pixels = mnist_pixels(work)
    n = len(pixels)
    found = [("MNIST pixels uint8[784]", pixels, False)]
    tokens = sst2_tokens(work)
    if tokens is not None:
        found += [(f"SST-2 {name} {tokens.schema.field(name).type.value_type}[64]", tokens.column(name).combine_chunks(), True)
                  for name in tokens.column_names]
    found += [
        ("features float32[16]", fixed(rng.standard_normal((n, 16)).astype(np.float32)), False),
        ("features float64[16]", fixed(rng.standard_normal((n, 16))), False),
        ("features int64[16]", fixed(rng.integers(0, 1000, (n, 16))), False),
        ("pixels x 200 uint16[784]", fixed(pixels.flatten().to_numpy().astype(np.uint16).reshape(n, 784) * 200), False),
    ]
    return found


def fastest(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()  # CPU seconds: steadier than wall time on a shared machine
        fn()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| column | PLAIN B/row | split B/row | PLAIN write / read CPU us/row | split write / read CPU us/row | chosen |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, column, tokens in columns(work):
            table = pa.table({"x": column})
            n = table.num_rows
            cells = []
            for encoding in ("PLAIN", "BYTE_STREAM_SPLIT"):
                path = work / f"{encoding}.parquet"
                options = dict(compression="zstd", compression_level=1, use_dictionary=False, write_page_checksum=True,
                               column_encoding={"x.list.element": encoding}, row_group_size=32768)
                write = fastest(lambda: pq.write_table(table, path, **options), args.repeats)
                read = fastest(lambda: pq.read_table(path), args.repeats)
                cells.append((os.path.getsize(path) / n, write / n * 1e6, read / n * 1e6))
            provenance = Provenance(target_kind="dense", num_classes=10, temperature=1.0, combine="geometric", storage_dtype="float16",
                                    teachers=[{}], sources=[{}], input={"tokens": True} if tokens else {})
            chosen = "split" if input_encodings(table.schema, provenance) else "PLAIN"
            (pb, pw, pr), (sb, sw, sr) = cells
            print(f"| {name} | {pb:.1f} | {sb:.1f} | {pw:.2f} / {pr:.2f} | {sw:.2f} / {sr:.2f} | {chosen} |", flush=True)


if __name__ == "__main__":
    main()
