"""Specialist ensembles (Hinton, Vinyals & Dean 2015, section 5) on MNIST, through the CLI.

    python benchmarks/specialists_mnist.py --work /tmp/specialists-mnist [--jobs 2] [--resume]

The study, as `transferset` commands run as subprocesses (benchmarks/hinton_mnist/runner.py;
every command is logged to <work>/commands.txt):

  convert   MNIST -> train (rows 0:50000), held-out (50000:60000), test (10,000)
  train     the generalist: one 2x1200 ReLU MLP like hinton_mnist's teachers (hard labels)
  generate  the generalist over the held-out rows at T = 1; its confusion matrix there
            picks the specialists' class groups (the most confused pairs, grown greedily
            to groups of up to --group-size classes, --specialists groups)
  (script)  each specialist's training Parquet: the train rows with labels remapped to
            its classes 0..n-1 and every other class to the dustbin n
  train     the specialists: the generalist's architecture with n + 1 outputs
  generate  over the test rows at T = 1 (float32): the generalist alone and with the
            specialists (--combine specialists); `inspect --json` gives their accuracy
  generate  transfer sets over the train rows at T = --temperature, with and without the
            specialists; a 2x800 student distilled from each; `eval --json` on the test rows

Results: <work>/results-T<temperature>.json and the markdown table printed at the end.
With --resume and another --temperature, only the transfer sets and students of that
temperature are new (everything else is reused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent / "hinton_mnist"))

from runner import Runner, Task  # noqa: E402

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
INPUTS = ["--input-column", "pixels", "--input-shape", "1,28,28", "--input-scale", "1/255"]
TEACHER = ["--student-arg", "hidden=1200,1200", "--student-arg", "dropout=0.3", "--student-arg", "input_dropout=0.1",
           "--jitter", "2", "--lr", "0.1", "--batch-size", "128"]


def convert_tasks(data: Path, q: list[str]) -> list[Task]:
    tasks = []
    for name, split, rows in (("train", "train", "0:50000"), ("heldout", "train", "50000:60000"), ("test", "t10k", "0:10000")):
        images, labels = MNIST / f"{split}-images-idx3-ubyte.gz", MNIST / f"{split}-labels-idx1-ubyte.gz"
        tasks.append(Task(f"convert-{name}", ["convert", "--images", str(images), "--labels", str(labels), "--rows", rows,
                                              "--out", str(data / f"{name}.parquet"), "--overwrite", *q], "convert",
                          output_path=data / f"{name}.parquet"))
    return tasks


def confusion(transfer_set: Path, num_classes: int = 10) -> np.ndarray:
    """counts[true, predicted] of a transfer set's stored targets (argmax) on its labelled rows."""
    table = ds.dataset(sorted(map(str, transfer_set.glob("part-*.parquet")))).to_table(columns=["label", "logits"])
    labels = table.column("label").to_numpy()
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False))
    counts = np.zeros((num_classes, num_classes), int)
    np.add.at(counts, (labels, logits.argmax(1)), 1)
    return counts


def confused_groups(counts: np.ndarray, groups: int, size: int) -> list[list[int]]:
    """Disjoint class groups: seed each with the most confused pair left (symmetric
    off-diagonal counts), then add the class most confused with the group, up to `size`."""
    pair = counts + counts.T
    np.fill_diagonal(pair, 0)
    used: set[int] = set()
    chosen = []
    for _ in range(groups):
        free = [c for c in range(len(pair)) if c not in used]
        i, j = max(((i, j) for i in free for j in free if i < j), key=lambda ij: pair[ij])
        group = [i, j]
        while len(group) < size:
            rest = [c for c in free if c not in group]
            best = max(rest, key=lambda c: pair[c, group].sum())
            if pair[best, group].sum() == 0:
                break
            group.append(best)
        chosen.append(sorted(group))
        used |= set(group)
    return chosen


def remapped(source: Path, classes: list[int], out: Path) -> Path:
    """The source's rows with labels mapped to the specialist's outputs: classes[k] -> k, others -> dustbin."""
    table = pq.read_table(source)
    mapping = np.full(10, len(classes), np.int64)
    mapping[classes] = np.arange(len(classes))
    labels = mapping[table.column("label").to_numpy()]
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command")
    parser.add_argument("--generalist-epochs", type=int, default=10)
    parser.add_argument("--specialist-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=15)
    parser.add_argument("--specialists", type=int, default=3, help="how many class groups")
    parser.add_argument("--group-size", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=20.0, help="of the transfer sets the students learn from")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    work, q = args.work, ["--quiet"]
    data, transfer, runs = work / "data", work / "transfer", work / "runs"
    data.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, jobs=args.jobs, threads=args.threads, resume=args.resume)
    generalist = runs / "generalist" / "student.pt2"

    def generate(name: str, source: str, temperature: float, members: list[str], needs: tuple, *extra: str) -> Task:
        return Task(f"generate-{name}", ["generate", *members, "--source", str(data / f"{source}.parquet"), *INPUTS,
                                         "--temperature", f"{temperature:g}", *extra, "--out", str(transfer / name), *q],
                    "generate", needs, output_path=transfer / name / "_manifest.json")

    # 1. data and the generalist; its confusion matrix on the held-out rows.
    runner.run([
        *convert_tasks(data, q),
        Task("generalist", ["train", "--data", str(data / "train.parquet"), *INPUTS, *TEACHER, "--epochs", str(args.generalist_epochs),
                            "--seed", "100", "--out", str(generalist.parent), *q, "--json"], "train", ("convert-train",),
             output_path=generalist),
    ])
    runner.run([generate("heldout", "heldout", 1.0, ["--teacher", str(generalist)], (), "--storage-dtype", "float32")])
    counts = confusion(transfer / "heldout")
    groups = confused_groups(counts, args.specialists, args.group_size)
    print(f"held-out errors of the generalist: {int(counts.sum() - np.trace(counts))} of {counts.sum()}; specialist groups: {groups}")

    # 2. the specialists, each on the train rows with its labels remapped.
    specialist_flags, tasks = [], []
    for k, classes in enumerate(groups):
        spec_data = remapped(data / "train.parquet", classes, data / f"train-spec{k}.parquet")
        out = runs / f"specialist-{k}"
        tasks.append(Task(f"specialist-{k}", ["train", "--data", str(spec_data), *INPUTS, *TEACHER, "--num-classes", str(len(classes) + 1),
                                              "--epochs", str(args.specialist_epochs), "--seed", str(200 + k), "--out", str(out), *q, "--json"],
                          "train", (), output_path=out / "student.pt2"))
        specialist_flags += ["--specialist", str(out / "student.pt2"), "--classes", ",".join(map(str, classes))]
    runner.run(tasks)
    needs = tuple(t.name for t in tasks)

    # 3. ensembles on the test rows, transfer sets, students.
    general_only = ["--teacher", str(generalist)]
    with_specialists = [*general_only, *specialist_flags, "--combine", "specialists"]
    t = f"T{args.temperature:g}"  # a --resume at another temperature adds its students beside the others
    tasks = [
        generate("test-general", "test", 1.0, [*general_only, "--combine", "arithmetic"], (), "--storage-dtype", "float32"),
        generate("test-specialists", "test", 1.0, with_specialists, needs, "--storage-dtype", "float32"),
        generate(f"train-general-{t}", "train", args.temperature, [*general_only, "--combine", "arithmetic"], ()),
        generate(f"train-specialists-{t}", "train", args.temperature, with_specialists, needs),
    ]
    for name in ("general", "specialists"):
        tasks.append(Task(f"inspect-{name}", ["inspect", str(transfer / f"test-{name}"), "--json"], "evaluate",
                          (f"generate-test-{name}",), json_stdout=True))
        student = runs / f"student-{name}-{t}"
        tasks.append(Task(f"student-{name}", ["train", "--transfer", str(transfer / f"train-{name}-{t}"), "--student-arg", "hidden=800,800",
                                              "--lr", "0.1", "--grad-clip", "2", "--batch-size", "128", "--epochs", str(args.student_epochs),
                                              "--seed", "0", "--out", str(student), *q, "--json"], "train",
                          (f"generate-train-{name}-{t}",), output_path=student / "student.pt2"))
        tasks.append(Task(f"eval-{name}", ["eval", str(student), "--data", str(data / "test.parquet"), *q, "--json"], "evaluate",
                          (f"student-{name}",), json_stdout=True))
    runner.run(tasks)
    report(args, work, runner, counts, groups)


def report(args, work: Path, runner: Runner, counts: np.ndarray, groups: list[list[int]]) -> None:
    ensemble = {name: round((1 - runner.output(f"inspect-{name}")["ensemble_accuracy"]) * 10000) for name in ("general", "specialists")}
    students = {name: runner.output(f"eval-{name}")["errors"] for name in ("general", "specialists")}
    results = {"groups": groups, "heldout_confusion": counts.tolist(), "test_errors_ensemble": ensemble,
               "test_errors_student": students, "settings": {k: v for k, v in vars(args).items() if k != "work" and k != "resume"} | {"work": str(work)},
               "timings": runner.timings()}
    (work / f"results-T{args.temperature:g}.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"| model | test errors (of 10,000) |\n|---|---|")
    print(f"| generalist alone (2x1200) | {ensemble['general']} |")
    print(f"| generalist + {len(groups)} specialists ({'; '.join(','.join(map(str, g)) for g in groups)}) | {ensemble['specialists']} |")
    print(f"| 2x800 student of the generalist (T = {args.temperature:g}) | {students['general']} |")
    print(f"| 2x800 student of generalist + specialists (T = {args.temperature:g}) | {students['specialists']} |")


if __name__ == "__main__":
    main()
