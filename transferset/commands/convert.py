"""`transferset convert`: .npy / .npz / IDX arrays, or a text corpus -> a Parquet source.

    transferset convert --images train-images-idx3-ubyte.gz --labels train-labels-idx1-ubyte.gz --out mnist.parquet
    transferset convert --images x.npy [--labels y.npy] --out src.parquet
    transferset convert --npz data.npz --images-key x [--labels-key y] --out src.parquet
    transferset convert --text corpus.jsonl --text-field text --tokenizer models/teacher --max-length 512 --out corpus.parquet

Never imports torch: converting needs only numpy, pyarrow (and tokenizers for text).
"""

from __future__ import annotations

import argparse

HELP = "convert .npy/.npz/IDX arrays (e.g. MNIST) or a text corpus (tokenised) into a Parquet source for generate and train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("input files")
    files.add_argument("--images", metavar="PATH", help="images/inputs [rows, ...]: .npy, .npz (with --images-key) or IDX (plain or .gz)")
    files.add_argument("--labels", metavar="PATH", help="integer labels [rows]: .npy, .npz (with --labels-key) or IDX; omit for an unlabelled source")
    files.add_argument("--npz", metavar="PATH", help="one .npz archive holding the images (--images-key) and optionally the labels (--labels-key)")
    files.add_argument("--images-key", metavar="KEY", help="array name of the images inside an .npz")
    files.add_argument("--labels-key", metavar="KEY", help="array name of the labels inside an .npz")

    text = parser.add_argument_group("text corpus (instead of arrays)")
    text.add_argument("--text", metavar="PATH", help="a corpus: .parquet, .jsonl, .tsv or .csv with a text field")
    text.add_argument("--text-field", default="text", metavar="NAME", help="the field holding each document (default: text)")
    text.add_argument("--prompt-field", metavar="NAME", help="a prompt field: prompt + text is the document, and only "
                      "positions that predict a text (response) token get targets")
    text.add_argument("--label-field", metavar="NAME", help="an integer class field (e.g. SST-2's label): a labelled source")
    text.add_argument("--tokenizer", metavar="DIR", help="local directory with the teacher's tokenizer.json (never downloaded)")
    text.add_argument("--max-length", type=int, metavar="N", help="tokens per row; a longer document is refused unless --truncate or --pack")
    fit = text.add_mutually_exclusive_group()
    fit.add_argument("--truncate", action="store_true", help="cut documents longer than --max-length")
    fit.add_argument("--pack", action="store_true", help="join documents (eos between them) into full rows of --max-length tokens")

    images = parser.add_argument_group("image files (instead of arrays)")
    images.add_argument("--image-folder", metavar="DIR", help="a folder of images: class sub-folders give labels (and class "
                        "names), files directly inside are unlabelled; stored as encoded bytes, unchanged (docs/vision.md)")
    images.add_argument("--skip-bad-images", action="store_true", help="leave out files that do not decode as images "
                        "(counted and named in the source's metadata) instead of refusing the folder")

    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, metavar="PATH", help="the Parquet file to write")
    output.add_argument("--input-column", default="pixels", metavar="NAME", help="name of the input column (default: pixels)")
    output.add_argument("--label-column", default="label", metavar="NAME", help="name of the int32 label column (default: label)")
    output.add_argument("--dtype", choices=("float16", "float32", "float64"), help="store inputs as this float type (default: keep the array's dtype, e.g. uint8)")
    output.add_argument("--row-group-rows", type=int, metavar="N", help="rows per Parquet row group (default: 32768; text: about 4M tokens)")
    output.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    select = parser.add_argument_group("row selection")
    select.add_argument("--rows", metavar="START:STOP", help="convert only input rows START..STOP-1 (e.g. 0:1000, 50000:)")
    select.add_argument("--exclude-class", type=int, action="append", default=[], metavar="K", help="drop rows labelled K (repeatable), e.g. Hinton's 'omit all 3s'")
    select.add_argument("--drop-labels", action="store_true", help="write an unlabelled source (no label column) from labelled files")


def run(args: argparse.Namespace) -> int:
    from transferset.convert import ConvertOptions, convert_files, parse_rows
    from transferset.errors import UserError

    if args.row_group_rows is not None and args.row_group_rows <= 0:
        raise UserError(f"--row-group-rows {args.row_group_rows} must be at least 1")
    if args.text:
        return _run_text(args)
    if args.image_folder:
        return _run_images(args)
    if args.skip_bad_images:
        raise UserError("--skip-bad-images is for --image-folder DIR")
    text_only = [flag for flag, value in (("--tokenizer", args.tokenizer), ("--max-length", args.max_length),
                 ("--prompt-field", args.prompt_field), ("--label-field", args.label_field),
                 ("--truncate", args.truncate), ("--pack", args.pack)) if value]
    if text_only:
        raise UserError(f"{text_only[0]} is for a text corpus; pass --text PATH")
    if args.npz and args.images:
        raise UserError("give --images or --npz, not both (--npz FILE --images-key KEY reads the images from the archive)")
    if not args.npz and not args.images:
        raise UserError("nothing to convert; pass --images PATH or --npz PATH --images-key KEY")
    images = args.npz or args.images
    labels = args.labels
    if args.labels_key and labels is None:
        if not args.npz:
            raise UserError("--labels-key names an array inside an .npz; pass --npz FILE or --labels FILE.npz")
        labels = args.npz

    options = ConvertOptions(
        input_column=args.input_column,
        label_column=args.label_column,
        rows=parse_rows(args.rows),
        exclude_classes=tuple(args.exclude_class),
        drop_labels=args.drop_labels,
        row_group_rows=args.row_group_rows or 32768,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    result = convert_files(images, args.out, labels, args.images_key, args.labels_key, options, quiet=args.quiet)

    shape = "x".join(str(d) for d in result.shape)
    label = f", {args.label_column} int32" if result.labelled else ", unlabelled"
    excluded = f" ({result.excluded_rows:,} rows of class {', '.join(map(str, sorted(set(args.exclude_class))))} left out)" if result.excluded_rows else ""
    print(f"wrote {result.path}: {result.rows:,} rows, {args.input_column} {result.dtype}[{shape}]{label}, row int64{excluded}")
    label_flag = f" --label-column {args.label_column}" if result.labelled and args.label_column != "label" else ""
    print(f"for generate: --source {result.path} --input-column {args.input_column} --input-shape {result.input_shape_hint}{label_flag}")
    print("the row column holds each row's index in the input files (--id-column row, when this is the only source)")
    if result.hint_note:
        print(f"note: {result.hint_note}")
    return 0


def _run_text(args: argparse.Namespace) -> int:
    from transferset.errors import UserError
    from transferset.text.convert import TextOptions, convert_text, summary
    from transferset.text.records import TextFields

    array_flags = [flag for flag, value in (("--images", args.images), ("--npz", args.npz), ("--labels", args.labels),
                   ("--rows", args.rows), ("--exclude-class", args.exclude_class), ("--dtype", args.dtype),
                   ("--image-folder", args.image_folder)) if value]
    if array_flags:
        raise UserError(f"{array_flags[0]} is for arrays, --text for a corpus: convert one of them per command")
    if not args.tokenizer or not args.max_length:
        raise UserError("--text needs --tokenizer DIR (the teacher's tokenizer) and --max-length N (tokens per row)")
    options = TextOptions(
        fields=TextFields(args.text_field, args.prompt_field, args.label_field),
        tokenizer=args.tokenizer,
        max_length=args.max_length,
        mode="pack" if args.pack else "truncate" if args.truncate else "rows",
        label_column=args.label_column,
        row_group_rows=args.row_group_rows,
        overwrite=args.overwrite,
    )
    result = convert_text(args.text, args.out, options, quiet=args.quiet)
    print(summary(result))
    label = f", {args.label_column} int32" if result.labelled else ""
    print(f"columns: input_ids int32[{args.max_length}], attention_mask and target_mask int8[{args.max_length}]{label}, row int64")
    return 0


def _run_images(args: argparse.Namespace) -> int:
    from transferset.errors import UserError
    from transferset.images.convert import ImageOptions, convert_image_folder

    other = [flag for flag, value in (("--images", args.images), ("--npz", args.npz), ("--labels", args.labels),
             ("--rows", args.rows), ("--exclude-class", args.exclude_class), ("--dtype", args.dtype), ("--drop-labels", args.drop_labels),
             ("--tokenizer", args.tokenizer), ("--max-length", args.max_length), ("--row-group-rows", args.row_group_rows)) if value]
    if other:
        raise UserError(f"{other[0]} does not apply to --image-folder (it stores each file's bytes with its class)")
    result = convert_image_folder(args.image_folder, args.out, ImageOptions(args.label_column, args.skip_bad_images, args.overwrite),
                                  quiet=args.quiet)
    classes = f", {len(result.class_names)} classes" if result.class_names else ", unlabelled"
    skipped = f"; skipped {len(result.skipped)} files that are not images" if result.skipped else ""
    print(f"wrote {result.path}: {result.rows:,} images ({result.labelled:,} labelled{classes}){skipped}")
    print(f"for generate: --source {result.path} --input-shape 3,H,W (the size images are decoded to) "
          f"[--input-scale 1/255 --input-mean ... --input-std ...]")
    return 0
