"""`transferset eval RUN --data X`: evaluate a trained student at T = 1.

The run's config.json says how to build the student and how to read inputs, so
no input flags are needed. A causal-LM student (a per-token run) is scored per
token on a token source or a per-token set (train/lm_metrics.py: nll, perplexity,
next-token accuracy, top-1 agreement with the teachers):

    transferset eval runs/student-mlp --data mnist-test.parquet
    transferset eval runs/student-mlp --data mnist-test.parquet --class-bias 3=3.5 --json
"""

from __future__ import annotations

import argparse

HELP = "evaluate a trained student on labelled Parquet (or a transfer set)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run directory written by `transferset train --out`")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="labelled Parquet with the training inputs' columns, or a transfer set (adds teacher agreement)")
    p.add_argument("--label-column", metavar="NAME", help="label column (default: the one recorded in the run)")
    p.add_argument("--class-bias", action="append", metavar="CLASS=VALUE",
                   help="add VALUE to class CLASS's logit (index or class name) before measuring (repeatable), e.g. 3=3.5")
    p.add_argument("--batch-size", type=int, default=1024, metavar="B", help="rows per batch (default: 1024)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--source-root", metavar="DIR", help="a set made with `generate --inputs reference`: a folder holding its source files, if they moved (default: where generate read them)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from train.checkpoint import CONFIG
    from train.data import open_eval_data
    from train.export import STATE_DICT
    from train.metrics import evaluate, parse_class_bias
    from train.students import build_student
    from train.world import World
    from transferset.errors import UserError
    from transferset.inputs import InputSpec
    from transferset.trust import safe_load

    run_dir = Path(args.run_dir)
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir} is not a training run (no {CONFIG}); point at a directory made by `transferset train --out`")
    try:
        doc = json.loads((run_dir / CONFIG).read_text())
        cfg, resolved = doc["config"], doc["resolved"]
        num_classes = int(resolved["num_classes"])
        input_shape = tuple(resolved["input_shape"])
        student_args = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["student_args"].items()}
        student, input_dict, label_column = cfg["student"], resolved["input"], resolved["label_column"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(
            f"{run_dir / CONFIG} is damaged (not the JSON `transferset train` writes); "
            f"rerun the run's `transferset train` command with --overwrite to write it again"
        ) from None
    if not (run_dir / STATE_DICT).is_file():
        raise UserError(f"{run_dir} has no {STATE_DICT}: its training has not finished; rerun the same `transferset train` to finish it")
    bias = parse_class_bias(args.class_bias, num_classes, resolved.get("class_names"))

    per_token = bool(resolved.get("per_token"))
    if per_token:  # a causal-LM student of a per-token set (train/lm_students.py)
        from train.lm_students import build_lm_student

        model = build_lm_student(student, student_args, num_classes, input_shape[0])
    else:
        model = build_student(student, student_args, num_classes, input_shape)

    def damaged(error: BaseException) -> str:  # truncated, not a torch file, or a pickle of other objects
        return (f"{run_dir / STATE_DICT} cannot be read ({type(error).__name__}); it is damaged: "
                f"rerun the same `transferset train` to write it again from the last checkpoint")

    # trust=None: eval has no --trust-checkpoint, so a file that needs full unpickling is just damaged.
    state = safe_load(run_dir / STATE_DICT, what=str(run_dir / STATE_DICT), unreadable=damaged, trust=None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
        detail = lines[1] if len(lines) > 1 else lines[0]  # torch: "Error(s) in loading ...:" then one line per tensor
        raise UserError(
            f"{run_dir / STATE_DICT} does not fit the student {CONFIG} describes ({detail}); "
            f"one of the two was changed or copied from another run: rerun the run's `transferset train` command"
        ) from None
    device = World.detect(args.device).device
    model.to(device)

    source = open_eval_data(args.data, InputSpec.from_dict(input_dict), args.label_column or label_column, num_classes, what="--data",
                            per_token=per_token, source_root=args.source_root)
    batches = source.epoch(batch_size=args.batch_size, seed=0, epoch=0, shuffle=False)
    metrics = evaluate(model, batches, num_classes=num_classes, device=device, class_bias=bias, where=args.data)
    result = {
        "run": str(run_dir),
        "data": args.data,
        "class_bias": {str(i): float(v) for i, v in enumerate(bias.tolist()) if v} if bias is not None else None,
        "class_names": resolved.get("class_names"),
        **metrics,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_human(result)
    return 0


def _print_human(result: dict) -> None:
    if "positions" in result:  # token rows: per-token metrics (train/lm_metrics.py)
        lines = [f"{result['run']} on {result['data']}: {result['rows']:,} rows, {result['positions']:,} target tokens"]
        if result["positions"]:
            lines.append(f"  nll {result['nll']:.4f} nats/token  perplexity {result['perplexity']:.2f}  "
                         f"next-token accuracy {result['token_accuracy']:.4f}")
        if "agreement" in result:
            lines.append(f"  top-1 agreement with the teachers: {result['agreement']:.4f}")
        print("\n".join(lines))
        return
    lines = [f"{result['run']} on {result['data']}: {result['rows']:,} rows, {result['labelled']:,} labelled"]
    if result.get("labelled"):
        lines.append(
            f"  accuracy {result['accuracy']:.4f}  errors {result['errors']:,}  nll {result['nll']:.4f}  ece {result['ece']:.4f}"
        )
        names = result.get("class_names") or [str(i) for i in range(len(result["per_class_errors"]))]
        per_class = ", ".join(f"{n}: {e}/{r}" for n, e, r in zip(names, result["per_class_errors"], result["per_class_rows"]))
        lines.append(f"  errors per class: {per_class}")
    if "agreement" in result:
        lines.append(f"  agreement with the teachers' argmax: {result['agreement']:.4f}")
    if result.get("class_bias"):
        lines.append(f"  class bias: {result['class_bias']}")
    print("\n".join(lines))
