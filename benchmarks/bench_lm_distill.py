"""Per-token distillation on real text: which sparse target kind makes the better student?

    python benchmarks/bench_lm_distill.py --work /tmp/lmstudy [--smoke]

Issue 9's study, on the SST-2 sentences in ../shared/datasets/sst2 (train.tsv for
training, dev.tsv for evaluation; text nobody here wrote), on CPU:

1. a byte-level BPE tokenizer trained on the train sentences;
2. `transferset convert --text ... --pack` of train and dev into 32-token rows;
3. a teacher ensemble of small GPT-2s (Hugging Face `GPT2LMHeadModel`, trained here
   with plain PyTorch on next-token cross-entropy, saved with `save_pretrained` plus
   the tokenizer, so the CLI loads each as `--teacher hf:DIR`);
4. `transferset generate` of one transfer set per target kind (dense, top-k, sampled)
   from the arithmetic mean of the teachers at T = 1, and one top-k set over dev for
   teacher agreement;
5. `transferset train` of one smaller GPT student (`train.students:gpt`) per kind with
   the same budget, plus a hard-label baseline (`--alpha 0`: next-token CE only);
6. `transferset eval` of each student on the dev set (NLL, perplexity, agreement with
   the teachers' top-1) and `transferset inspect --json` of each set (bytes/token),
   and the teachers' own dev NLL, computed here on the same positions.

The full plan (FULL below) is reduced to fit ~10 minutes of 2 CPU cores: the first
12,000 train sentences, 32-token rows, a 2048-token vocabulary, 2 teachers of 3 x 128,
students of 2 x 64, two student seeds. Results and the reasoning: docs/results.md.

Prints the table and writes WORK/results.json. At most 2 processes run at once,
each with 1 torch thread. `--smoke` is a tiny version (a few hundred sentences, tiny
models, 1 epoch) for the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
SST2 = REPO.parent / "shared" / "datasets" / "sst2"
LENGTH = 32  # tokens per packed row


@dataclass(frozen=True)
class Plan:
    train_sentences: int  # the first N sentences of train.tsv
    vocab: int
    teachers: int
    teacher_width: int
    teacher_layers: int
    teacher_epochs: int
    student_width: int
    student_layers: int
    student_epochs: int
    kinds: tuple[str, ...]  # soft-target kinds; the hard baseline trains on the first top-k set
    dev_sentences: int | None = None  # the first N sentences of dev.tsv (None: all 872)
    tokens_per_batch: int = 2048
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0,)  # one student per kind and seed (init and batch order)


FULL = Plan(train_sentences=12000, vocab=2048, teachers=2, teacher_width=128, teacher_layers=3, teacher_epochs=4,
            student_width=64, student_layers=2, student_epochs=3,
            kinds=("dense", "topk:8", "sampled:8", "topk:32", "sampled:32"), seeds=(0, 1))
SMOKE = Plan(train_sentences=200, vocab=300, teachers=1, teacher_width=32, teacher_layers=1, teacher_epochs=1,
             student_width=16, student_layers=1, student_epochs=1, kinds=("topk:4", "sampled:4"), dev_sentences=100,
             tokens_per_batch=512)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="work directory (created; reused files are rebuilt)")
    parser.add_argument("--data", type=Path, default=SST2, help="directory with SST-2's train.tsv and dev.tsv")
    parser.add_argument("--smoke", action="store_true", help="tiny version for the tests")
    parser.add_argument("--train-sentences", type=int, help="override the number of train sentences")
    parser.add_argument("--teacher-epochs", type=int)
    parser.add_argument("--student-epochs", type=int)
    parser.add_argument("--jobs", type=int, default=2, help="processes at once (default 2)")
    parser.add_argument("--train-teacher", type=int, help=argparse.SUPPRESS)  # internal: one teacher, in a child process
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    overrides = {"train_sentences": args.train_sentences, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs}
    plan = Plan(**{**asdict(plan), **{k: v for k, v in overrides.items() if v is not None}})
    if args.train_teacher is not None:
        return train_teacher(args.work, plan, args.train_teacher)
    return study(args.work, args.data, plan, args.jobs, args)


# --- steps -----------------------------------------------------------------------------------------------

def study(work: Path, data: Path, plan: Plan, jobs: int, args: argparse.Namespace) -> int:
    started = time.time()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no weight-loading progress bars in the output
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = round(time.time() - started, 1)
        print(f"[{timings[name]:7.1f} s] {name}", flush=True)

    sentences = read_sentences(data / "train.tsv")[: plan.train_sentences]
    write_tsv(work / "train.tsv", sentences)
    write_tsv(work / "dev.tsv", read_sentences(data / "dev.tsv")[: plan.dev_sentences])
    train_tokenizer(work / "tokenizer", sentences, plan.vocab)
    run_all([cli("convert", "--text", work / "train.tsv", "--text-field", "sentence", "--tokenizer", work / "tokenizer",
                 "--max-length", LENGTH, "--pack", "--overwrite", "--out", work / "train.parquet"),
             cli("convert", "--text", work / "dev.tsv", "--text-field", "sentence", "--tokenizer", work / "tokenizer",
                 "--max-length", LENGTH, "--pack", "--overwrite", "--out", work / "dev.parquet")], jobs)
    step("tokenizer + convert")

    run_all([[sys.executable, __file__, "--work", str(work), "--train-teacher", str(i), *passthrough(args)]
             for i in range(plan.teachers)], jobs)
    step("teachers trained")
    teacher_dirs = [work / f"teacher-{i}" for i in range(plan.teachers)]
    teacher_flags = [flag for d in teacher_dirs for flag in ("--teacher", d)]

    def generate(kind: str, source: Path, out: Path) -> list:
        return cli("generate", *teacher_flags, "--source", source, "--targets", kind, "--combine", "arithmetic",
                   "--temperature", 1, "--batch-size", 64, "--threads", 1, "--overwrite", "--out", out)

    sets = {kind: work / "sets" / kind.replace(":", "-") for kind in plan.kinds}
    dev_set = work / "sets" / "dev-topk-8"
    run_all([generate(kind, work / "train.parquet", out) for kind, out in sets.items()]
            + [generate("topk:8", work / "dev.parquet", dev_set)], jobs)
    step("transfer sets generated")

    hard_kind = next(k for k in plan.kinds if k.startswith("topk"))
    runs = {kind: (sets[kind], 1.0) for kind in plan.kinds}
    runs["hard labels"] = (sets[hard_kind], 0.0)
    trained = [(name, seed) for name in runs for seed in plan.seeds]
    run_all([cli("train", "--transfer", runs[name][0], "--student", "train.students:gpt", "--student-arg", f"width={plan.student_width}",
                 "--student-arg", f"layers={plan.student_layers}", "--alpha", runs[name][1], "--optimizer", "adamw", "--lr", plan.lr,
                 "--tokens-per-batch", plan.tokens_per_batch, "--epochs", plan.student_epochs, "--seed", seed, "--threads", 1,
                 "--quiet", "--overwrite", "--out", run_dir(work, name, seed))
             for name, seed in trained], jobs)
    step("students trained")

    evals = run_all([cli("eval", run_dir(work, name, seed), "--data", dev_set, "--json", "--quiet") for name, seed in trained], jobs)
    inspections = run_all([cli("inspect", s, "--json") for s in sets.values()], jobs)
    step("evaluated")

    teachers = [json.loads((d / "dev_metrics.json").read_text()) for d in teacher_dirs]
    ensemble = ensemble_dev_metrics(work, teacher_dirs)
    results = {
        "plan": asdict(plan), "smoke": bool(args.smoke), "timings_s": timings,
        "train": source_stats(work / "train.parquet"), "dev": source_stats(work / "dev.parquet"),
        "teachers": teachers, "ensemble": ensemble,
        "sets": {kind: set_summary(json.loads(out)) for kind, out in zip(sets, inspections)},
        "students": {name: student_rows({seed: json.loads(out) for (n, seed), out in zip(trained, evals) if n == name})
                     for name in runs},
        "hard_baseline_set": hard_kind,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def passthrough(args: argparse.Namespace) -> list[str]:
    flags = ["--smoke"] if args.smoke else []
    for name in ("train_sentences", "teacher_epochs", "student_epochs"):
        if getattr(args, name) is not None:
            flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return flags


def run_dir(work: Path, name: str, seed: int) -> Path:
    return work / "runs" / f"{name.replace(':', '-').replace(' ', '-')}-seed{seed}"


# --- data ------------------------------------------------------------------------------------------------

def read_sentences(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[0] != "sentence":
        raise SystemExit(f"{path}: expected SST-2's header 'sentence<TAB>label'")
    return [line.split("\t")[0] for line in lines[1:] if line.strip()]


def write_tsv(path: Path, sentences: list[str]) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t0\n" for s in sentences), encoding="utf-8")


def train_tokenizer(directory: Path, sentences: list[str], vocab: int) -> None:
    """A byte-level BPE on the train sentences, saved as a Hugging Face fast-tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<unk>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}))


def token_rows(path: Path):
    """(input_ids, attention_mask, target_mask) int64 tensors [N, L] of a `convert --text` source."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    table = pq.read_table(path)
    columns = []
    for name in ("input_ids", "attention_mask", "target_mask"):
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        columns.append(torch.from_numpy(np.asarray(values, dtype=np.int64).reshape(table.num_rows, -1)))
    return tuple(columns)


def source_stats(path: Path) -> dict:
    ids, attention, targets = token_rows(path)
    return {"rows": int(ids.shape[0]), "tokens": int(attention.sum()), "target_positions": int(targets[:, :-1].sum())}


# --- teachers --------------------------------------------------------------------------------------------

def train_teacher(work: Path, plan: Plan, index: int) -> int:
    """Train teacher `index` (a GPT-2 of plan.teacher_*), save it as an hf: directory with
    the tokenizer, and write its dev metrics. Runs in its own process, one thread."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from transferset.text.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(1000 + index)
    tokenizer = load_tokenizer(work / "tokenizer")
    config = GPT2Config(n_layer=plan.teacher_layers, n_embd=plan.teacher_width, n_head=max(1, plan.teacher_width // 32),
                        n_positions=LENGTH, vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_id,
                        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    model = GPT2LMHeadModel(config)
    ids, attention, targets = token_rows(work / "train.parquet")
    rows_per_batch = plan.tokens_per_batch // LENGTH
    steps = plan.teacher_epochs * math.ceil(len(ids) / rows_per_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=plan.lr, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(index)
    model.train()
    for epoch in range(plan.teacher_epochs):
        order = torch.randperm(len(ids), generator=generator)
        for start in range(0, len(ids), rows_per_batch):
            batch = order[start:start + rows_per_batch]
            logits = model(input_ids=ids[batch], attention_mask=attention[batch]).logits
            loss = next_token_nll(logits, ids[batch], targets[batch]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        print(f"teacher {index} epoch {epoch + 1}: train nll {float(loss):.3f}", flush=True)
    directory = work / f"teacher-{index}"
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(work / "tokenizer" / name, directory / name)
    nll = dev_nll([model], work / "dev.parquet")
    (directory / "dev_metrics.json").write_text(json.dumps({"name": f"teacher-{index}", **nll_metrics(nll)}))
    return 0


def next_token_nll(logits, ids, targets):
    """-log q(ids[t + 1]) at every target position t (the transferset eval definition), float32."""
    import torch

    where = targets[:, :-1].bool()
    log_q = torch.log_softmax(logits[:, :-1].float(), dim=-1)[where]
    return -log_q.gather(-1, ids[:, 1:][where][:, None]).squeeze(-1)


def dev_nll(models, path: Path):
    """Per-position NLL of the arithmetic mean of `models`' next-token distributions."""
    import torch

    ids, attention, targets = token_rows(path)
    pieces = []
    with torch.no_grad():
        for start in range(0, len(ids), 64):
            chunk = slice(start, start + 64)
            log_probs = [torch.log_softmax(m(input_ids=ids[chunk], attention_mask=attention[chunk]).logits.float(), dim=-1)
                         for m in models]
            mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(models))
            pieces.append(-next_token_nll_from_log_probs(mean, ids[chunk], targets[chunk]))
    return torch.cat(pieces)


def next_token_nll_from_log_probs(log_probs, ids, targets):
    where = targets[:, :-1].bool()
    return log_probs[:, :-1][where].gather(-1, ids[:, 1:][where][:, None]).squeeze(-1)


def nll_metrics(nll) -> dict:
    mean = float(nll.mean())
    return {"positions": int(nll.numel()), "nll": mean, "perplexity": math.exp(mean)}


def ensemble_dev_metrics(work: Path, teacher_dirs: list[Path]) -> dict:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(1)
    models = [GPT2LMHeadModel.from_pretrained(d, local_files_only=True).eval() for d in teacher_dirs]
    return {"name": f"ensemble of {len(models)} (arithmetic)", **nll_metrics(dev_nll(models, work / "dev.parquet"))}


# --- CLI plumbing and the table ----------------------------------------------------------------------------

def cli(*args) -> list[str]:
    return [sys.executable, str(CLI), *map(str, args)]


def run_all(commands: list[list[str]], jobs: int) -> list[str]:
    """Run `commands`, at most `jobs` at once; their stdouts, in order. Any failure stops the study."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    outputs: list[str | None] = [None] * len(commands)
    waiting = list(enumerate(commands))
    running: list[tuple[int, subprocess.Popen]] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            index, command = waiting.pop(0)
            running.append((index, subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        index, process = running.pop(0)
        stdout, stderr = process.communicate()
        if process.returncode:
            for _, other in running:
                other.kill()
            raise SystemExit(f"failed ({process.returncode}): {' '.join(commands[index])}\n{stderr[-3000:]}")
        outputs[index] = stdout
    return outputs  # type: ignore[return-value]


def set_summary(inspected: dict) -> dict:
    """What the study reports of `transferset inspect --json` on a transfer set."""
    keep = ("rows", "tokens", "target_positions", "bytes_per_token", "mean_entropy_nats", "mean_tail_mass", "teacher_top1_next_token")
    return {key: inspected.get(key) for key in keep}


METRICS = ("nll", "perplexity", "token_accuracy", "agreement")


def student_rows(by_seed: dict[int, dict]) -> dict:
    """Per-seed eval metrics of one kind, and their mean and sample sd over seeds (sd 0 for one seed)."""
    import statistics

    seeds = {str(seed): {key: m.get(key) for key in ("positions", *METRICS)} for seed, m in by_seed.items()}
    row: dict = {"positions": next(iter(seeds.values()))["positions"], "seeds": seeds}
    for key in METRICS:
        values = [m[key] for m in seeds.values()]
        row[key] = statistics.fmean(values)
        row[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return row


def table(results: dict) -> str:
    seeds = len(results["plan"]["seeds"])
    lines = ["| model | target kind | B/token | dev NLL | dev perplexity | agreement with teachers' top-1 |",
             "|---|---|---:|---:|---:|---:|"]
    for teacher in results["teachers"] + [results["ensemble"]]:
        lines.append(f"| {teacher['name']} | - | - | {teacher['nll']:.3f} | {teacher['perplexity']:.1f} | - |")
    for name, row in results["students"].items():
        kind = results["hard_baseline_set"] if name == "hard labels" else name
        size = results["sets"].get(kind, {}).get("bytes_per_token")
        shown = "hard labels (alpha 0)" if name == "hard labels" else name
        spread = (lambda key, digits: f" ± {row[key + '_sd']:.{digits}f}" if seeds > 1 else "")
        per_seed = " (" + ", ".join(f"{m['perplexity']:.1f}" for m in row["seeds"].values()) + ")" if seeds > 1 else ""
        lines.append(f"| student | {shown} | {'-' if name == 'hard labels' or size is None else f'{size:.1f}'} | "
                     f"{row['nll']:.3f}{spread('nll', 3)} | {row['perplexity']:.1f}{per_seed} | {row['agreement']:.3f}{spread('agreement', 3)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
