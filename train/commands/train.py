"""`transferset train`: flags -> TrainConfig -> train.loop.train.

    transferset train --transfer transfer/mnist-T4 --student train.students:mlp \\
        --student-arg hidden=800,800 --alpha 0.9 --epochs 20 --eval mnist-test.parquet --out runs/student-mlp
    transferset train --data mnist-train.parquet --input-column pixels --input-shape 1,28,28 \\
        --input-scale 1/255 --label-column label --out runs/baseline      # hard labels only
"""

from __future__ import annotations

import argparse

from train.config import DEFAULT_GRAD_CLIP, DEFAULT_WARMUP_FRACTION
from transferset.commands.flags import add_input_flags, add_threads_flag, apply_threads, input_spec_from_flags

HELP = "train a student from a transfer set (no teacher loaded) or from labelled Parquet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (one of --transfer / --data)")
    g.add_argument("--transfer", metavar="DIR", help="transfer-set directory made by `transferset generate`")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the shard checksum check before training (it reads the set once, ~1 GB/s); for a set made with "
                        "--inputs reference, check its sources' size and row count instead of their sha256")
    g.add_argument("--source-root", metavar="DIR", help="a set made with `generate --inputs reference`: a folder holding its source files, if they moved (default: where generate read them)")
    g.add_argument("--data", action="append", metavar="PATH", help="labelled Parquet file, directory or glob: hard labels only (repeatable)")
    add_input_flags(g, prefix="with --data: ")
    g.add_argument("--label-column", default="label", metavar="NAME", help="with --data: integer label column (default: label)")
    g.add_argument("--num-classes", type=int, metavar="C", help="with --data: number of classes (default: largest label + 1)")

    g = p.add_argument_group("student")
    g.add_argument("--student", default="train.students:mlp", metavar="package.module:function",
                   help="student factory, called with num_classes=, input_shape= and the --student-arg values (default: train.students:mlp)")
    g.add_argument("--student-arg", action="append", metavar="KEY=VALUE",
                   help="factory keyword, e.g. hidden=800,800 or dropout=0.5 (repeatable; ints, floats, true/false, comma lists)")

    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="kd", metavar="kd|mse|reverse-kl|jsd",
                   help="kd: T^2 KL(p_T || q_T) (default); mse: logit matching, geometric targets only; "
                        "reverse-kl, jsd: per-token dense or top-k sets (docs/lm.md)")
    g.add_argument("--alpha", type=float, metavar="A", help="soft-term weight; 1 - alpha weights hard CE on labelled rows (default: 1)")
    g.add_argument("--temperature", "-T", type=float, metavar="T", help="distillation temperature (default: the transfer set's; may differ only for geometric targets)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default="sgd", metavar="sgd|adamw", help="sgd (default) or adamw")
    g.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default: 0.05 sgd, 1e-3 adamw)")
    g.add_argument("--momentum", type=float, default=0.9, metavar="M", help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, metavar="WD", help="default: 0 sgd, 0.01 adamw")
    g.add_argument("--warmup-steps", type=int, metavar="N", help="linear warm-up steps before the cosine decay (default: --warmup-fraction's; 0: none)")
    g.add_argument("--warmup-fraction", type=float, metavar="F",
                   help=f"warm-up as a fraction of all steps, instead of --warmup-steps (default: {DEFAULT_WARMUP_FRACTION})")
    g.add_argument("--min-lr-ratio", type=float, default=0.0, metavar="R", help="cosine decays to lr * this (default: 0)")
    g.add_argument("--grad-clip", type=float, default=DEFAULT_GRAD_CLIP, metavar="NORM",
                   help=f"clip the gradient norm to this; 0: no clipping (default: {DEFAULT_GRAD_CLIP})")
    g.add_argument("--epochs", type=int, default=10, metavar="N", help="passes over the data (default: 10)")
    g.add_argument("--batch-size", type=int, metavar="B", help="rows per optimiser step (default: 128)")
    g.add_argument("--tokens-per-batch", type=int, metavar="N",
                   help="per-token sets: tokens per optimiser step, N // L rows of L tokens (instead of --batch-size)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the init, the batch order, dropout and jitter (default: 0)")
    g.add_argument("--jitter", type=int, default=0, metavar="N", help="random shifts of up to N pixels of image inputs (default: 0, off)")

    g = p.add_argument_group("compute")
    g.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--precision", default="fp32", metavar="fp32|bf16|fp16", help="fp32 (default), bf16 (CUDA or CPU) or fp16 (CUDA, with a gradient scaler)")
    add_threads_flag(g)
    g.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default 0: on 2 cores workers are slower)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", action="append", metavar="PATH",
                   help="labelled Parquet (or a transfer set) evaluated after each epoch (repeatable; default: none)")
    g.add_argument("--eval-label-column", default=None, metavar="NAME", help="label column of --eval data (default: --label-column)")
    g.add_argument("--eval-batch-size", type=int, default=1024, metavar="B", help="rows per evaluation batch (default: 1024)")

    g = p.add_argument_group("run directory")
    g.add_argument("--out", required=True, metavar="DIR", help="run directory: student.pt, student.pt2, config.json, metrics.jsonl, checkpoints/")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="also checkpoint every N steps (default: epoch ends only)")
    g.add_argument("--keep-checkpoints", type=int, default=2, metavar="K", help="newest checkpoints kept (default: 2)")
    g.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out (or this file); rerunning the same command also resumes")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a --resume checkpoint that needs full unpickling (it can run code from the file: only for files you trust)")
    g.add_argument("--overwrite", action="store_true", help="replace a run in --out made with a different configuration")
    g.add_argument("--json", action="store_true", help="print the last epoch's metrics as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    import json

    from train.config import TrainConfig
    from train.loop import train
    from train.students import parse_student_args

    apply_threads(args.threads)
    given = {flag: value for flag, value in (
        ("--input-column", args.input_column), ("--input-shape", args.input_shape), ("--input-scale", args.input_scale),
        ("--input-mean", args.input_mean), ("--input-std", args.input_std), ("--transform", args.transform),
    ) if value is not None}
    input_spec = None
    if args.tokens_per_batch is not None and args.batch_size is not None:
        from transferset.errors import UserError

        raise UserError("give --batch-size (rows) or --tokens-per-batch (tokens), not both")
    if args.data and args.transfer is None and args.input_shape is None and args.transform is None:
        from transferset.errors import UserError

        raise UserError("--data needs --input-shape (e.g. --input-shape 1,28,28) or a --transform to turn its input columns into tensors")
    if args.data and args.transfer is None:
        input_spec = input_spec_from_flags(args).to_dict()
    elif given:
        input_spec = given  # with --transfer: refused by validate(), naming these flags
    cfg = TrainConfig(
        transfer=args.transfer,
        data=args.data,
        input=input_spec,
        label_column=args.label_column,
        num_classes=args.num_classes,
        student=args.student,
        student_args=parse_student_args(args.student_arg),
        loss=args.loss,
        alpha=args.alpha,
        temperature=args.temperature,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        warmup_fraction=args.warmup_fraction,
        min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip,
        epochs=args.epochs,
        batch_size=128 if args.batch_size is None else args.batch_size,
        tokens_per_batch=args.tokens_per_batch,
        seed=args.seed,
        precision=args.precision,
        jitter=args.jitter,
        out=args.out,
        device=args.device,
        workers=args.workers,
        eval=args.eval or [],
        eval_label_column=args.eval_label_column or args.label_column,
        eval_batch_size=args.eval_batch_size,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        verify=args.verify,
        source_root=args.source_root,
        quiet=args.quiet,
        json=args.json,
    )
    record = train(cfg)
    if args.json:
        print(json.dumps(record, sort_keys=True))
    elif not args.quiet:  # the result on stdout; progress and logs went to stderr
        from pathlib import Path

        from train.metrics import summary_lines

        print("\n".join(summary_lines(record, Path(cfg.out))))
    return 0
