"""Stored views vs one target vs online distillation on MNIST (issue 11's real check).

    python benchmarks/hinton_mnist/views.py --protocol cpu --seeds 0,1 --work /tmp/views-study
    python benchmarks/hinton_mnist/views.py --protocol smoke --seeds 0 --work /tmp/views-smoke   # plumbing

Hinton et al.'s teachers were trained on inputs jittered by up to 2 pixels; run.py's
distilled 2x800 student learns from ONE fixed target per un-jittered image. Same
teachers, same student, same budget (run.py's protocol: SGD lr 0.1, momentum 0.9, cosine,
batch 128, T = 20 geometric, soft targets only, grad clip 2), four ways to get targets:

  hard      run.py's 2x800 on hard labels (the bottom of the gap)
  one       run.py's soft_geo: `generate` over the un-jittered rows, one target per image
  views-V   `generate --views V --augment "shift(2)"`: V stored jittered views per image,
            each with the ensemble's target; `train --transfer` replays one view per row per
            epoch (train/views.py)
  online    the teachers in the loop, every batch jittered afresh (the ceiling): the online
            arm of benchmarks/bench_offline_online.py with its `jitter` and `grad_clip` keys

The data, the teachers, the `one` set and the T = 1 test-row set (each teacher's and the
ensemble's errors) are run.py's own tasks (`run.plan`), so the same --work layout and the
same commands. Everything but the online arm goes through the CLI (runner.py); the online
arm is a Python loop in its own process, scored by bench_offline_online.test_accuracy
(what `transferset eval` computes). --resume keeps finished teachers, sets, runs and
online students (`student.pt`); unfinished CLI training resumes from its checkpoints.
Results: <work>/results.json and <work>/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import run  # noqa: E402
from report import _accuracy_errors, summary  # noqa: E402
from runner import Done, Runner, Task  # noqa: E402

AUGMENT = "shift(2)"  # Hinton et al.'s "jittered by up to two pixels" (transferset/views/grammar.py)
BASE_TASKS = ("convert-train", "convert-val", "convert-test", "generate-geo", "generate-test_geometric", "inspect-test_geometric")
ONLINE_SCRIPT = HERE.parent / "bench_offline_online.py"


def teacher_flags(p: run.Protocol, work: Path) -> list[str]:
    return [f for k in range(p.teachers) for f in ("--teacher", str(work / "teachers" / f"teacher-{k}" / "student.pt2"))]


def views_name(v: int) -> str:
    return f"views{v}"


def student_task(work: Path, soft_geo: Task, seed: int, name: str, v: int, epochs: int, device: str) -> list[Task]:
    """run.py's soft_geo student (`soft_geo`, its task), trained from views set V for `epochs`, and its test eval."""
    out, transfer = run.student_dir(work, seed, name), work / "transfer" / views_name(v)
    argv = list(soft_geo.argv)
    for flag, value in (("--transfer", transfer), ("--out", out), ("--epochs", epochs)):
        argv[argv.index(flag) + 1] = str(value)
    train = replace(soft_geo, name=f"s{seed}-{name}", argv=argv, needs=(f"generate-{views_name(v)}", "convert-val"), output_path=out / "student.pt2")
    return [train, eval_task(work, train, device)]


def eval_task(work: Path, train: Task, device: str) -> Task:
    return Task(f"eval-{train.name}", ["eval", str(train.output_path.parent), "--data", str(work / "data" / "test.parquet"),
                                       "--device", device, "--quiet", "--json"], "evaluate", (train.name, "convert-test"), json_stdout=True)


def base_plan(p: run.Protocol, work: Path, mnist: Path, seeds: list[int], device: str) -> list[Task]:
    """run.py's own tasks: data, teachers (first: the critical path), the one-target set, the T = 1 test-row
    set and its `inspect`; per seed its hard-label and one-target (soft_geo) students."""
    keep = set(BASE_TASKS) | {f"{prefix}s{s}-{name}" for s in seeds for name in ("hard", "soft_geo") for prefix in ("", "eval-")}
    tasks = [t for t in run.plan(p, work, mnist, seeds, device) if t.name in keep or t.name.startswith("teacher-")]
    return tasks + [Task("inspect-geo", ["inspect", str(work / "transfer" / "geo"), "--json"], "evaluate", ("generate-geo",), json_stdout=True)]


def views_plan(p: run.Protocol, work: Path, mnist: Path, seeds: list[int], v: int, device: str, epochs: int | None = None,
               generate: bool = True) -> list[Task]:
    """The V-views set (`generate`: made and inspected here) and per seed a student trained from it for
    `epochs` (default: the protocol's)."""
    out = work / "transfer" / views_name(v)
    tasks = [Task(f"generate-{views_name(v)}", [
        "generate", *teacher_flags(p, work), "--source", str(work / "data" / "train.parquet"), *run.INPUTS,
        "--combine", "geometric", "--temperature", f"{p.temperature:g}", "--views", str(v), "--augment", AUGMENT,
        "--out", str(out), "--device", device, "--quiet"], "generate",
        tuple(f"teacher-{k}" for k in range(p.teachers)) + ("convert-train",), output_path=out / "_manifest.json"),
        Task(f"inspect-{views_name(v)}", ["inspect", str(out), "--json"], "evaluate", (f"generate-{views_name(v)}",), json_stdout=True),
    ] if generate else []
    soft_geo = {t.name: t for t in run.plan(p, work, mnist, seeds, device)}
    name = views_name(v) if epochs is None else f"{views_name(v)}-e{epochs}"
    for seed in seeds:
        tasks += student_task(work, soft_geo[f"s{seed}-soft_geo"], seed, name, v, epochs or p.student_epochs, device)
    return tasks


# -- the online arm (teachers live, fresh jitter every batch) ----------------------------------------------------------


def run_online(p: run.Protocol, work: Path, seed: int, device: str, threads: int, resume: bool) -> dict:
    """bench_offline_online's online arm with this protocol's student, budget, jitter and clip; its test errors."""
    import bench_offline_online as bench
    from train.optim import resolve_warmup

    out = work / "online" / f"seed-{seed}"
    student = out / "student.pt"
    log = work / "logs" / f"online-s{seed}.log"
    seconds = None
    if not (resume and student.exists()):
        out.mkdir(parents=True, exist_ok=True)
        rows = run_rows(p.train_rows)
        steps = p.student_epochs * -(-rows // p.batch_size)
        spec = {"teachers": teacher_flags(p, work)[1::2], "train": str(work / "data" / "train.parquet"), "out": str(student),
                "device": device, "combine": "geometric", "temperature": p.temperature, "alpha": 1.0, "lr": p.distill_lr,
                "momentum": 0.9, "epochs": p.student_epochs, "batch_size": p.batch_size, "seed": seed,
                "hidden": [int(h) for h in p.student_hidden.split(",")], "jitter": p.teacher_jitter, "grad_clip": p.distill_clip,
                "warmup_steps": resolve_warmup(steps, None, None)}  # the CLI's default warm-up, as the other arms get
        (out / "spec.json").write_text(json.dumps(spec, indent=1))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(x for x in (str(HERE.parents[1]), os.environ.get("PYTHONPATH")) if x)}
        started = time.perf_counter()
        with open(log, "w") as f:
            done = subprocess.run([sys.executable, str(ONLINE_SCRIPT), "--_online_arm", str(out / "spec.json")],
                                  cwd=HERE.parents[1], env=env, stdout=f, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"online arm, seed {seed}, failed (exit {done.returncode}); log: {log}")
        print(f"online s{seed}: {seconds:.1f} s", file=sys.stderr, flush=True)
    epochs = out / "epochs.json"  # the arm's own per-epoch seconds (its process also loads data and teachers)
    epoch_seconds = sum(json.loads(epochs.read_text())) if epochs.exists() else None
    accuracy = bench.test_accuracy(str(student), work / "data" / "test.parquet", device, tuple(int(h) for h in p.student_hidden.split(",")))
    return {**_accuracy_errors(accuracy, run_rows(p.test_rows)), "seconds": seconds, "epoch_seconds": epoch_seconds, "log": str(log)}


def run_rows(rows: str) -> int:
    lo, hi = (int(x) for x in rows.split(":"))
    return hi - lo


# -- results ---------------------------------------------------------------------------------------------------------


def column_bytes(directory: Path, compressed: bool = True) -> dict[str, int]:
    """Bytes per column (leaf path) over the set's Parquet files, on disk or before compression: a set also
    stores its rows' inputs (`pixels`) and, with --keep-teacher-logits, every member's logits."""
    import pyarrow.parquet as pq

    sizes: dict[str, int] = {}
    for path in sorted(directory.glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                size = column.total_compressed_size if compressed else column.total_uncompressed_size
                sizes[column.path_in_schema] = sizes.get(column.path_in_schema, 0) + size
    return sizes


def target_bytes(columns: dict[str, int]) -> int:
    """The combined targets and the views' params (not the inputs, ids, labels or kept member logits)."""
    return sum(b for c, b in columns.items() if c.split(".")[0] in ("logits", "view_params"))


def build_results(runner: Runner, p: run.Protocol, work: Path, seeds: list[int], views: list[int], long_epochs: int,
                  online: dict[int, dict]) -> dict:
    """Every row that has finished (a views set or a long run still missing is left out)."""
    inspected = runner.output("inspect-test_geometric")
    n = inspected["labelled_rows"]
    teachers = [_accuracy_errors(t["accuracy"], n)["errors"] for t in inspected["teachers"]]
    ensemble = _accuracy_errors(inspected["ensemble_accuracy"], n)["errors"]
    train_rows = run_rows(p.train_rows)
    rows: dict[str, dict] = {}

    def add(key: str, label: str, per_seed: dict[int, int], **extra) -> None:
        rows[key] = {"label": label, "per_seed": {f"seed-{s}": e for s, e in per_seed.items()}, "errors": summary(list(per_seed.values())), **extra}

    def cli_row(key: str, name: str, label: str, views_per_row: int | None = None, set_name: str | None = None, **extra) -> None:
        per_seed = {s: runner.output(f"eval-s{s}-{name}")["errors"] for s in seeds if f"eval-s{s}-{name}" in runner.done}
        if not per_seed:
            return
        if set_name:  # what the targets cost: the set's Parquet on disk and `inspect`'s uncompressed target bytes
            info = runner.output(f"inspect-{set_name}")
            columns, views = column_bytes(work / "transfer" / set_name), train_rows * views_per_row
            extra.update(bytes_per_view=info["bytes"] / views,  # the whole set, inputs included
                         target_bytes_per_view=target_bytes(columns) / views,
                         uncompressed_target_bytes_per_view=target_bytes(column_bytes(work / "transfer" / set_name, False)) / views,
                         column_bytes_per_row={c: b / train_rows for c, b in columns.items()},
                         teacher_logits_kept=info["teacher_logits_kept"])
        add(key, label, per_seed, **extra)

    cli_row("hard", "hard", "hard labels")
    cli_row("one", "soft_geo", "1 target per image (un-jittered rows)", 1, "geo")
    for v in views:
        cli_row(views_name(v), views_name(v), f"{v} stored views per image, {AUGMENT}", v, views_name(v))
    if online:
        add("online", "online: teachers live, fresh jitter every batch (the ceiling)", {s: o["errors"] for s, o in online.items()},
            seconds={f"seed-{s}": o["seconds"] for s, o in online.items()},  # None: trained by an earlier run
            epoch_seconds={f"seed-{s}": o["epoch_seconds"] for s, o in online.items()})
    if long_epochs and views:
        name = f"{views_name(views[0])}-e{long_epochs}"
        cli_row(name, name, f"{views[0]} stored views, {long_epochs} epochs (longer budget)", views[0], views_name(views[0]),
                epochs=long_epochs)
    hard = rows["hard"]["errors"]["mean"]
    references = {"mean single teacher": sum(teachers) / len(teachers), "geometric ensemble": ensemble}
    for row in rows.values():
        row["gap_closed"] = {ref: (hard - row["errors"]["mean"]) / (hard - e) for ref, e in references.items()}
    return {"settings": {**asdict(p), "seeds": seeds, "views": views, "augment": AUGMENT, "long_epochs": long_epochs},
            "test_rows": n, "teachers": teachers, "ensemble_geometric": ensemble, "rows": rows, "timings": runner.timings()}


def render_markdown(results: dict) -> str:
    t, e = results["teachers"], results["ensemble_geometric"]
    lines = [f"teachers (test errors of {results['test_rows']:,}): {', '.join(map(str, t))} (mean {sum(t) / len(t):.1f}); geometric ensemble {e}", "",
             "| targets | test errors, mean ± sd | per seed | gap closed vs mean teacher | vs ensemble | target + params B/view on disk (uncompressed) |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"].values():
        s = row["errors"]
        per_seed = ", ".join(str(v) for v in row["per_seed"].values())
        b = f"{row['target_bytes_per_view']:.1f} ({row['uncompressed_target_bytes_per_view']:.1f})" if "bytes_per_view" in row else ""
        g = row["gap_closed"]
        lines.append(f"| {row['label']} | {s['mean']:.1f} ± {s['sd']:.1f} | {per_seed} | {100 * g['mean single teacher']:.0f}% "
                     f"| {100 * g['geometric ensemble']:.0f}% | {b} |")
    return "\n".join(lines) + "\n"


def load_logged(runner: Runner) -> None:
    """Fill `runner.done` from the logs of the commands that finished in its --work (the latest log of each
    task: its seconds and, for evaluations, its JSON), so --report-only rebuilds the results without running anything."""
    for log in sorted(runner.logs.glob("*.log")):
        index, _, name = log.stem.partition("-")
        text = log.read_text()
        if not index.isdigit() or "# exit 0 after " not in text:  # the online arm's logs; failed commands
            continue
        seconds = float(text.split("# exit 0 after ", 1)[1].split(" s", 1)[0])
        stdout = text.split("## stdout\n", 1)[1].split("\n## stderr\n", 1)[0]
        try:
            output = json.loads(stdout)
        except ValueError:  # train, generate, convert: no JSON on stdout
            output = None
        stage = {"eval": "evaluate", "inspect": "evaluate", "generate": "generate", "convert": "convert", "teacher": "train teachers"}
        runner.done[name] = Done(Task(name, [], stage.get(name.split("-")[0], "train students")), seconds, 0.0, output, str(log))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=sorted(run.PROTOCOLS), default="cpu", help="run.py's protocol (default: cpu)")
    ap.add_argument("--seeds", default="0,1", help="student seeds, comma-separated (default: 0,1)")
    ap.add_argument("--views", default="16", help="views per image of the stored sets, comma-separated (default: 16)")
    ap.add_argument("--long-epochs", type=int, default=0, help="also train the first views set's student this many epochs (default: no)")
    ap.add_argument("--no-online", action="store_true", help="skip the online arm")
    ap.add_argument("--work", required=True, type=Path, help="working directory (run.py's layout)")
    ap.add_argument("--mnist", type=Path, default=run.DEFAULT_MNIST, help="folder with the four MNIST IDX .gz files")
    ap.add_argument("--device", default="cpu", help="passed to every command and the online arm (default: cpu)")
    ap.add_argument("--jobs", type=int, default=1, help="CLI commands at once (default: 1)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per command (default: 1)")
    ap.add_argument("--resume", action="store_true", help="continue an existing --work (see run.py --resume)")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild results.json / results.md of an existing --work from its logs and finished online students; run nothing")
    args = ap.parse_args(argv)

    p = run.PROTOCOLS[args.protocol]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    views = [int(v) for v in args.views.split(",") if v.strip()]
    work = args.work.resolve()
    if args.report_only and not (work / "commands.txt").exists():
        ap.error(f"--report-only needs a --work that holds a run; {work} does not")
    if (work / "commands.txt").exists() and not (args.resume or args.report_only):
        ap.error(f"--work {work} already holds a run; pass --resume to continue it or choose another --work")
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, jobs=args.jobs, threads=args.threads, resume=args.resume)
    print(f"views study: protocol {args.protocol}, seeds {seeds}, views {views}, {args.jobs} job(s) x {args.threads} thread(s), work {work}",
          file=sys.stderr)
    mnist = args.mnist.resolve()
    online: dict[int, dict] = {}

    def report(stage: str) -> None:
        results = build_results(runner, p, work, seeds, views, args.long_epochs, online)
        results["settings"].update(protocol=args.protocol, device=args.device, jobs=args.jobs, threads=args.threads, stage=stage)
        # every CLI command, as run (resumed runs append), with this machine's paths named as the README does
        results["commands"] = [line.replace(str(mnist), "../shared/datasets/mnist").replace(str(work), "$WORK")
                               for line in (work / "commands.txt").read_text().splitlines()]
        (work / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
        (work / "results.md").write_text(markdown := render_markdown(results))
        print(f"\n[{stage}]\n{markdown}", flush=True)

    if args.report_only:  # what has finished so far (the online arm: only seeds whose student.pt exists)
        load_logged(runner)
        for s in [] if args.no_online else seeds:
            if (work / "online" / f"seed-{s}" / "student.pt").exists():
                online[s] = run_online(p, work, s, args.device, args.threads, resume=True)
        report("report-only, from the logs")
        return 0
    try:  # the same-budget table first (first views set, online), then the extras: more views, the longer budget
        runner.run(base_plan(p, work, mnist, seeds, args.device) + views_plan(p, work, mnist, seeds, views[0], args.device))
        report("one target, first views set")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # one process per seed, --jobs at once
            futures = {pool.submit(run_online, p, work, s, args.device, args.threads, args.resume): s
                       for s in ([] if args.no_online else seeds)}
            failed = []
            for future in as_completed(futures):  # a seed that finished is kept even if another fails
                try:
                    online[futures[future]] = future.result()
                except RuntimeError as error:
                    failed.append(error)
            if failed:
                raise failed[0]
        report("same budget, all arms")
        if views[1:] or args.long_epochs:
            long = views_plan(p, work, mnist, seeds, views[0], args.device, args.long_epochs, generate=False) if args.long_epochs else []
            extras = long + [t for v in views[1:] for t in views_plan(p, work, mnist, seeds, v, args.device)]
            runner.run(extras)
            report("complete")
    except RuntimeError as error:
        print(f"views study: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
