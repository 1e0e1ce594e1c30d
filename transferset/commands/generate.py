"""`transferset generate`: flags -> GenerateConfig -> run_generate."""

from __future__ import annotations

import argparse

from transferset.commands.flags import add_input_flags, add_threads_flag, apply_threads

HELP = "run a teacher ensemble over Parquet sources and write a transfer set"


class _TeacherAction(argparse.Action):
    """--teacher starts a member; --weights / --teacher-weight / --teacher-output attach to the one before."""

    def __call__(self, parser, namespace, value, option_string=None):
        members = getattr(namespace, "teachers", None) or []
        if option_string == "--teacher":
            members.append({"spec": value})
        else:
            if not members:
                parser.error(f"{option_string} must follow the --teacher it belongs to")
            key = {"--weights": "weights", "--teacher-output": "output"}.get(option_string, "ensemble_weight")
            if key in members[-1]:
                parser.error(f"{option_string} given twice for --teacher {members[-1]['spec']}")
            if key == "ensemble_weight":
                try:
                    value = float(value)
                except ValueError:
                    parser.error(f"--teacher-weight {value!r} must be a number")
            members[-1][key] = value
        namespace.teachers = members


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("teachers")
    g.add_argument("--teacher", action=_TeacherAction, dest="teachers", metavar="SPEC", required=True,
                   help="a torch.export .pt2, a TorchScript file, or package.module:function (repeat for an ensemble)")
    g.add_argument("--weights", action=_TeacherAction, dest="teachers", metavar="FILE",
                   help="state dict for the factory --teacher just before it (loaded with weights_only=True)")
    g.add_argument("--teacher-weight", action=_TeacherAction, dest="teachers", metavar="W",
                   help="ensemble weight of the --teacher just before it (default: equal weights)")
    g.add_argument("--teacher-output", action=_TeacherAction, dest="teachers", metavar="KEY|INDEX",
                   help="which element of a tuple/list/dict output of the --teacher just before it holds the logits "
                        "(default: the output itself, its .logits, or its 'logits' key)")

    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow teacher files and --weights that need full unpickling or other code from the file to load (only for files you trust)")

    g = p.add_argument_group("sources")
    g.add_argument("--source", action="append", required=True, metavar="PATH",
                   help="Parquet file, directory or glob (repeatable; labelled and unlabelled)")
    add_input_flags(g)
    g.add_argument("--label-column", default="label", help="integer label column; null or absent = unlabelled (default: label)")
    g.add_argument("--id-column", help="stable row id column (default: derived from the source's content hash and row)")

    g = p.add_argument_group("targets")
    g.add_argument("--combine", default="geometric", help="arithmetic or geometric mean of the members (default: geometric)")
    g.add_argument("--temperature", "-T", type=float, default=1.0, help="softmax temperature T (default: 1)")
    g.add_argument("--storage-dtype", default="float16", help="float16 (default, see docs/format.md) or float32")
    g.add_argument("--keep-teacher-logits", action="store_true", help="also store every member's raw logits")
    g.add_argument("--class-names", metavar="A,B,...", help="class names, stored in the provenance")

    g = p.add_argument_group("output and compute")
    g.add_argument("--out", required=True, help="transfer-set directory")
    g.add_argument("--overwrite", action="store_true", help="replace an output made with a different configuration")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--precision", default="fp32", help="teacher precision: fp32, bf16 or fp16 (CUDA); targets are always combined in float32 (default: fp32)")
    add_threads_flag(g)
    g.add_argument("--batch-size", type=int, default=1024, help="rows per teacher batch (default: 1024)")
    g.add_argument("--shard-rows", type=int, default=131072, help="rows per Parquet shard (default: 131072)")
    g.add_argument("--row-group-rows", type=int, default=32768, help="rows per Parquet row group (default: 32768)")
    g.add_argument("--engine", default="local", help="who runs the shard jobs: local (this process; default)")
    g.add_argument("--writer-index", type=int, default=0, help="this writer's index, for several independent writers (default: 0)")
    g.add_argument("--num-writers", type=int, default=1, help="how many independent writers share the shards (default: 1)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferset.generate import GenerateConfig, run_generate
    from transferset.progress import say
    from transferset.teachers import TeacherSpec
    from transferset.teachers.declared import input_spec_for

    apply_threads(args.threads)
    teachers = [TeacherSpec(t["spec"], t.get("weights"), t.get("ensemble_weight"), t.get("output")) for t in args.teachers]
    # A student.pt2 declares the preprocessing it was trained on: flags complete it or must agree with it.
    spec = input_spec_for(args, teachers, lambda line: say(line, args.quiet))
    cfg = GenerateConfig(
        teachers=teachers,
        sources=args.source,
        input_spec=spec,
        out=Path(args.out),
        label_column=args.label_column,
        id_column=args.id_column,
        combine=args.combine,
        temperature=args.temperature,
        storage_dtype=args.storage_dtype,
        keep_teacher_logits=args.keep_teacher_logits,
        class_names=args.class_names.split(",") if args.class_names else None,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        row_group_rows=args.row_group_rows,
        device=args.device,
        precision=args.precision,
        writer_index=args.writer_index,
        num_writers=args.num_writers,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        engine=args.engine,
        quiet=args.quiet,
    )
    run_generate(cfg)
    return 0
