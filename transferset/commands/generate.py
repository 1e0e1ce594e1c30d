"""`transferset generate`: flags -> GenerateConfig -> run_generate."""

from __future__ import annotations

import argparse

from transferset.commands.flags import add_input_flags, add_threads_flag, apply_threads, cores_but_one, warn_license

HELP = "run a teacher ensemble over Parquet sources and write a transfer set"


class _TeacherAction(argparse.Action):
    """--teacher (a generalist) and --specialist start a member; --weights / --teacher-weight /
    --teacher-output attach to the one before, and --classes to the --specialist before."""

    def __call__(self, parser, namespace, value, option_string=None):
        members = getattr(namespace, "teachers", None) or []
        if option_string in ("--teacher", "--specialist"):
            members.append({"spec": value, "specialist": option_string == "--specialist"})
        elif option_string == "--classes":
            if not members or not members[-1]["specialist"]:
                parser.error("--classes must follow the --specialist it belongs to")
            if "classes" in members[-1]:
                parser.error(f"--classes given twice for --specialist {members[-1]['spec']}")
            try:
                members[-1]["classes"] = tuple(int(c) for c in value.split(","))
            except ValueError:
                parser.error(f"--classes {value!r} must be class indices separated by commas, like 3,5,8")
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

    g.add_argument("--specialist", action=_TeacherAction, dest="teachers", metavar="SPEC",
                   help="a specialist for --combine specialists: a teacher (any form) over the --classes after it, "
                        "returning len(classes) + 1 logits (its classes, then a dustbin for every other class)")
    g.add_argument("--classes", action=_TeacherAction, dest="teachers", metavar="C,C,...",
                   help="the classes of the --specialist just before it, in the order of its outputs")
    g.add_argument("--specialist-top", type=int, default=1, metavar="N",
                   help="a specialist votes on a row when the generalists' N most probable classes include one of its "
                        "classes (default: 1, the paper's choice)")

    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow teacher files and --weights that need full unpickling or other code from the file to load (only for files you trust)")

    g = p.add_argument_group("sources")
    g.add_argument("--source", action="append", required=True, metavar="PATH",
                   help="Parquet file, directory or glob (repeatable; labelled and unlabelled)")
    add_input_flags(g)
    g.add_argument("--label-column", default="label", help="integer label column; null or absent = unlabelled (default: label)")
    g.add_argument("--id-column", help="stable row id column (default: derived from the source's content hash and row)")

    g = p.add_argument_group("targets")
    g.add_argument("--targets", default="dense", metavar="KIND[:N]",
                   help="what to store of the combined distribution: dense (every class; default), topk:K (the K most "
                        "probable with the exact tail mass) or sampled:N (N draws, unbiased); see docs/format.md")
    g.add_argument("--combine", default="geometric",
                   help="arithmetic or geometric mean of the members, or specialists (with --specialist; docs/specialists.md) "
                        "(default: geometric)")
    g.add_argument("--temperature", "-T", type=float, default=1.0, help="softmax temperature T (default: 1)")
    g.add_argument("--storage-dtype", default="float16", help="float16 (default, see docs/format.md) or float32")
    g.add_argument("--keep-teacher-logits", action="store_true", help="also store every member's raw logits")
    g.add_argument("--class-names", metavar="A,B,...", help="class names, stored in the provenance")
    g.add_argument("--views", type=int, metavar="V", help="store V augmented views per row, each with its params and its "
                   "target (--targets dense or topk:K per view; docs/vision.md)")
    g.add_argument("--augment", metavar="SPEC", help="the views' augmentation, e.g. 'random-resized-crop(224,scale=0.35-1),hflip' "
                   "or 'shift(2)' (docs/vision.md)")
    g.add_argument("--augment-seed", type=int, default=0, metavar="N", help="seed of the views' params (default: 0)")

    g = p.add_argument_group("output and compute")
    g.add_argument("--out", required=True, help="transfer-set directory")
    g.add_argument("--overwrite", action="store_true", help="replace an output made with a different configuration")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--devices", metavar="D,D,...",
                   help="one process per device, e.g. cuda:0,cuda:1 (cpu,cpu for CPU processes): disjoint shards, one set")
    g.add_argument("--precision", default="fp32", help="teacher precision: fp32, bf16 or fp16 (CUDA); targets are always combined in float32 (default: fp32)")
    add_threads_flag(g, "every core but one, which the reader and writer threads use")
    g.add_argument("--batch-size", type=int, help="rows per teacher batch (default: 1024)")
    g.add_argument("--max-tokens-per-batch", type=int, metavar="N",
                   help="for a token source: rows per teacher batch by token budget, N // (tokens per row)")
    g.add_argument("--shard-rows", type=int, default=131072, help="rows per Parquet shard (default: 131072)")
    g.add_argument("--row-group-rows", type=int, default=32768, help="rows per Parquet row group (default: 32768)")
    g.add_argument("--inputs", default="copy", choices=("copy", "reference"),
                   help="copy: the set holds a copy of every input (default; self-contained); reference: each row names "
                        "its source row instead, and readers join the source (which must not change; docs/format.md)")
    g.add_argument("--engine", default="local",
                   help="who runs the shard jobs: local (this process; default) or ray (Ray Data; pip install 'transferset[ray]')")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="--engine ray: join this Ray cluster (default: start Ray on this machine for the run)")
    g.add_argument("--ray-actors", type=int, metavar="N",
                   help="--engine ray: teacher actors (default: one per GPU of the cluster, else one per CPU but one)")
    g = p.add_argument_group("dataset card (README.md in the set; never part of its checksums)")
    g.add_argument("--card-license", metavar="ID", help="license identifier, e.g. cc-by-4.0 (default: unknown)")
    g.add_argument("--card-description", metavar="TEXT", help="what the set is, for people who find it")
    g.add_argument("--card-task", metavar="CATEGORY", help="dataset-hub task category (default: from the input shape)")
    g = p.add_argument_group("writers")
    g.add_argument("--writer-index", type=int, help="this writer's index, for several independent writers (default: 0)")
    g.add_argument("--num-writers", type=int, help="how many independent writers share the shards (default: 1)")


def _batch_rows(args: argparse.Namespace, spec) -> int:
    """--batch-size rows, or --max-tokens-per-batch tokens of a token source's fixed-length rows."""
    from transferset.errors import UserError

    if args.max_tokens_per_batch is None:
        return args.batch_size if args.batch_size is not None else 1024
    if args.batch_size is not None:
        raise UserError("give --batch-size (rows) or --max-tokens-per-batch (tokens), not both")
    if not spec.tokens:
        raise UserError("--max-tokens-per-batch applies to token sources (`convert --text`); use --batch-size for other inputs")
    length = spec.shape[0]
    if args.max_tokens_per_batch < length:
        raise UserError(f"--max-tokens-per-batch {args.max_tokens_per_batch} is less than one row of the source ({length} tokens); "
                        f"give at least {length}")
    return args.max_tokens_per_batch // length


def _token_inputs(args: argparse.Namespace):
    """Token inputs for a `convert --text` source named without any input flag."""
    if args.input_column or args.input_shape or args.input_scale or args.input_mean or args.input_std or args.transform:
        return None
    from transferset.io import expand_parquet_paths
    from transferset.text import token_spec

    return token_spec(expand_parquet_paths(args.source, "source"))


def _image_source(args: argparse.Namespace) -> dict | None:
    """The metadata of a `convert --image-folder` first source (else None); it needs --input-shape."""
    from transferset.errors import UserError
    from transferset.images import image_metadata
    from transferset.io import expand_parquet_paths

    paths = expand_parquet_paths(args.source, "source")
    meta = image_metadata(paths[0]) if paths else None
    if meta is not None and args.input_shape is None:
        raise UserError(f"source {paths[0]!r} holds encoded images; give --input-shape C,H,W, the size they are decoded to "
                        f"(e.g. 3,224,224), and usually --input-scale 1/255 --input-mean ... --input-std ...")
    return meta


def _image_inputs(args: argparse.Namespace, spec, meta: dict):
    """Image inputs: the source's image column, decoded to --input-shape (transferset/images/decode.py)."""
    from dataclasses import replace

    return replace(spec, columns=tuple(args.input_column) if args.input_column else (meta["image_column"],), image=True)


def run(args: argparse.Namespace) -> int:
    from transferset import gcpause

    gcpause.pause()  # until the teachers are loaded (generate/__init__.py resumes it then)
    try:
        return _run(args)
    finally:
        gcpause.resume()  # also when the run stopped before


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferset.generate import GenerateConfig, run_generate
    from transferset.progress import say
    from transferset.teachers import TeacherSpec
    from transferset.teachers.declared import input_spec_for

    from transferset.format.codecs import parse_targets

    if args.devices:
        return _run_per_device(args)
    apply_threads(args.threads if args.threads is not None else cores_but_one())
    from transferset.views.expand import views_options

    target_kind, target_options = views_options(args.views, args.augment, args.augment_seed, *parse_targets(args.targets))
    warn_license(args.card_license, "generate")
    members = [(TeacherSpec(t["spec"], t.get("weights"), t.get("ensemble_weight"), t.get("output")), t) for t in args.teachers]
    teachers = [spec for spec, t in members if not t["specialist"]]
    specialists = [_specialist(spec, t) for spec, t in members if t["specialist"]]
    # A student.pt2 declares the preprocessing it was trained on: flags complete it or must agree with it.
    image = _image_source(args)  # a `convert --image-folder` source: checked first, its --input-shape is the decode size
    spec = _token_inputs(args) or input_spec_for(args, [spec for spec, _ in members], lambda line: say(line, args.quiet))
    spec = _image_inputs(args, spec, image) if image else spec
    cfg = GenerateConfig(
        teachers=teachers,
        sources=args.source,
        input_spec=spec,
        out=Path(args.out),
        label_column=args.label_column,
        id_column=args.id_column,
        combine=args.combine,
        temperature=args.temperature,
        target_kind=target_kind,
        target_options=target_options,
        storage_dtype=args.storage_dtype,
        keep_teacher_logits=args.keep_teacher_logits,
        class_names=args.class_names.split(",") if args.class_names else None,
        batch_size=_batch_rows(args, spec),
        shard_rows=args.shard_rows,
        row_group_rows=args.row_group_rows,
        inputs=args.inputs,
        device=args.device or "auto",
        precision=args.precision,
        writer_index=0 if args.writer_index is None else args.writer_index,
        num_writers=1 if args.num_writers is None else args.num_writers,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        quiet=args.quiet,
        card_license=args.card_license,
        card_description=args.card_description,
        card_task=args.card_task,
        specialists=specialists,
        specialist_top=args.specialist_top,
    )
    run_generate(cfg)
    return 0


def _run_per_device(args: argparse.Namespace) -> int:
    """--devices: one child generate per device (transferset/generate/per_device.py)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from transferset.errors import UserError
    from transferset.generate.per_device import parse_devices, run_per_device
    from transferset.io import expand_parquet_paths

    for flag, value, why in (("--device", args.device, "each process gets one of --devices"),
                             ("--num-writers", args.num_writers, "--devices starts one writer per device"),
                             ("--writer-index", args.writer_index, "--devices starts one writer per device")):
        if value is not None:
            raise UserError(f"--devices and {flag} contradict: {why}; drop {flag}")
    if args.engine != "local":
        raise UserError(f"--devices runs local engines, one per device; --engine {args.engine} places its own workers "
                        f"(Ray: --ray-actors); drop one of them")
    devices = parse_devices(args.devices)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in expand_parquet_paths(args.source, "source"))
    run_per_device(args.argv, devices, Path(args.out), rows, args.threads, args.quiet)
    return 0


def _specialist(spec, given: dict):
    from transferset.errors import UserError
    from transferset.generate.config import SpecialistSpec

    if "classes" not in given:
        raise UserError(f"--specialist {given['spec']} needs --classes C,C,... after it (its classes, in the order of its outputs)")
    return SpecialistSpec(spec, given["classes"])
