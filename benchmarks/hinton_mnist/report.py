"""Turn the CLI's JSON outputs into the study's rows, the results JSON and a markdown table.

Every number here was printed by `transferset eval --json` or `transferset inspect --json`;
this module only collects them (errors, errors on threes, accuracies) and summarises
them over seeds (mean, sample sd, min, max).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# The paper's test errors (of 10,000) and errors on the 1,010 threes, section 3.
PAPER = {
    "teacher": 67,
    "hard": 146,
    "soft_geo": 74,
    "no3_nobias": 206, "no3_nobias_threes": 133,
    "no3_paper_bias": 109, "no3_paper_bias_threes": 14,
    "gap_closed": (146 - 74) / (146 - 67),
}


def summary(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {
        "n": len(values), "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values), "max": max(values),
    }


def _errors(out: dict[str, Any], cls: int) -> dict[str, Any]:
    """errors, rows, and errors / rows of class `cls` from one `transferset eval --json`."""
    return {"errors": out["errors"], "rows": out["labelled"], "accuracy": out["accuracy"],
            "class_errors": out["per_class_errors"][cls], "class_rows": out["per_class_rows"][cls]}


def _accuracy_errors(accuracy: float, rows: int) -> dict[str, Any]:
    return {"errors": round((1 - accuracy) * rows), "rows": rows, "accuracy": accuracy}


def build_results(runner, settings: dict[str, Any], students: dict[str, tuple], chosen_bias: dict[int, float]) -> dict[str, Any]:
    seeds, cls, paper_bias = settings["seeds"], settings["omitted_class"], settings["paper_bias"]
    rows: dict[str, dict[str, Any]] = {}

    def add(key: str, label: str, per_run: dict[str, dict[str, Any]], paper: int | None = None, paper_threes: int | None = None, **extra) -> None:
        rows[key] = {
            "label": label, "paper_errors": paper, "paper_threes": paper_threes, "runs": per_run,
            "errors": summary([r["errors"] for r in per_run.values()]),
            "threes": summary([r.get("class_errors") for r in per_run.values()]),
            **extra,
        }

    # Teachers (each with its own seed) and their ensembles: `inspect --json` of the T = 1
    # transfer sets over the test rows (kept teacher logits give each member's accuracy).
    inspected = {c: runner.output(f"inspect-test_{c}") for c in ("geometric", "arithmetic")}
    n = inspected["geometric"]["labelled_rows"]
    teachers = {f"teacher-{k}": _accuracy_errors(t["accuracy"], n) for k, t in enumerate(inspected["geometric"]["teachers"])}
    net = "CNN 32-64 conv, " if settings.get("teacher_net") == "cnn" else ""
    add("teacher", f"teacher {net}{settings['teacher_hidden'].replace(',', 'x')} ReLU, dropout + jitter {settings['teacher_jitter']} px "
        f"(each of {settings['teachers']})", teachers, PAPER["teacher"])
    for combine, summary_json in inspected.items():
        add(f"ensemble_{combine}", f"teacher ensemble, {combine} mean ({settings['teachers']} teachers)",
            {"ensemble": _accuracy_errors(summary_json["ensemble_accuracy"], n)})

    student = f"student {settings['student_hidden'].replace(',', 'x')} ReLU"
    for name, (_, _, label) in students.items():
        if name.startswith("few"):
            continue  # after the bias rows
        label = f"{student}, {label}"
        per_seed = {f"seed-{s}": _errors(runner.output(f"eval-s{s}-{name}"), cls) for s in seeds}
        key = "no3_nobias" if name == "no3_soft" else name
        paper = PAPER.get(key)
        add(key, label + (" (no bias)" if name == "no3_soft" else ""), per_seed, paper, PAPER.get(f"{key}_threes"))

    def bias_row(key: str, label: str, value_of) -> None:
        per_seed = {}
        for s in seeds:
            v = value_of(s)
            out = runner.output(f"eval-s{s}-no3_soft") if v == 0 else runner.output(f"test-s{s}-bias{v:g}")
            per_seed[f"seed-{s}"] = {**_errors(out, cls), "bias": v}
        add(key, label, per_seed, PAPER.get(key), PAPER.get(f"{key}_threes"))

    bias_row("no3_paper_bias", f"  + class-{cls} bias {paper_bias:g} (the paper's value)", lambda s: paper_bias)
    bias_row("no3_val_bias", f"  + class-{cls} bias chosen on validation", lambda s: chosen_bias[s])
    for name in [n for n in students if n.startswith("few")]:
        add(name, f"{student}, {students[name][2]}", {f"seed-{s}": _errors(runner.output(f"eval-s{s}-{name}"), cls) for s in seeds})
    validation = {
        f"seed-{s}": {f"{v:g}": _errors(runner.output(f"val-s{s}-bias{v:g}"), cls) for v in settings["bias_grid"]}
        for s in seeds
    }

    # Gap closed: (hard - distilled) / (hard - teacher), on mean errors; against the mean single
    # teacher (the paper's definition: one teacher) and against the ensemble that made the targets.
    hard, soft = rows["hard"]["errors"]["mean"], rows["soft_geo"]["errors"]["mean"]
    gap = {
        "vs_mean_single_teacher": _ratio(hard - soft, hard - rows["teacher"]["errors"]["mean"]),
        "vs_geometric_ensemble": _ratio(hard - soft, hard - rows["ensemble_geometric"]["errors"]["mean"]),
        "per_seed_vs_mean_single_teacher": {
            f"seed-{s}": _ratio(rows["hard"]["runs"][f"seed-{s}"]["errors"] - rows["soft_geo"]["runs"][f"seed-{s}"]["errors"],
                                rows["hard"]["runs"][f"seed-{s}"]["errors"] - rows["teacher"]["errors"]["mean"])
            for s in seeds
        },
        "paper": PAPER["gap_closed"],
    }
    return {
        "settings": settings,
        "rows": rows,
        "gap_closed": gap,
        "bias": {"chosen": {f"seed-{s}": v for s, v in chosen_bias.items()}, "validation": validation},
        "test_rows": rows["hard"]["runs"][f"seed-{seeds[0]}"]["rows"],
        "class_rows_test": rows["hard"]["runs"][f"seed-{seeds[0]}"]["class_rows"],
        "timings": runner.timings(),
        "commands": [line for line in (runner.commands.read_text().splitlines()) if line],
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(a / b) else None


def _fmt(s: dict[str, Any], runs: list[float] | None = None) -> str:
    if not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.0f}"
    return f"{s['mean']:.1f} ± {s['sd']:.1f} ({', '.join(f'{v:g}' for v in runs)})" if runs else f"{s['mean']:.1f} ± {s['sd']:.1f}"


def render_markdown(results: dict[str, Any]) -> str:
    st, rows = results["settings"], results["rows"]
    n, threes = results["test_rows"], results["class_rows_test"]
    lines = [
        f"# Hinton et al. (2015) MNIST distillation, protocol `{st['protocol']}`",
        "",
        f"Test errors of {n:,} test images (the paper: of 10,000); errors on the {threes:,} threes where they matter "
        f"(the paper: of 1,010). Students: seeds {', '.join(map(str, st['seeds']))}; mean ± sd (per run).",
        "",
        "| model | paper | ours | threes: paper | threes: ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, row in rows.items():
        runs = [r["errors"] for r in row["runs"].values()]
        three_runs = [r["class_errors"] for r in row["runs"].values() if "class_errors" in r]
        show_threes = key.startswith("no3")
        lines.append(
            f"| {row['label']} | {row['paper_errors'] if row['paper_errors'] is not None else '-'} | {_fmt(row['errors'], runs)} "
            f"| {row['paper_threes'] if show_threes and row['paper_threes'] is not None else '-'} "
            f"| {_fmt(row['threes'], three_runs) if show_threes else '-'} |"
        )
    gap = results["gap_closed"]
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    chosen = ", ".join(f"{s}: {v:g}" for s, v in results["bias"]["chosen"].items())
    lines += [
        "",
        f"Gap closed by distillation, (hard - distilled) / (hard - teacher) on mean errors: **{pct(gap['vs_mean_single_teacher'])}** "
        f"against the mean single teacher, {pct(gap['vs_geometric_ensemble'])} against the geometric ensemble that made "
        f"the targets (the paper: {pct(gap['paper'])}, (146 - 74) / (146 - 67)).",
        "",
        f"Class-{st['omitted_class']} bias chosen on the validation rows ({st['val_rows']} of the training files) from "
        f"{{{', '.join(f'{v:g}' for v in st['bias_grid'])}}}: {chosen}.",
        "",
        "Settings: "
        f"train rows {st['train_rows']}, 3% subset {st['few_rows']}; {st['teachers']} teachers {st.get('teacher_net', 'mlp')} {st['teacher_hidden']} "
        f"(dropout {st['teacher_dropout']:g}, input dropout {st['teacher_input_dropout']:g}, jitter {st['teacher_jitter']}, "
        f"{st['teacher_epochs']} epochs, lr {st['teacher_lr']:g}); students {st['student_hidden']} ({st['student_epochs']} epochs, "
        f"3% subset {st['few_epochs']} epochs, lr {st['student_lr']:g} hard / {st['distill_lr']:g} soft); "
        f"T = {st['temperature']:g}; soft + hard alpha {st['soft_hard_alpha']:g}; SGD momentum 0.9, cosine decay, "
        f"batch {st['batch_size']}; device {st['device']}, {st['jobs']} job(s) x {st['threads'] or 'default'} thread(s).",
        "",
        "| stage | commands | summed command seconds | wall span (s) |",
        "|---|---:|---:|---:|",
    ]
    t = results["timings"]
    for stage, s in t["stages"].items():
        lines.append(f"| {stage} | {s['tasks']} | {s['task_seconds']:.0f} | {s['wall_seconds']:.0f} |")
    lines += [f"| total | {sum(s['tasks'] for s in t['stages'].values())} | "
              f"{sum(s['task_seconds'] for s in t['stages'].values()):.0f} | {t['total_wall_seconds']:.0f} |", ""]
    return "\n".join(lines)
