"""Offline distillation (generate once + train) against the usual online loop.

    python benchmarks/bench_offline_online.py [--work DIR]      # full: 60k MNIST, 5 teachers, 20 epochs
    python benchmarks/bench_offline_online.py --quick           # smoke: 5k rows, 2 teachers, 2 epochs

The product's promise: an ensemble of K teachers costs K forward passes per row
*once* (`transferset generate`), instead of once per row per epoch. Both arms
train the same student to the same accuracy; only the time differs.

setup (not timed)  `transferset convert` the MNIST IDX files to Parquet, then
                   `transferset train` K teachers (784-1200-1200-10, seeds 1..K)
                   whose `student.pt2` programs are the ensemble.
offline (timed)    `transferset generate` (the K programs, --combine, -T) then
                   `transferset train --transfer` (784-800-800-10 student), each
                   a CLI process: wall time from launch to exit, so interpreter
                   start, imports, hashing, Parquet I/O, per-epoch checkpoints and
                   the final torch.export all count.
online (timed)     this file run as a process of its own (`_online_arm`): load the
                   same K programs, read the training Parquet into memory, and for
                   every batch run all K under inference_mode, combine them with
                   transferset.combine.combine, and step the same student with
                   train.losses.distillation_loss. Same init (same seed before the
                   same factory), same SGD + cosine schedule, same batch size and
                   epochs, and the same batch order: MNIST fits one shuffle window
                   of train/order.py, so epoch e's order is that window's
                   permutation, which the loop below recomputes. The only
                   difference left in the maths is that the transfer set stores
                   the targets in float16.
accuracy           both students, after timing, on the 10,000 test images with
                   train.metrics.evaluate (what `transferset eval` runs).

Neither arm evaluates during training (the offline run gets no --eval), so the
timed part is training alone in both.

The machine is shared: the load average is printed before and after; a value
above the core count means other processes competed for the cores. Besides wall
time the report gives each arm's CPU seconds (the processes' own user + system)
and its median epoch time, which move less under load than wall time does.

Measured (2 cores, quiet, load average <= 2; two runs): offline 60.9-67.9 s
(generate 11.5-12.4 s + train 49.4-55.5 s), online 195.9-201.0 s; ratio
0.303-0.347 (CPU seconds 0.283-0.323); test accuracy 97.12 offline, 97.11 online.
Under a load average of 5-7 the wall ratio swung to 0.175: read it with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
INPUT_FLAGS = ["--input-column", "pixels", "--input-shape", "1,28,28", "--input-scale", "1/255"]
STUDENT = "train.students:mlp"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-offline-online"),
                   help="work directory; converted data and teachers are kept and reused (default: /tmp/bench-offline-online)")
    p.add_argument("--quick", action="store_true", help="smoke mode: 5,000 rows, 2 teachers of 1 epoch, 2 student epochs")
    p.add_argument("--rows", type=int, help="training rows (default: 60000, quick 5000)")
    p.add_argument("--teachers", type=int, help="ensemble size (default: 5, quick 2)")
    p.add_argument("--teacher-epochs", type=int, help="epochs per teacher (default: 2, quick 1)")
    p.add_argument("--epochs", type=int, help="student epochs (default: 20, quick 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--temperature", "-T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--combine", default="geometric", help="arithmetic or geometric (default: geometric, the generate default)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device of both arms (default: cpu)")
    p.add_argument("--tolerance", type=float, default=0.2, help="accuracy gap allowed, in points (default: 0.2)")
    p.add_argument("--_online_arm", dest="online_arm", type=Path, help=argparse.SUPPRESS)
    return p


# -- the online arm: a plain PyTorch loop, in its own process ----------------------------


def online_arm(spec_path: Path) -> None:
    """Train the student with the teachers in the loop; save its state dict.

    spec: the JSON the parent wrote (teachers, data, hyper-parameters, out). Optional keys
    (benchmarks/hinton_mnist/views.py's online arm): `hidden` (default 800,800),
    `jitter` N (each batch shifted by up to N pixels, drawn per step, before both the
    teachers and the student see it: the teachers label the very view the student
    trains on), `grad_clip` and `warmup_steps` (the CLI's --grad-clip, --warmup-steps)."""
    import pyarrow.parquet as pq
    import torch

    from train import order
    from train.losses import distillation_loss
    from train.optim import build_optimizer, build_scheduler
    from train.students import build_student, jitter_images
    from transferset.combine import combine, normalised_weights
    from transferset.inputs import InputSpec

    spec = json.loads(spec_path.read_text())
    device = torch.device(spec["device"])
    temperature, alpha, batch_size, epochs, seed = spec["temperature"], spec["alpha"], spec["batch_size"], spec["epochs"], spec["seed"]

    teachers = [torch.export.load(path).module().to(device) for path in spec["teachers"]]  # traced in eval mode
    weights = normalised_weights(None, len(teachers))  # [K], equal, as generate's default

    # The whole training set in memory, converted as the transfer set's InputSpec does.
    table = pq.read_table(spec["train"], columns=["pixels", "label"])
    inputs = InputSpec(columns=("pixels",), shape=(1, 28, 28), scale=1 / 255)
    x_all = inputs.to_tensor(table).to(device)  # [N, 1, 28, 28] float32
    y_all = torch.from_numpy(table.column("label").to_numpy().astype("int64")).to(device)  # [N]
    n = x_all.shape[0]
    steps_per_epoch = -(-n // batch_size)

    torch.manual_seed(seed)  # as train/state.py seeds just before building the student: same init
    model = build_student(STUDENT, {"hidden": tuple(spec.get("hidden", (800, 800)))}, 10, (1, 28, 28)).to(device)
    optimizer = build_optimizer(model, "sgd", lr=spec["lr"], momentum=spec["momentum"], weight_decay=0.0)
    scheduler = build_scheduler(optimizer, total_steps=epochs * steps_per_epoch, warmup_steps=spec.get("warmup_steps", 0))
    jitter, grad_clip = spec.get("jitter", 0), spec.get("grad_clip")
    shifts = torch.Generator().manual_seed(seed)  # the jitter's draws: one stream, a pure function of the seed
    model.train()
    epoch_seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        # The trainer's order for a set that fits one shuffle window: one permutation per (seed, epoch).
        perm = torch.from_numpy(order.epoch_plan([n], seed, epoch, window=1)[0].order()).to(device)  # [N]
        for lo in range(0, n, batch_size):
            idx = perm[lo : lo + batch_size]
            x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)  # [B, 1, 28, 28], [B]
            x = jitter_images(x, jitter, shifts)  # the same shifted view for the teachers and the student (no-op at 0)
            with torch.inference_mode():
                members = torch.stack([teacher(x) for teacher in teachers])  # [K, B, C]
                target = combine(members, spec["combine"], temperature, weights)  # [B, C] float32
            loss, _ = distillation_loss(model(x), target, y, alpha=alpha, temperature=temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
        seconds = time.perf_counter() - started
        epoch_seconds.append(seconds)
        print(f"online epoch={epoch + 1}  step={(epoch + 1) * steps_per_epoch}  rows_per_s={n / seconds:,.0f}", file=sys.stderr, flush=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, spec["out"])
    Path(spec["out"]).with_name("epochs.json").write_text(json.dumps(epoch_seconds))


# -- the parent: setup, both arms, accuracy, report --------------------------------------


def timed(command: list[str], capture: bool = False) -> tuple[float, float, str]:
    """Run a process to its end: (wall seconds, CPU seconds user + system, stdout).

    CPU seconds are the child's own (RUSAGE_CHILDREN grows by exactly the children
    that exited in between). They are the steadier figure on a shared machine: wall
    time counts the time other processes held the cores, CPU time mostly does not."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"`{' '.join(command)}` failed with exit code {done.returncode}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout or ""


def cli(*args: str, capture: bool = False) -> tuple[float, float, str]:
    """Run `transferset ARGS` as users do; (wall s, CPU s, stdout)."""
    return timed([sys.executable, "-m", "cli", *args], capture)


def load_note() -> str:
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = "  HIGH: other processes competed for the cores" if load[0] > cores else ""
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {cores} cores{busy}"


def setup(args, work: Path) -> tuple[Path, Path, list[Path], list[float]]:
    """Converted Parquet and trained teachers (kept in `work`, reused when present)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    train_pq = data / f"mnist-train-{args.rows}.parquet"
    test_pq = data / "mnist-test.parquet"
    if not train_pq.exists():
        cli("convert", "--quiet", "--images", str(MNIST / "train-images-idx3-ubyte.gz"), "--labels", str(MNIST / "train-labels-idx1-ubyte.gz"),
            "--rows", f"0:{args.rows}", "--out", str(train_pq))
    if not test_pq.exists():
        cli("convert", "--quiet", "--images", str(MNIST / "t10k-images-idx3-ubyte.gz"), "--labels", str(MNIST / "t10k-labels-idx1-ubyte.gz"),
            "--out", str(test_pq))
    teachers, accuracies = [], []
    for i in range(1, args.teachers + 1):
        run = work / "teachers" / f"rows{args.rows}-e{args.teacher_epochs}-t{i}"
        # A finished run with the same configuration is only re-exported (train/loop.py).
        _, _, out = cli("train", "--quiet", "--json", "--data", str(train_pq), *INPUT_FLAGS, "--student", STUDENT,
                     "--student-arg", "hidden=1200,1200", "--epochs", str(args.teacher_epochs), "--seed", str(i),
                     "--device", args.device, "--eval", str(test_pq), "--out", str(run), capture=True)
        accuracies.append(json.loads(out.strip().splitlines()[-1])["accuracy"])
        teachers.append(run / "student.pt2")
        print(f"  teacher {i}: {run}/student.pt2, test accuracy {accuracies[-1]:.4f}", flush=True)
    return train_pq, test_pq, teachers, accuracies


def student_flags(args) -> list[str]:
    return ["--student", STUDENT, "--student-arg", "hidden=800,800", "--alpha", str(args.alpha), "--optimizer", "sgd",
            "--lr", str(args.lr), "--momentum", str(args.momentum), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--device", args.device]


def run_offline(args, work: Path, train_pq: Path, teachers: list[Path]) -> dict:
    transfer, run = work / "offline" / "transfer", work / "offline" / "student"
    shutil.rmtree(work / "offline", ignore_errors=True)
    teacher_flags = [flag for t in teachers for flag in ("--teacher", str(t))]
    generate_cmd = ["generate", "--quiet", *teacher_flags, "--source", str(train_pq), *INPUT_FLAGS, "--combine", args.combine,
                    "-T", str(args.temperature), "--device", args.device, "--out", str(transfer)]
    train_cmd = ["train", "--quiet", "--transfer", str(transfer), *student_flags(args), "--out", str(run)]
    generate_s, generate_cpu, _ = cli(*generate_cmd)
    train_s, train_cpu, _ = cli(*train_cmd)
    epoch_s = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"generate_s": generate_s, "train_s": train_s, "epochs_s": sum(epoch_s), "epoch_median_s": statistics.median(epoch_s), "cpu_s": generate_cpu + train_cpu, "student": str(run / "student.pt"),
            "commands": ["transferset " + " ".join(generate_cmd), "transferset " + " ".join(train_cmd)]}


def run_online(args, work: Path, train_pq: Path, teachers: list[Path]) -> dict:
    out = work / "online"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {"teachers": [str(t) for t in teachers], "train": str(train_pq), "out": str(out / "student.pt"), "device": args.device,
            "combine": args.combine, "temperature": args.temperature, "alpha": args.alpha, "lr": args.lr, "momentum": args.momentum,
            "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    seconds, cpu, _ = timed([sys.executable, str(Path(__file__).resolve()), "--_online_arm", str(out / "spec.json")])
    epoch_s = json.loads((out / "epochs.json").read_text())
    return {"total_s": seconds, "cpu_s": cpu, "epochs_s": sum(epoch_s), "epoch_median_s": statistics.median(epoch_s), "student": spec["out"]}


def test_accuracy(state_dict_path: str, test_pq: Path, device: str, hidden: tuple[int, ...] = (800, 800)) -> float:
    """What `transferset eval` measures, for a state dict of the 784-800-800-10 student."""
    import torch

    from train.data import open_eval_data
    from train.metrics import evaluate
    from train.students import build_student
    from transferset.inputs import InputSpec

    model = build_student(STUDENT, {"hidden": tuple(hidden)}, 10, (1, 28, 28))
    model.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True))
    source = open_eval_data(str(test_pq), InputSpec(columns=("pixels",), shape=(1, 28, 28), scale=1 / 255), "label", 10)
    batches = source.epoch(batch_size=1024, seed=0, epoch=0, shuffle=False)
    return evaluate(model.to(device), batches, num_classes=10, device=torch.device(device))["accuracy"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.online_arm is not None:
        online_arm(args.online_arm)
        return 0
    defaults = (5000, 2, 1, 2) if args.quick else (60000, 5, 2, 20)
    for name, default in zip(("rows", "teachers", "teacher_epochs", "epochs"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    work = args.work.resolve()
    mode = "quick" if args.quick else "full"
    print(f"{mode}: {args.rows:,} rows, {args.teachers} teachers x {args.teacher_epochs} epochs, student {args.epochs} epochs, "
          f"batch {args.batch_size}, T={args.temperature:g}, alpha={args.alpha:g}, {args.combine}, lr {args.lr:g}; work {work}", flush=True)
    print(f"start: {load_note()}", flush=True)

    print("setup (not timed):", flush=True)
    train_pq, test_pq, teachers, teacher_acc = setup(args, work)
    print(f"before the arms: {load_note()}", flush=True)
    print("offline arm: transferset generate, then transferset train ...", flush=True)
    offline = run_offline(args, work, train_pq, teachers)
    print(f"after offline: {load_note()}", flush=True)
    print("online arm: teachers in the loop ...", flush=True)
    online = run_online(args, work, train_pq, teachers)
    print(f"after online: {load_note()}", flush=True)

    acc_off = test_accuracy(offline["student"], test_pq, args.device)
    acc_on = test_accuracy(online["student"], test_pq, args.device)
    off_total = offline["generate_s"] + offline["train_s"]
    ratio = off_total / online["total_s"]
    cpu_ratio = offline["cpu_s"] / online["cpu_s"]
    gap = 100 * abs(acc_off - acc_on)
    student_rows = args.rows * args.epochs
    rows = [
        ("offline generate", f"{offline['generate_s']:.1f} s", f"{args.rows / offline['generate_s']:,.0f} rows/s ({args.teachers} teachers, once)"),
        ("offline train", f"{offline['train_s']:.1f} s", f"{student_rows / offline['train_s']:,.0f} rows/s (epochs alone {offline['epochs_s']:.1f} s)"),
        ("offline total", f"{off_total:.1f} s", f"{student_rows / off_total:,.0f} student rows/s"),
        ("online total", f"{online['total_s']:.1f} s", f"{student_rows / online['total_s']:,.0f} student rows/s ({args.teachers} teachers every batch)"),
        ("ratio offline / online", f"{ratio:.3f}", f"offline takes {100 * ratio:.0f}% of the online time (speed-up {1 / ratio:.2f}x)"),
        ("median epoch offline / online", f"{offline['epoch_median_s']:.1f} / {online['epoch_median_s']:.1f} s",
         f"ratio {offline['epoch_median_s'] / online['epoch_median_s']:.3f} (an epoch's cost, robust to short bursts of load)"),
        ("CPU s offline / online", f"{offline['cpu_s']:.0f} / {online['cpu_s']:.0f}", f"ratio {cpu_ratio:.3f} (user + system; steadier than wall time under load)"),
        ("test accuracy", f"{100 * acc_off:.2f} / {100 * acc_on:.2f}", f"offline / online, gap {gap:.2f} points "
                                                                          f"({'within' if gap <= args.tolerance else 'OUTSIDE'} +-{args.tolerance})"),
        ("teachers' accuracy", " ".join(f"{100 * a:.2f}" for a in teacher_acc), ""),
    ]
    print()
    for name, value, note in rows:
        print(f"  {name:<30}{value:>16}   {note}")
    print(f"\n  {load_note()}")
    result = {"mode": mode, "rows": args.rows, "teachers": args.teachers, "teacher_epochs": args.teacher_epochs, "epochs": args.epochs,
              "batch_size": args.batch_size, "temperature": args.temperature, "alpha": args.alpha, "combine": args.combine, "lr": args.lr,
              "offline_generate_s": offline["generate_s"], "offline_train_s": offline["train_s"], "offline_epochs_s": offline["epochs_s"], "online_epochs_s": online["epochs_s"],
              "offline_epoch_median_s": offline["epoch_median_s"], "online_epoch_median_s": online["epoch_median_s"],
              "offline_total_s": off_total, "online_total_s": online["total_s"], "ratio": ratio, "offline_cpu_s": offline["cpu_s"], "online_cpu_s": online["cpu_s"], "cpu_ratio": cpu_ratio, "accuracy_offline": acc_off,
              "accuracy_online": acc_on, "teacher_accuracy": teacher_acc, "loadavg_end": os.getloadavg(), "commands": offline["commands"]}
    (work / f"results-{mode}.json").write_text(json.dumps(result, indent=1))
    print(f"  results: {work / f'results-{mode}.json'}")
    return 0 if gap <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
