"""Language-model generate as a user runs it, against a bare teacher forward (issue 9).

    python benchmarks/bench_lm_generate.py --device cuda                 # the GPU figure
    python benchmarks/bench_lm_generate.py --device cpu --quick          # a smoke run anywhere

Builds, in --work (a temp dir by default): a word-level tokenizer of --vocab tokens, a
synthetic corpus (Zipf-distributed words, --rows documents of --length tokens),
`transferset convert --text` of it, and two random-weight Llama causal LMs (--layers x
--width) saved in bf16 with save_pretrained (safetensors) beside the tokenizer. Then, as whole processes, paired
(A B A B):

  bare       load both models (`from_pretrained`, --precision dtype, the Hugging Face
             way), read the token source with pyarrow, forward both models over the
             same batches (rows = --max-tokens // length), discard the logits
  generate   `transferset generate --teacher hf:A --teacher hf:B --targets topk:32
             --precision bf16 --max-tokens-per-batch N`: the same forwards, plus the
             float32 log-space combine over the full vocabulary, top-k with the exact tail
             on the device, the Parquet shards, checksums and manifest

and prints tokens/s of the teacher pass (model loading excluded: the bare loop times its
loop, generate reports its engine's rows/s) and of the whole process, with the ratio
generate / bare. Goal (issue 9): >= 0.9 on a GPU with bf16 teachers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

BARE = r"""
import sys, time, json
import torch, pyarrow.parquet as pq
from transformers import AutoModelForCausalLM
a, b, source, device, precision, rows = sys.argv[1:7]
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
start = time.perf_counter()
models = [AutoModelForCausalLM.from_pretrained(d, local_files_only=True, dtype=dtype).to(device).eval() for d in (a, b)]
table = pq.read_table(source, columns=["input_ids", "attention_mask"])
loaded = time.perf_counter()
ids = torch.from_numpy(table.column("input_ids").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1).astype("int64"))
mask = torch.from_numpy(table.column("attention_mask").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1).astype("int64"))
rows = int(rows)
with torch.inference_mode():
    for lo in range(0, table.num_rows, rows):
        x, m = ids[lo:lo + rows].to(device, non_blocking=True), mask[lo:lo + rows].to(device, non_blocking=True)
        for model in models:
            model(input_ids=x, attention_mask=m).logits
if device.startswith("cuda"):
    torch.cuda.synchronize()
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "loop_s": done - loaded, "tokens": int(mask.sum())}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=32768)
    p.add_argument("--targets", default="topk:32")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run on CPU)")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.vocab, args.layers, args.width, args.rows, args.length, args.max_tokens = 2000, 2, 64, 64, 64, 1024
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-lm-generate-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source, teachers = build_inputs(work, args)
    print(f"built tokenizer, corpus, source and 2 teachers in {time.perf_counter() - started:.1f} s ({work})", flush=True)
    rows = args.max_tokens // args.length
    results = {"bare": [], "generate": []}
    for repeat in range(args.repeats):
        results["bare"].append(run_bare(teachers, source, args, rows))
        results["generate"].append(run_generate(teachers, source, args, work / f"set-{repeat}"))
    report(results, args)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def build_inputs(work: Path, args) -> tuple[Path, list[Path]]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    specials = ["<pad>", "<unk>", "<eos>", "<bos>"]
    words = [f"w{i}" for i in range(args.vocab - len(specials))]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    tokenizer.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}))

    rng = np.random.default_rng(0)
    ranks = np.minimum(rng.zipf(1.2, size=(args.rows, args.length)), len(words)) - 1  # Zipf word ranks
    corpus = work / "corpus.jsonl"
    with corpus.open("w") as f:
        for row in ranks:
            f.write(json.dumps({"text": " ".join(words[i] for i in row)}) + "\n")
    source = work / "corpus.parquet"
    cli("convert", "--text", corpus, "--tokenizer", tok_dir, "--max-length", args.length, "--out", source, "--quiet")

    teachers = []
    heads = max(1, args.width // 64)
    for seed, name in ((0, "teacher-a"), (1, "teacher-b")):
        directory = work / name
        if not (directory / "config.json").exists():
            torch.manual_seed(seed)
            config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=int(2.75 * args.width),
                                 num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                                 max_position_embeddings=args.length, pad_token_id=0, bos_token_id=3, eos_token_id=2)
            with torch.device(args.device):  # random init on the device: seconds for a 1B model on a GPU
                model = LlamaForCausalLM(config)
            model.to(torch.bfloat16).save_pretrained(directory, safe_serialization=True)  # bf16 files, as models ship
            del model
            for file in tok_dir.iterdir():
                shutil.copy(file, directory / file.name)
        teachers.append(directory)
    return source, teachers


def cli(*args) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"transferset {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc.stderr


def run_bare(teachers: list[Path], source: Path, args, rows: int) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BARE, *map(str, teachers), str(source), args.device, args.precision, str(rows)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bare loop failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - started
    print(f"  bare      {out['tokens'] / out['loop_s']:>12,.0f} tokens/s (loop {out['loop_s']:.2f} s, load {out['load_s']:.1f} s, "
          f"process {out['process_s']:.1f} s)", flush=True)
    return out


def run_generate(teachers: list[Path], source: Path, args, out_dir: Path) -> dict:
    started = time.perf_counter()
    log = cli("generate", *[a for t in teachers for a in ("--teacher", f"hf:{t}")], "--source", source, "--targets", args.targets,
              "--combine", "arithmetic", "--precision", args.precision, "--device", args.device,
              "--max-tokens-per-batch", args.max_tokens, "--out", out_dir)
    process_s = time.perf_counter() - started
    rows_per_s = float(re.search(r"([\d,]+) rows/s", log).group(1).replace(",", ""))
    tokens = args.rows * args.length
    bytes_written = sum(f.stat().st_size for f in out_dir.glob("part-*.parquet"))
    shutil.rmtree(out_dir)
    out = {"tokens_per_s": rows_per_s * args.length, "process_s": process_s, "tokens": tokens, "bytes_per_token": bytes_written / tokens}
    print(f"  generate  {out['tokens_per_s']:>12,.0f} tokens/s (process {process_s:.1f} s, {out['bytes_per_token']:.1f} B/token)", flush=True)
    return out


def report(results: dict, args) -> None:
    bare = [r["tokens"] / r["loop_s"] for r in results["bare"]]
    ours = [r["tokens_per_s"] for r in results["generate"]]
    ratio = [o / b for o, b in zip(ours, bare)]
    whole = [b["process_s"] / g["process_s"] for b, g in zip(results["bare"], results["generate"])]
    print(f"\n{args.device}, 2 x Llama {args.layers}x{args.width}, V={args.vocab:,}, {args.rows:,} rows x {args.length} tokens, "
          f"{args.targets}, {args.precision}, {args.max_tokens:,} tokens per batch")
    print(f"| | bare forward | transferset generate | generate / bare |\n|---|---|---|---|")
    print(f"| teacher pass, tokens/s (median) | {statistics.median(bare):,.0f} | {statistics.median(ours):,.0f} | "
          f"{statistics.median(ratio):.3f} (runs: {', '.join(f'{r:.3f}' for r in ratio)}) |")
    print(f"| whole process, s (median) | {statistics.median(r['process_s'] for r in results['bare']):.1f} | "
          f"{statistics.median(r['process_s'] for r in results['generate']):.1f} | "
          f"{statistics.median(whole):.3f} (speed ratio) |")


if __name__ == "__main__":
    main()
