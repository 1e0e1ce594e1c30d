"""The bad-input catalogue: every row of docs/errors.md, run through the CLI.

docs/errors.md holds ONE table: an id, the command, the bad input and the stable
core of the message the user gets (every `backticked` fragment must appear in
stderr). This file holds, for the same ids, how to produce that input (`cases`).
`test_doc_and_cases_are_one_list` fails when either side has an id the other
lacks, so the documentation and the test cannot drift apart.

For every row the command must: exit with code 2, print exactly one line on
stderr holding the message, show no traceback, and leave nothing half-written
(no new `_manifest.json` / `part-*.parquet` in a generate output, no new
`student.pt` / `student.pt2` in a train output, no convert output file).

Most rows run in-process (`cli.main`, fast); SUBPROCESS rows also run in a fresh
interpreter, as a user runs them. ENVIRONMENT rows run with the environment
variables they name set (a launcher's, e.g. torchrun's WORLD_SIZE). The module
also holds the misbehaving student factories and transforms the rows name
(`test_errors_catalogue:...`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_cli, write_pixels_source

DOC = ROOT / "docs" / "errors.md"
COMMANDS = ("convert", "generate", "recombine", "inspect", "verify", "report", "ls", "card", "train", "eval")
# Rows also run in a fresh interpreter (each costs a torch import, ~2 s).
SUBPROCESS = ("convert-exclude-every-class", "generate-duplicate-ids", "inspect-manifest-not-json",
              "train-student-factory-raises", "train-batch-not-divisible-by-ranks", "eval-class-bias-out-of-range")

# Rows whose bad input is the environment a launcher sets, not a flag: the variables set while the row runs.
ENVIRONMENT = {"train-batch-not-divisible-by-ranks": {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}}

# Rows whose bad input is a missing optional dependency: modules made unimportable while the row runs.
MISSING_MODULES = {"report-matplotlib-missing": ("matplotlib",), "generate-engine-ray-missing": ("ray",)}

# Rows whose input is only bad on a machine without CUDA.
CPU_ONLY = ("generate-device-cuda-missing", "train-precision-fp16-cpu", "generate-devices-child-fails")

# -- misbehaving user code, named by the rows as test_errors_catalogue:NAME ------------


def lm_wrong_vocabulary(num_classes, input_shape):
    from train.gpt import gpt

    return gpt(num_classes=num_classes + 1, input_shape=input_shape, width=16, layers=1)


def lm_not_causal(num_classes, input_shape):
    import torch

    return torch.nn.Linear(input_shape[0], num_classes)


def raising_student(num_classes, input_shape, **kwargs):
    raise RuntimeError("CUDA out of memory (pretend)")


def wrong_shape_student(num_classes, input_shape):
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes + 3))


def flat_student(num_classes, input_shape):
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(0))  # [B, *shape] -> [B * D]: not [B, C]


def not_a_module_student(num_classes, input_shape):
    return {"layers": [800, 800]}


def forward_raises_student(num_classes, input_shape):
    import torch

    class Picky(torch.nn.Module):
        def forward(self, x):
            raise ValueError("expected a dict of tensors")

    return Picky()


def _pickled_pt2(root: Path) -> Path:
    """A torch.export archive whose bias is stored as a (harmless) pickle."""
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),))
    plain, pickled = root / "plain.pt2", root / "pickled.pt2"
    torch.export.save(program, str(plain))
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(pickled, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("_weights_config.json"):
                config = json.loads(data)
                config["config"]["1.bias"]["use_pickle"] = True
                data = json.dumps(config).encode()
            zout.writestr(name, data)
    return pickled


def raising_teacher():
    raise FileNotFoundError("weights.bin")


def wrong_shape_teacher():
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Unflatten(1, (5, 2)))  # [B, 5, 2]


def raising_transform(batch):
    raise KeyError("no such field")


def short_transform(batch):
    return np.zeros((max(batch.num_rows - 1, 0), 64), np.float32)


def string_transform(batch):
    return np.array([["a"] * 4] * batch.num_rows)


# -- fixtures: tiny files, made once -------------------------------------------------------

TEACHER = ["--teacher", "teacher_models:tiny_a"]
PIXELS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


def _main(argv) -> int:
    import contextlib
    import io

    import cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main([str(a) for a in argv] + ["--quiet"])
    assert code == 0, err.getvalue()
    return code


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "_manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _table(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _pixels(n: int, rng, dtype=np.uint8) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 16, n * 64).astype(dtype)), 64)


def make_fixtures(root: Path) -> dict[str, Path]:
    """Every input file the rows use; a transfer set, a finished run, and damaged copies."""
    rng = np.random.default_rng(7)
    f: dict[str, Path] = {}
    n = 37
    labels = rng.integers(0, 10, n)
    f["lab"] = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, (n, 64), dtype=np.uint8), labels.tolist())
    f["unl"] = write_pixels_source(root / "unl.parquet", rng.integers(0, 16, (23, 64), dtype=np.uint8))
    f["short"] = write_pixels_source(root / "short.parquet", np.zeros((5, 60), np.uint8), [0, 1, 2, 3, 4], fixed=False)
    f["str_labels"] = _table(root / "str_labels.parquet", pixels=_pixels(4, rng), label=pa.array(["a", "b", "c", "d"]))
    f["float_labels"] = _table(root / "float_labels.parquet", pixels=_pixels(4, rng), label=pa.array([0.0, 1.0, 2.5, 3.0]))
    f["neg_labels"] = _table(root / "neg_labels.parquet", pixels=_pixels(4, rng), label=pa.array([0, -1, 2, 3]))
    f["big_labels"] = _table(root / "big_labels.parquet", pixels=_pixels(4, rng), label=pa.array([0, 1, 2, 99]))
    f["null_labels"] = _table(root / "null_labels.parquet", pixels=_pixels(4, rng), label=pa.array([None] * 4, pa.int64()))
    f["zero_labels"] = _table(root / "zero_labels.parquet", pixels=_pixels(4, rng), label=pa.array([0] * 4))
    nan_pixels = rng.random((6, 64), dtype=np.float32)
    nan_pixels[3, 5] = np.nan
    huge = rng.random((6, 64))  # float64
    huge[2, 9] = 1e300
    f["huge_inputs"] = _table(root / "huge_inputs.parquet", pixels=pa.FixedSizeListArray.from_arrays(pa.array(huge.reshape(-1)), 64),
                              label=pa.array([0, 1, 2, 3, 4, 5]))
    f["nan_inputs"] = _table(root / "nan_inputs.parquet", pixels=pa.FixedSizeListArray.from_arrays(pa.array(nan_pixels.reshape(-1)), 64),
                             label=pa.array([0, 1, 2, 3, 4, 5]))
    f["dup_ids"] = _table(root / "dup_ids.parquet", pixels=_pixels(5, rng), label=pa.array([0, 1, 2, 3, 4]),
                          uid=pa.array(["a", "b", "c", "b", "e"]))
    f["reserved"] = _table(root / "reserved.parquet", logits=_pixels(3, rng), label=pa.array([0, 1, 2]))
    f["empty_file"] = _table(root / "empty_file.parquet", pixels=pa.array([], pa.list_(pa.uint8(), 64)), label=pa.array([], pa.int64()))
    f["null_ids"] = _table(root / "null_ids.parquet", pixels=_pixels(5, rng), label=pa.array([0, 1, 2, 3, 4]),
                           uid=pa.array(["a", "b", None, "d", "e"]))
    f["rows_a"] = _table(root / "rows_a.parquet", pixels=_pixels(5, rng), row=pa.array(np.arange(5)))
    f["rows_b"] = _table(root / "rows_b.parquet", pixels=_pixels(4, rng), row=pa.array(np.arange(4)))
    (root / "not_parquet.parquet").write_text("id,pixels\n1,2\n")
    f["not_parquet"] = root / "not_parquet.parquet"
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir()
    f["not_a_set"] = root / "not_a_set"
    f["not_a_set"].mkdir()
    (f["not_a_set"] / "notes.txt").write_text("hello\n")
    f["existing_out"] = root / "existing_out"
    f["existing_out"].mkdir()
    (f["existing_out"] / "keep.txt").write_text("not a transfer set\n")
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("x\n")
    f["pickled_pt2"] = _pickled_pt2(root)

    # arrays for convert
    np.save(root / "images.npy", rng.integers(0, 255, (30, 8, 8), dtype=np.uint8))
    np.save(root / "labels.npy", rng.integers(0, 3, 30))
    np.save(root / "labels_float.npy", rng.random(30))
    np.save(root / "labels_str.npy", np.array(["cat"] * 30))
    np.save(root / "labels_2d.npy", rng.integers(0, 3, (30, 2)))
    np.save(root / "labels_short.npy", rng.integers(0, 3, 29))
    np.save(root / "labels_neg.npy", np.r_[rng.integers(0, 3, 29), -4])
    np.save(root / "images_1d.npy", rng.random(30))
    np.save(root / "images_str.npy", np.array([["x"] * 4] * 30))
    images_nan = rng.random((30, 4, 4))
    images_nan[11, 2, 2] = np.nan
    np.save(root / "images_nan.npy", images_nan)
    np.save(root / "images_huge.npy", np.full((30, 4), 1e6))
    np.save(root / "images_empty.npy", np.zeros((0, 8, 8), np.uint8))
    (root / "truncated.npy").write_bytes((root / "images.npy").read_bytes()[:500])
    np.savez(root / "data.npz", x=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 30))
    (root / "bad-images-idx3-ubyte").write_bytes(b"PK\x03\x04garbage")
    (root / "images.csv").write_text("1,2,3\n")
    for name in ("images", "labels", "labels_float", "labels_str", "labels_2d", "labels_short", "labels_neg", "images_1d",
                 "images_str", "images_nan", "images_huge", "images_empty"):
        f[name] = root / f"{name}.npy"
    f["truncated"], f["npz"], f["bad_idx"], f["csv"] = root / "truncated.npy", root / "data.npz", root / "bad-images-idx3-ubyte", root / "images.csv"

    # transfer sets: arithmetic over labelled rows (2 shards), geometric over unlabelled rows
    f["set"] = root / "set"
    _main(["generate", *TEACHER, "--source", f["lab"], *PIXELS, "--combine", "arithmetic", "-T", "2", "--shard-rows", "20", "--out", f["set"]])
    # sets with their inputs by reference (generate --inputs reference), each with its own copy of the source
    for name in ("ref_missing", "ref_changed"):
        (root / name).mkdir()
        shutil.copy(f["lab"], root / name / "lab.parquet")
        f[f"set_{name}"] = root / f"set_{name}"
        _main(["generate", *TEACHER, "--source", root / name / "lab.parquet", *PIXELS, "--inputs", "reference", "--out", f[f"set_{name}"]])
    (root / "ref_missing" / "lab.parquet").unlink()
    pq.write_table(pq.read_table(root / "ref_changed" / "lab.parquet").slice(0, 20), root / "ref_changed" / "lab.parquet")
    f["set_unl"] = root / "set_unl"
    _main(["generate", *TEACHER, "--source", f["unl"], *PIXELS, "--out", f["set_unl"]])
    f["set_7_classes"] = root / "set_7_classes"
    _main(["generate", "--teacher", "teacher_models:seven_classes", "--source", f["unl"], *PIXELS, "--out", f["set_7_classes"]])
    f["set_incomplete"] = _copy(f["set"], root / "set_incomplete")
    (f["set_incomplete"] / "_manifest.json").unlink()
    f["set_bad_json"] = _copy(f["set"], root / "set_bad_json")
    (f["set_bad_json"] / "_manifest.json").write_text('{"format": "transferset-manifest", "rows": ')
    f["set_outside"] = _copy(f["set"], root / "set_outside")
    _edit_manifest(f["set_outside"], lambda d: d["shards"][0].update(path="../lab.parquet"))
    f["set_sequence"] = _copy(f["set"], root / "set_sequence")
    _edit_manifest(f["set_sequence"], lambda d: d["provenance"].update(target_kind="sequence"))
    from PIL import Image

    f["image_folder_empty"] = root / "no_images"
    f["image_folder_empty"].mkdir()
    f["image_folder_notes"] = root / "notes"
    f["image_folder_notes"].mkdir()
    (f["image_folder_notes"] / "README.txt").write_text("not an image\n")
    f["image_folder"] = root / "photos"
    for c in range(2):
        (f["image_folder"] / f"class{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(f["image_folder"] / f"class{c}" / f"{i}.png")
    f["image_folder_broken"] = _copy(f["image_folder"], root / "broken")
    (f["image_folder_broken"] / "class1" / "cut.png").write_bytes((f["image_folder"] / "class0" / "0.png").read_bytes()[:40])
    f["image_source"] = root / "image_source.parquet"
    _main(["convert", "--image-folder", f["image_folder"], "--out", f["image_source"]])
    f["set_v2"] = _copy(f["set"], root / "set_v2")
    _edit_manifest(f["set_v2"], lambda d: d.update(schema_version=2))
    f["set_missing_shard"] = _copy(f["set"], root / "set_missing_shard")
    (f["set_missing_shard"] / "part-00001.parquet").unlink()
    f["set_flipped"] = _copy(f["set"], root / "set_flipped")
    shard = f["set_flipped"] / "part-00000.parquet"
    # A byte inside the largest column chunk's page data (past its page header): a checksum
    # mismatch on read, whatever the encodings make of the file's layout (len // 3 could land
    # in a page header, which reads as "cannot be read as Parquet" instead).
    meta = pq.ParquetFile(shard).metadata.row_group(0)
    chunk = max((meta.column(i) for i in range(meta.num_columns)), key=lambda c: c.total_compressed_size)
    data = bytearray(shard.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    f["set_mixed"] = _mixed_versions(_copy(f["set"], root / "set_mixed"))
    f["set_truncated"] = _copy(f["set"], root / "set_truncated")
    shard = f["set_truncated"] / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    f["set_damaged_page"] = _damage_page_header(_copy(f["set"], root / "set_damaged_page"), "label")
    # The test process holds these locks (a flock conflicts between two open files even in
    # one process); claims made outside ownership.scope() last until the process exits.
    from transferset import ownership
    f["run_half_replaced"] = root / "run_half_replaced"
    (f["run_half_replaced"] / ownership.DISCARD).mkdir(parents=True)
    (f["run_half_replaced"] / ownership.DISCARD / "owner").write_text("train")
    f["locked_out"] = root / "locked_out"
    ownership.claim(f["locked_out"])
    f["locked_writer"] = root / "locked_writer"
    ownership.claim(f["locked_writer"], writer=(0, 2))
    f["locked_run"] = root / "locked_run"
    ownership.claim(f["locked_run"])
    f["locked_set"] = _copy(f["set"], root / "locked_set")
    ownership.claim(f["locked_set"], what="transfer set")
    f["set_shard_twice"] = _copy(f["set"], root / "set_shard_twice")
    _edit_manifest(f["set_shard_twice"], lambda d: d["shards"].append(d["shards"][0]))
    f["set_copied_shard"] = _copy(f["set"], root / "set_copied_shard")
    shutil.copy(f["set_copied_shard"] / "part-00000.parquet", f["set_copied_shard"] / "part-00009.parquet")
    _edit_manifest(f["set_copied_shard"], lambda d: d["shards"].append({**d["shards"][0], "path": "part-00009.parquet", "index": 9}))
    f["set_rows_short"] = _copy(f["set"], root / "set_rows_short")
    _edit_manifest(f["set_rows_short"], lambda d: d["shards"].pop())
    f["set_bad_field"] = _copy(f["set"], root / "set_bad_field")
    _edit_manifest(f["set_bad_field"], lambda d: d["provenance"].update(class_names=1.5))
    f["set_dup_id"] = _duplicate_an_id(_copy(f["set"], root / "set_dup_id"))
    f["set_symlinked_records"] = _copy(f["set_flipped"], root / "set_symlinked_records")
    shutil.rmtree(f["set_symlinked_records"] / "_shards")
    (f["set_symlinked_records"] / "_shards").symlink_to(f["set"] / "_shards")
    f["set_crc"] = _flip_page_bit(_copy(f["set"], root / "set_crc"), "logits")
    f["set_top3"] = root / "set_top3"
    _main(["generate", *TEACHER, "--source", f["lab"], *PIXELS, "--targets", "topk:3", "--out", f["set_top3"]])

    # text corpora and a tokenizer (convert --text)
    from text_fixtures import SENTENCES, save_tokenizer, write_jsonl

    f["tokenizer"] = save_tokenizer(root / "tokenizer")
    f["corpus"] = write_jsonl(root / "corpus.jsonl", [{"text": s, "label": i % 2} for i, s in enumerate(SENTENCES)])
    f["corpus_null"] = write_jsonl(root / "corpus_null.jsonl", [{"text": "fine"}, {"text": None}])
    f["corpus_tsv"] = root / "corpus.tsv"
    f["corpus_tsv"].write_text("sentence\tlabel\nfine\t1\nalso fine\t-1\n")
    f["corpus_txt"] = root / "corpus.txt"
    f["corpus_txt"].write_text("plain text\n")
    f["token_source"] = root / "tokens.parquet"
    _main(["convert", "--text", f["corpus"], "--tokenizer", f["tokenizer"], "--max-length", "64", "--out", f["token_source"]])
    f["set_tokens"] = root / "set_tokens"
    _main(["generate", "--teacher", "teacher_models:tiny_lm_a", "--source", f["token_source"], "--targets", "topk:2", "--out", f["set_tokens"]])

    # Hugging Face teacher directories, real up to the weights (no transformers import; tests/hf_fixtures.py)
    from hf_fixtures import fake_model

    f["hf_custom"] = fake_model(root / "hf_custom", auto_map={"AutoModelForCausalLM": "modeling.Mine"})
    f["hf_pickled"] = fake_model(root / "hf_pickled", weights="pytorch_model.bin")
    f["hf_padded"] = fake_model(root / "hf_padded", vocab_size=280)
    f["hf_untokenized"] = fake_model(root / "hf_untokenized")
    (f["hf_untokenized"] / "tokenizer.json").unlink()
    f["hf_base"] = fake_model(root / "hf_base", architectures=["GPT2Model"], model_type="gpt2")

    # a finished training run (for eval) and damaged copies
    f["run"] = root / "run"
    _main(["train", "--data", f["lab"], *PIXELS, "--student-arg", "hidden=8", "--epochs", "1", "--batch-size", "16", "--out", f["run"]])
    f["run_scale_1"] = root / "run_scale_1"
    _main(["train", "--data", f["lab"], "--input-column", "pixels", "--input-shape", "1,8,8", "--student-arg", "hidden=8",
           "--epochs", "1", "--batch-size", "16", "--out", f["run_scale_1"]])
    # a run on --data whose file is then rewritten with the same size, rows and schema (other labels)
    def same_layout(path: Path, labels) -> Path:
        pixels = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(37 * 64, dtype=np.uint8) % 16), 64)
        pq.write_table(pa.table({"pixels": pixels, "label": pa.array(labels, pa.int64())}), path,
                       compression="none", use_dictionary=False, write_statistics=False)
        return path

    f["changing"] = same_layout(root / "changing.parquet", [i % 10 for i in range(37)])
    f["run_changed_data"] = root / "run_changed_data"
    _main(["train", "--data", f["changing"], *PIXELS, "--student-arg", "hidden=8", "--epochs", "1", "--batch-size", "16",
           "--out", f["run_changed_data"]])
    same_layout(f["changing"], [(i + 1) % 10 for i in range(37)])
    f["run_unfinished"] = _copy(f["run"], root / "run_unfinished")
    (f["run_unfinished"] / "student.pt").unlink()
    f["run_bad_config"] = _copy(f["run"], root / "run_bad_config")
    (f["run_bad_config"] / "config.json").write_text("{not json")
    f["run_bad_weights"] = _copy(f["run"], root / "run_bad_weights")
    (f["run_bad_weights"] / "student.pt").write_bytes(b"\x00" * 64)
    f["run_mismatch"] = _copy(f["run"], root / "run_mismatch")
    config = json.loads((f["run_mismatch"] / "config.json").read_text())
    config["config"]["student_args"] = {"hidden": 16}
    (f["run_mismatch"] / "config.json").write_text(json.dumps(config))
    f["bad_checkpoint"] = root / "bad_checkpoint.pt"
    f["bad_checkpoint"].write_bytes(b"not a checkpoint")
    return f


def _flip_page_bit(directory: Path, column: str) -> Path:
    """Flip one bit in the middle of a column's first column chunk in shard 0 (inside the
    page body): only the page CRC can tell."""
    shard = directory / "part-00000.parquet"
    group = pq.ParquetFile(shard).metadata.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema.startswith(column))
    data = bytearray(shard.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x04
    shard.write_bytes(bytes(data))
    return directory


def _duplicate_an_id(directory: Path) -> Path:
    """Rewrite shard 1 with shard 0's first id in place of its own first, and restamp its
    size and checksum in the manifest: intact files, one id twice."""
    from transferset.io import file_sha256

    repeated = pq.read_table(directory / "part-00000.parquet").column("id")[0].as_py()
    shard = directory / "part-00001.parquet"
    table = pq.read_table(shard)
    ids = table.column("id").to_pylist()
    ids[0] = repeated
    table = table.set_column(table.schema.get_field_index("id"), table.schema.field("id"), pa.array(ids, pa.string()))
    pq.write_table(table, shard)
    _edit_manifest(directory, lambda d: d["shards"][1].update(bytes=shard.stat().st_size, sha256=file_sha256(shard)))
    return directory


def _damage_page_header(directory: Path, column: str) -> Path:
    """Flip the first bytes of a column's first page in shard 0: the footer still reads,
    the page does not (what a bad disk sector does)."""
    shard = directory / "part-00000.parquet"
    group = pq.ParquetFile(shard).metadata.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == column)
    data = bytearray(shard.read_bytes())
    for k in range(6):
        data[chunk.data_page_offset + k] ^= 0xFF
    shard.write_bytes(bytes(data))
    return directory


def _mixed_versions(directory: Path) -> Path:
    """Rewrite shard 1 with schema_version 2 in its metadata (and a matching record), as if
    a newer writer had added it to this set: consistent checksums, mixed versions."""
    from transferset.format.schema import METADATA_KEY
    from transferset.io import file_sha256

    shard = directory / "part-00001.parquet"
    table = pq.read_table(shard)
    provenance = json.loads(table.schema.metadata[METADATA_KEY])
    provenance["schema_version"] = 2
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(provenance)}), shard)

    def fix(doc):
        doc["shards"][1].update(bytes=shard.stat().st_size, sha256=file_sha256(shard))

    _edit_manifest(directory, fix)
    return directory


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("errors-fixtures"))


# -- the rows: id -> argv (f: fixture paths, o: a fresh output path) ---------------------------


def cases(f: dict[str, Path], o: Path) -> dict[str, list]:
    out = ["--out", o]
    gen = [*TEACHER, "--source", f["lab"], *PIXELS]
    data = ["train", "--data", f["lab"], *PIXELS, "--epochs", "1", "--student-arg", "hidden=8"]
    transfer = ["train", "--transfer", f["set"], "--epochs", "1", "--student-arg", "hidden=8"]
    tok = ["--tokenizer", f["tokenizer"], "--max-length", "64"]
    lm = ["train", "--transfer", f["set_tokens"], "--student", "train.students:gpt", "--epochs", "1"]
    return {
        # convert
        "convert-no-input": ["convert", *out],
        "convert-images-and-npz": ["convert", "--images", f["images"], "--npz", f["npz"], *out],
        "convert-images-directory": ["convert", "--images", f["empty_dir"], *out],
        "convert-labels-npz-without-key": ["convert", "--images", f["images"], "--labels", f["npz"], *out],
        "convert-images-missing": ["convert", "--images", o.parent / "nope.npy", *out],
        "convert-unknown-file-type": ["convert", "--images", f["csv"], *out],
        "convert-not-idx": ["convert", "--images", f["bad_idx"], *out],
        "convert-truncated-npy": ["convert", "--images", f["truncated"], *out],
        "convert-images-1d": ["convert", "--images", f["images_1d"], *out],
        "convert-images-strings": ["convert", "--images", f["images_str"], *out],
        "convert-images-empty": ["convert", "--images", f["images_empty"], *out],
        "convert-images-nan": ["convert", "--images", f["images_nan"], *out],
        "convert-float16-overflow": ["convert", "--images", f["images_huge"], "--dtype", "float16", *out],
        "convert-labels-float": ["convert", "--images", f["images"], "--labels", f["labels_float"], *out],
        "convert-labels-strings": ["convert", "--images", f["images"], "--labels", f["labels_str"], *out],
        "convert-labels-2d": ["convert", "--images", f["images"], "--labels", f["labels_2d"], *out],
        "convert-labels-count": ["convert", "--images", f["images"], "--labels", f["labels_short"], *out],
        "convert-labels-negative": ["convert", "--images", f["images"], "--labels", f["labels_neg"], *out],
        "convert-exclude-every-class": ["convert", "--images", f["images"], "--labels", f["labels"],
                                        "--exclude-class", "0", "--exclude-class", "1", "--exclude-class", "2", *out],
        "convert-exclude-without-labels": ["convert", "--images", f["images"], "--exclude-class", "3", *out],
        "convert-drop-labels-without-labels": ["convert", "--images", f["images"], "--drop-labels", *out],
        "convert-rows-syntax": ["convert", "--images", f["images"], "--rows", "ten:20", *out],
        "convert-rows-range": ["convert", "--images", f["images"], "--rows", "10:500", *out],
        "convert-row-group-rows-zero": ["convert", "--images", f["images"], "--row-group-rows", "0", *out],
        "convert-row-group-rows-letters": ["convert", "--images", f["images"], "--row-group-rows", "many", *out],
        "convert-dtype-unknown": ["convert", "--images", f["images"], "--dtype", "int8", *out],
        "convert-npz-key-missing": ["convert", "--npz", f["npz"], "--images-key", "pixels", *out],
        "convert-labels-key-without-npz": ["convert", "--images", f["images"], "--labels-key", "y", *out],
        "convert-columns-clash": ["convert", "--images", f["images"], "--labels", f["labels"], "--label-column", "pixels", *out],
        "convert-out-exists": ["convert", "--images", f["images"], "--out", f["a_file"]],
        "convert-out-is-input": ["convert", "--images", f["images"], "--out", f["images"], "--overwrite"],
        "convert-text-tokenizer-missing": ["convert", "--text", f["corpus"], "--tokenizer", f["empty_dir"] / "nowhere", "--max-length", "64", *out],
        "convert-text-no-tokenizer-json": ["convert", "--text", f["corpus"], "--tokenizer", f["empty_dir"], "--max-length", "64", *out],
        "convert-text-field-missing": ["convert", "--text", f["corpus"], "--text-field", "body", *tok, *out],
        "convert-text-null": ["convert", "--text", f["corpus_null"], *tok, *out],
        "convert-text-too-long": ["convert", "--text", f["corpus"], "--tokenizer", f["tokenizer"], "--max-length", "3", *out],
        "convert-text-pack-with-labels": ["convert", "--text", f["corpus"], "--label-field", "label", "--pack", *tok, *out],
        "convert-text-max-length-one": ["convert", "--text", f["corpus"], "--tokenizer", f["tokenizer"], "--max-length", "1", *out],
        "convert-text-and-images": ["convert", "--text", f["corpus"], "--images", f["images"], *tok, *out],
        "convert-text-no-tokenizer": ["convert", "--text", f["corpus"], "--max-length", "64", *out],
        "convert-text-bad-label": ["convert", "--text", f["corpus_tsv"], "--text-field", "sentence", "--label-field", "label", *tok, *out],
        "convert-text-unknown-format": ["convert", "--text", f["corpus_txt"], *tok, *out],
        "convert-tokenizer-without-text": ["convert", "--images", f["images"], "--tokenizer", f["tokenizer"], *out],
        # generate
        "generate-no-teacher": ["generate", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-missing": ["generate", "--teacher", o.parent / "teacher.pt2", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-runs-code": ["generate", "--teacher", f["pickled_pt2"], "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-not-a-model": ["generate", "--teacher", f["a_file"], "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-factory-raises": ["generate", "--teacher", "test_errors_catalogue:raising_teacher", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-wrong-shape": ["generate", "--teacher", "test_errors_catalogue:wrong_shape_teacher", "--source", f["lab"], *PIXELS, *out],
        "generate-teachers-disagree": ["generate", *gen, "--teacher", "teacher_models:seven_classes", *out],
        "generate-weights-before-teacher": ["generate", "--weights", f["a_file"], *gen, *out],
        "generate-duplicate-ids": ["generate", *TEACHER, "--source", f["dup_ids"], *PIXELS, "--id-column", "uid", *out],
        "generate-duplicate-ids-across-sources": ["generate", *TEACHER, "--source", f["rows_a"], "--source", f["rows_b"], *PIXELS,
                                                  "--id-column", "row", *out],
        "generate-null-ids": ["generate", *TEACHER, "--source", f["null_ids"], *PIXELS, "--id-column", "uid", *out],
        "generate-id-column-missing": ["generate", *gen, "--id-column", "uid", *out],
        "generate-source-empty-dir": ["generate", *TEACHER, "--source", f["empty_dir"], *PIXELS, *out],
        "generate-source-glob-no-match": ["generate", *TEACHER, "--source", str(o.parent / "*.nothing.parquet"), *PIXELS, *out],
        "generate-source-not-parquet": ["generate", *TEACHER, "--source", f["not_parquet"], *PIXELS, *out],
        "generate-source-empty-file": ["generate", *TEACHER, "--source", f["empty_file"], *PIXELS, *out],
        "generate-labels-strings": ["generate", *TEACHER, "--source", f["str_labels"], *PIXELS, *out],
        "generate-labels-outside-classes": ["generate", *TEACHER, "--source", f["big_labels"], *PIXELS, *out],
        "generate-labels-float": ["generate", *TEACHER, "--source", f["float_labels"], *PIXELS, *out],
        "generate-labels-negative": ["generate", *TEACHER, "--source", f["neg_labels"], *PIXELS, *out],
        "generate-nan-inputs": ["generate", *TEACHER, "--source", f["nan_inputs"], "--input-shape", "1,8,8", *out],
        "generate-input-shape-zero": ["generate", *TEACHER, "--source", f["lab"], "--input-shape", "1,0,8", *out],
        "generate-input-shape-letters": ["generate", *TEACHER, "--source", f["lab"], "--input-shape", "1,h,w", *out],
        "generate-input-scale-letters": ["generate", *TEACHER, "--source", f["lab"], "--input-shape", "1,8,8", "--input-scale", "a/b", *out],
        "generate-input-scale-zero-division": ["generate", *TEACHER, "--source", f["lab"], "--input-shape", "1,8,8", "--input-scale", "1/0", *out],
        "generate-input-mean-count": ["generate", *gen, "--input-mean", "0.1,0.2", *out],
        "generate-input-std-zero": ["generate", *gen, "--input-std", "0", *out],
        "generate-input-column-reserved": ["generate", *TEACHER, "--source", f["reserved"], "--input-column", "logits",
                                           "--input-shape", "1,8,8", *out],
        "generate-input-column-missing": ["generate", *TEACHER, "--source", f["lab"], "--input-column", "image", "--input-shape", "1,8,8", *out],
        "generate-input-wrong-size": ["generate", *TEACHER, "--source", f["short"], *PIXELS, *out],
        "generate-two-input-columns": ["generate", *gen, "--input-column", "label", *out],
        "generate-transform-raises": ["generate", *TEACHER, "--source", f["lab"], "--input-column", "pixels",
                                      "--transform", "test_errors_catalogue:raising_transform", *out],
        "generate-transform-wrong-rows": ["generate", *TEACHER, "--source", f["lab"], "--input-column", "pixels",
                                          "--transform", "test_errors_catalogue:short_transform", *out],
        "generate-transform-strings": ["generate", *TEACHER, "--source", f["lab"], "--input-column", "pixels",
                                       "--transform", "test_errors_catalogue:string_transform", *out],
        "generate-transform-not-callable": ["generate", *TEACHER, "--source", f["lab"], "--input-column", "pixels",
                                            "--transform", "numpy:pi", *out],
        "generate-batch-size-negative": ["generate", *gen, "--batch-size", "-5", *out],
        "generate-combine-unknown": ["generate", *gen, "--combine", "median", *out],
        "generate-storage-dtype": ["generate", *gen, "--storage-dtype", "int8", *out],
        "generate-temperature-nan": ["generate", *gen, "-T", "nan", *out],
        "generate-shard-rows-zero": ["generate", *gen, "--shard-rows", "0", *out],
        "generate-writer-index": ["generate", *gen, "--num-writers", "2", "--writer-index", "2", *out],
        "generate-precision-unknown": ["generate", *gen, "--precision", "fp8", *out],
        "generate-teacher-weight-negative": ["generate", *TEACHER, "--teacher-weight", "-1", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-weight-letters": ["generate", *TEACHER, "--teacher-weight", "heavy", "--source", f["lab"], *PIXELS, *out],
        "generate-class-names-count": ["generate", *gen, "--class-names", "a,b,c", *out],
        "generate-device-cuda-missing": ["generate", *gen, "--device", "cuda:3", *out],
        "generate-device-unknown": ["generate", *gen, "--device", "tpu", *out],
        "generate-threads-zero": ["generate", *gen, "--threads", "0", *out],
        "generate-out-not-a-set": ["generate", *gen, "--out", f["existing_out"]],
        "generate-input-contradicts-teacher": ["generate", "--teacher", f["run"] / "student.pt2", "--source", f["lab"], "--input-scale", "1", *out],
        "generate-teachers-declare-different-inputs": ["generate", "--teacher", f["run"] / "student.pt2", "--teacher", f["run_scale_1"] / "student.pt2", "--source", f["lab"], *out],
        "generate-teacher-output-ambiguous-tuple": ["generate", "--teacher", "test_teacher_outputs:tuple_teacher", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-output-ambiguous-dict": ["generate", "--teacher", "test_teacher_outputs:dict_teacher", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-output-bad-index": ["generate", "--teacher", "test_teacher_outputs:tuple_teacher", "--teacher-output", "2", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-output-bad-key": ["generate", "--teacher", "test_teacher_outputs:dict_teacher", "--teacher-output", "logits", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-output-not-a-container": ["generate", *TEACHER, "--teacher-output", "0", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-output-before-teacher": ["generate", "--teacher-output", "0", *TEACHER, "--source", f["lab"], *PIXELS, *out],
        "generate-input-overflows-float32": ["generate", *TEACHER, "--source", f["huge_inputs"], *PIXELS, *out],
        "convert-out-below-a-file": ["convert", "--images", f["images"], "--out", f["a_file"] / "x.parquet"],
        "convert-image-folder-empty": ["convert", "--image-folder", f["image_folder_empty"], *out],
        "convert-image-folder-not-a-folder": ["convert", "--image-folder", f["lab"], *out],
        "convert-image-folder-not-an-image": ["convert", "--image-folder", f["image_folder_notes"], *out],
        "convert-image-folder-broken-image": ["convert", "--image-folder", f["image_folder_broken"], *out],
        "convert-image-folder-nothing-left": ["convert", "--image-folder", f["image_folder_notes"], "--skip-bad-images", *out],
        "convert-image-folder-with-array-flags": ["convert", "--image-folder", f["image_folder"], "--rows", "0:2", *out],
        "convert-skip-bad-images-without-folder": ["convert", "--images", f["lab"], "--skip-bad-images", *out],
        "generate-engine-unknown": ["generate", *gen, "--engine", "spark", *out],
        "generate-engine-ray-missing": ["generate", *gen, "--engine", "ray", *out],  # with MISSING_MODULES
        "generate-ray-address-unreachable": ["generate", *gen, "--engine", "ray", "--ray-address", "127.0.0.1:1", *out],
        "generate-ray-flag-without-engine": ["generate", *gen, "--ray-actors", "2", *out],
        "generate-ray-actors-zero": ["generate", *gen, "--engine", "ray", "--ray-actors", "0", *out],
        "generate-views-with-ray": ["generate", *gen, "--engine", "ray", "--views", "2", "--augment", "hflip", *out],
        "generate-devices-and-device": ["generate", *gen, "--devices", "cpu,cpu", "--device", "cpu", *out],
        "generate-devices-and-writers": ["generate", *gen, "--devices", "cpu,cpu", "--num-writers", "2", *out],
        "generate-devices-and-ray": ["generate", *gen, "--devices", "cpu,cpu", "--engine", "ray", *out],
        "generate-devices-not-a-device": ["generate", *gen, "--devices", "cpu,gpu0", *out],
        "generate-devices-child-fails": ["generate", *gen, "--devices", "cuda:0,cuda:1", *out],  # CPU_ONLY
        "generate-image-source-without-shape": ["generate", *TEACHER, "--source", f["image_source"], *out],
        "generate-image-source-channels": ["generate", *TEACHER, "--source", f["image_source"], "--input-shape", "2,8,8", *out],
        "generate-views-zero": ["generate", *gen, "--views", "0", "--augment", "shift(2)", *out],
        "generate-views-without-augment": ["generate", *gen, "--views", "4", *out],
        "generate-augment-without-views": ["generate", *gen, "--augment", "shift(2)", *out],
        "generate-augment-unknown": ["generate", *gen, "--views", "4", "--augment", "cutout(3)", *out],
        "generate-augment-color-jitter-out-of-range": ["generate", *gen, "--views", "2", "--augment", "color-jitter(brightness=12)", *out],
        "generate-augment-color-jitter-nothing": ["generate", *gen, "--views", "2", "--augment", "color-jitter", *out],
        "generate-augment-saturation-grey": ["generate", *gen, "--views", "2", "--augment", "color-jitter(saturation=0.4)", *out],
        "generate-augment-color-jitter-pixel-scale": ["generate", *TEACHER, "--source", f["image_source"], "--input-shape", "1,8,8",
                                                      "--views", "2", "--augment", "color-jitter(brightness=0.4)", *out],
        "generate-augment-out-of-range": ["generate", *gen, "--views", "4", "--augment", "shift(99)", *out],
        "generate-augment-scale-out-of-range": ["generate", *gen, "--views", "4", "--augment", "random-resized-crop(8,scale=0.5-2)", *out],
        "generate-augment-wrong-size": ["generate", *gen, "--views", "4", "--augment", "random-resized-crop(16)", *out],
        "generate-augment-flat-inputs": ["generate", *TEACHER, "--source", f["lab"], "--input-shape", "64", "--views", "4", "--augment", "hflip", *out],
        "generate-views-sampled": ["generate", *gen, "--views", "4", "--augment", "hflip", "--targets", "sampled:8", *out],
        "generate-views-keep-teacher-logits": ["generate", *gen, "--views", "4", "--augment", "hflip", "--keep-teacher-logits", *out],
        "generate-targets-views-kind": ["generate", *gen, "--targets", "views:2", *out],
        "generate-views-topk-all-classes": ["generate", *gen, "--views", "2", "--augment", "hflip", "--targets", "topk:10", *out],
        "generate-teacher-form-unknown": ["generate", "--teacher", f"onnx:{f['a_file']}", "--source", f["lab"], *PIXELS, *out],
        "generate-out-is-a-file": ["generate", *gen, "--out", f["a_file"]],
        "generate-out-other-config": ["generate", *gen, "-T", "5", "--out", f["set"]],
        "generate-targets-topk-zero": ["generate", *gen, "--targets", "topk:0", *out],
        "generate-targets-topk-not-a-number": ["generate", *gen, "--targets", "topk:x", *out],
        "generate-targets-topk-all-classes": ["generate", *gen, "--targets", "topk:10", *out],
        "generate-targets-sampled-too-many": ["generate", *gen, "--targets", "sampled:40000", *out],
        "generate-targets-reserved-kind": ["generate", *gen, "--targets", "sequence:2", *out],
        "generate-specialist-class-outside": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,5,12", "--combine", "specialists", *out],
        "generate-specialist-class-repeated": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,5,3", "--combine", "specialists", *out],
        "generate-specialist-wrong-width": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,5", "--combine", "specialists", *out],
        "generate-specialist-all-classes": ["generate", *gen, "--specialist", "teacher_models:tiny_b", "--classes", "0,1,2,3,4,5,6,7,8,9", "--combine", "specialists", *out],
        "generate-specialist-without-generalist": ["generate", "--specialist", "test_specialists:spec_a", "--classes", "3,5,8", "--combine", "specialists", "--source", f["lab"], *PIXELS, *out],
        "generate-specialists-without-specialist": ["generate", *gen, "--combine", "specialists", *out],
        "generate-specialist-other-combine": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,5,8", "--combine", "arithmetic", *out],
        "generate-specialist-keep-teacher-logits": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,5,8", "--combine", "specialists", "--keep-teacher-logits", *out],
        "generate-classes-before-specialist": ["generate", *gen, "--classes", "3,5,8", "--combine", "specialists", *out],
        "generate-specialist-without-classes": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--combine", "specialists", *out],
        "generate-classes-letters": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,five", "--combine", "specialists", *out],
        "generate-specialist-top-zero": ["generate", *gen, "--specialist", "test_specialists:spec_a", "--classes", "3,5,8", "--combine", "specialists", "--specialist-top", "0", *out],
        "generate-hf-teacher-missing": ["generate", "--teacher", f"hf:{f['empty_dir'] / 'gpt2'}", "--source", f["lab"], *PIXELS, *out],
        "generate-hf-teacher-no-config": ["generate", "--teacher", f"hf:{f['empty_dir']}", "--source", f["lab"], *PIXELS, *out],
        "generate-teacher-directory": ["generate", "--teacher", f["empty_dir"], "--source", f["lab"], *PIXELS, *out],
        "generate-hf-teacher-custom-code": ["generate", "--teacher", f"hf:{f['hf_custom']}", "--source", f["lab"], *PIXELS, *out],
        "generate-hf-teacher-pickle-only": ["generate", "--teacher", f"hf:{f['hf_pickled']}", "--source", f["lab"], *PIXELS, *out],
        "generate-hf-teacher-no-tokenizer": ["generate", "--teacher", f"hf:{f['hf_untokenized']}", "--source", f["lab"], *PIXELS, *out],
        "generate-hf-teacher-vocab-size": ["generate", "--teacher", f"hf:{f['hf_padded']}", "--source", f["lab"], *PIXELS, *out],
        "generate-hf-teacher-architecture": ["generate", "--teacher", f"hf:{f['hf_base']}", "--source", f["lab"], *PIXELS, *out],
        "generate-tokens-keep-teacher-logits": ["generate", "--teacher", "teacher_models:tiny_lm_a", "--source", f["token_source"], "--keep-teacher-logits", *out],
        "generate-max-tokens-and-batch-size": ["generate", "--teacher", "teacher_models:tiny_lm_a", "--source", f["token_source"], "--max-tokens-per-batch", "640", "--batch-size", "4", *out],
        "generate-max-tokens-not-tokens": ["generate", *gen, "--max-tokens-per-batch", "640", *out],
        "generate-max-tokens-below-a-row": ["generate", "--teacher", "teacher_models:tiny_lm_a", "--source", f["token_source"], "--max-tokens-per-batch", "10", *out],
        # recombine
        "recombine-members-out-of-range": ["recombine", f["set"], "--members", "0,1", *out],
        "recombine-members-empty": ["recombine", f["set"], "--members", "", *out],
        "recombine-unknown-combine": ["recombine", f["set"], "--combine", "median", *out],
        "recombine-combine-specialists": ["recombine", f["set"], "--combine", "specialists", *out],
        "recombine-weights-count": ["recombine", f["set"], "--weights", "1,2", *out],
        "recombine-no-member-logits": ["recombine", f["set"], "-T", "3", *out],
        "recombine-source-damaged": ["recombine", f["set_flipped"], *out],
        "recombine-source-incomplete": ["recombine", f["set_incomplete"], *out],
        "recombine-out-not-a-set": ["recombine", f["set_unl"], "-T", "3", "--out", f["existing_out"]],
        "recombine-out-other-set": ["recombine", f["set_unl"], "-T", "3", "--out", f["set_7_classes"]],
        "recombine-out-is-source": ["recombine", f["set_unl"], "-T", "3", "--out", f["set_unl"]],
        "recombine-sparse-set": ["recombine", f["set_top3"], "-T", "3", *out],
        # report
        "report-no-out": ["report", f["set"]],
        "report-not-a-set": ["report", f["not_a_set"], *out],
        "report-damaged-shard": ["report", f["set_flipped"], *out],
        "report-target-kind-sequence": ["report", f["set_sequence"], *out],
        "report-out-is-a-file": ["report", f["set"], "--out", f["a_file"]],
        "report-out-not-a-report": ["report", f["set"], "--out", f["existing_out"]],
        "report-out-below-a-file": ["report", f["set"], "--out", f["a_file"] / "report"],
        "report-matplotlib-missing": ["report", f["set"], *out],  # with MISSING_MODULES
        "report-per-token": ["report", f["set_tokens"], *out],
        "report-sparse-set": ["report", f["set_top3"], *out],
        # inspect
        "inspect-missing": ["inspect", o.parent / "no-such-set"],
        "inspect-a-file": ["inspect", f["lab"]],
        "inspect-empty-dir": ["inspect", f["empty_dir"]],
        "inspect-not-a-set": ["inspect", f["not_a_set"]],
        "inspect-incomplete": ["inspect", f["set_incomplete"]],
        "inspect-manifest-not-json": ["inspect", f["set_bad_json"]],
        "inspect-path-outside": ["inspect", f["set_outside"]],
        "inspect-target-kind-sequence": ["inspect", f["set_sequence"]],
        "inspect-schema-version": ["inspect", f["set_v2"]],
        "inspect-mixed-schema-versions": ["inspect", f["set_mixed"]],
        "inspect-missing-shard": ["inspect", f["set_missing_shard"]],
        "inspect-truncated-shard": ["inspect", f["set_truncated"]],
        "inspect-damaged-page": ["inspect", f["set_damaged_page"]],
        # verify
        "verify-reference-source-missing": ["verify", f["set_ref_missing"]],
        "verify-reference-source-changed": ["verify", f["set_ref_changed"]],
        "verify-missing": ["verify", o.parent / "no-such-set"],
        "verify-empty-dir": ["verify", f["empty_dir"]],
        "verify-not-a-set": ["verify", f["not_a_set"]],
        "verify-manifest-not-json": ["verify", f["set_bad_json"]],
        "verify-path-outside": ["verify", f["set_outside"]],
        "verify-target-kind-sequence": ["verify", f["set_sequence"]],
        "verify-flipped-byte": ["verify", f["set_flipped"]],
        "verify-missing-shard": ["verify", f["set_missing_shard"]],
        "verify-truncated-shard": ["verify", f["set_truncated"]],
        "verify-mixed-schema-versions": ["verify", f["set_mixed"]],
        # card and ls
        "card-not-a-set": ["card", f["not_a_set"]],
        "card-incomplete": ["card", f["set_incomplete"]],
        "card-description-file-missing": ["card", f["set"], "--description-file", o.parent / "no-such.md"],
        "ls-missing": ["ls", o.parent / "no-such-root"],
        "ls-a-file": ["ls", f["lab"]],
        # train
        "inspect-invalid-provenance-field": ["inspect", f["set_bad_field"]],
        "verify-shard-listed-twice": ["verify", f["set_shard_twice"]],
        "verify-copied-shard": ["verify", f["set_copied_shard"]],
        "verify-rows-short": ["verify", f["set_rows_short"]],
        "verify-duplicate-id": ["verify", f["set_dup_id"]],
        "verify-drop-bad-symlinked-records": ["verify", f["set_symlinked_records"], "--drop-bad"],
        "train-transfer-shard-listed-twice": ["train", "--transfer", f["set_shard_twice"], *out],
        "train-transfer-flipped-bit-no-verify": ["train", "--transfer", f["set_crc"], "--no-verify", "--epochs", "1", *out],
        "generate-out-interrupted-train-overwrite": ["generate", *gen, "--out", f["run_half_replaced"]],
        "generate-out-in-use": ["generate", *gen, "--out", f["locked_out"]],
        "generate-writer-index-in-use": ["generate", *gen, "--num-writers", "2", "--writer-index", "0", "--out", f["locked_writer"]],
        "train-out-in-use": [*data, "--out", f["locked_run"]],
        "verify-drop-bad-in-use": ["verify", f["locked_set"], "--drop-bad"],
        "train-data-content-changed": ["train", "--data", f["changing"], *PIXELS, "--student-arg", "hidden=8", "--epochs", "1",
                                       "--batch-size", "16", "--out", f["run_changed_data"]],
        "train-diverged-exploding": [*data, "--epochs", "3", "--batch-size", "4", "--lr", "50", *out],
        "train-diverged-collapsed": [*data, "--epochs", "3", "--batch-size", "1", "--lr", "1e-7", *out],
        "train-no-data": ["train", *out],
        "train-transfer-and-data": [*transfer, "--data", f["lab"], *out],
        "train-data-without-shape": ["train", "--data", f["lab"], *out],
        "train-input-flags-with-transfer": [*transfer, "--input-shape", "1,8,8", *out],
        "train-transfer-empty-dir": ["train", "--transfer", f["empty_dir"], *out],
        "train-reference-source-missing": ["train", "--transfer", f["set_ref_missing"], "--epochs", "1", *out],
        "train-reference-source-changed": ["train", "--transfer", f["set_ref_changed"], "--epochs", "1", *out],
        "train-reference-source-changed-no-verify": ["train", "--transfer", f["set_ref_changed"], "--no-verify", "--epochs", "1", *out],
        "train-reference-source-root-wrong": ["train", "--transfer", f["set_ref_missing"], "--source-root", f["empty_dir"], "--epochs", "1", *out],
        "train-transfer-not-a-set": ["train", "--transfer", f["not_a_set"], *out],
        "train-transfer-is-parquet": ["train", "--transfer", f["lab"], *out],
        "train-transfer-manifest-not-json": ["train", "--transfer", f["set_bad_json"], *out],
        "train-transfer-path-outside": ["train", "--transfer", f["set_outside"], *out],
        "train-transfer-sequence": ["train", "--transfer", f["set_sequence"], *out],
        "train-transfer-flipped-byte": ["train", "--transfer", f["set_flipped"], *out],
        "train-transfer-truncated-no-verify": ["train", "--transfer", f["set_truncated"], "--no-verify", *out],
        "train-transfer-damaged-page-no-verify": ["train", "--transfer", f["set_damaged_page"], "--no-verify", "--epochs", "1", *out],
        "train-transfer-mixed-schema-versions": ["train", "--transfer", f["set_mixed"], *out],
        "train-labels-strings": ["train", "--data", f["str_labels"], *PIXELS, *out],
        "train-labels-float": ["train", "--data", f["float_labels"], *PIXELS, *out],
        "train-labels-negative": ["train", "--data", f["neg_labels"], *PIXELS, *out],
        "train-labels-all-null": ["train", "--data", f["null_labels"], *PIXELS, *out],
        "train-labels-one-class": ["train", "--data", f["zero_labels"], *PIXELS, *out],
        "train-num-classes-too-small": [*data, "--num-classes", "3", *out],
        "train-data-empty-dir": ["train", "--data", f["empty_dir"], *PIXELS, *out],
        "train-data-not-parquet": ["train", "--data", f["not_parquet"], *PIXELS, *out],
        "train-label-column-missing": [*data, "--label-column", "digit", *out],
        "train-nan-inputs": ["train", "--data", f["nan_inputs"], "--input-shape", "1,8,8", *out],
        "train-input-wrong-size": ["train", "--data", f["short"], "--input-shape", "1,8,8", *out],
        "train-input-shape-zero": ["train", "--data", f["lab"], "--input-shape", "0,8,8", *out],
        "train-input-shape-letters": ["train", "--data", f["lab"], "--input-shape", "one,8,8", *out],
        "train-input-scale-letters": ["train", "--data", f["lab"], "--input-shape", "1,8,8", "--input-scale", "tiny", *out],
        "train-input-scale-infinite": ["train", "--data", f["lab"], "--input-shape", "1,8,8", "--input-scale", "inf", *out],
        "train-batch-size-zero": [*data, "--batch-size", "0", *out],
        "train-batch-size-negative": [*data, "--batch-size", "-128", *out],
        "train-epochs-zero": [*data, "--epochs", "0", *out],
        "train-alpha-outside": [*transfer, "--alpha", "1.5", *out],
        "train-alpha-without-labels": ["train", "--transfer", f["set_unl"], "--alpha", "0.5", *out],
        "train-mse-on-arithmetic": [*transfer, "--loss", "mse", *out],
        "train-temperature-on-arithmetic": [*transfer, "-T", "7", *out],
        "train-soft-flags-with-data": [*data, "--alpha", "0.5", *out],
        "train-lr-nan": [*data, "--lr", "nan", *out],
        "train-workers-negative": [*data, "--workers", "-1", *out],
        "train-warmup-both": [*data, "--warmup-steps", "3", "--warmup-fraction", "0.1", *out],
        "train-num-classes-with-transfer": [*transfer, "--num-classes", "10", *out],
        "train-student-module-missing": [*data, "--student", "no_such_pkg.nets:mlp", *out],
        "train-student-not-a-factory": [*data, "--student", "train.students", *out],
        "train-student-factory-raises": [*data, "--student", "test_errors_catalogue:raising_student", *out],
        "train-student-wrong-classes": ["train", "--data", f["lab"], *PIXELS, "--student", "test_errors_catalogue:wrong_shape_student", *out],
        "train-student-flat-output": ["train", "--data", f["lab"], *PIXELS, "--student", "test_errors_catalogue:flat_student", *out],
        "train-student-not-a-module": ["train", "--data", f["lab"], *PIXELS, "--student", "test_errors_catalogue:not_a_module_student", *out],
        "train-student-forward-raises": ["train", "--data", f["lab"], *PIXELS, "--student", "test_errors_catalogue:forward_raises_student", *out],
        "train-student-arg-unknown": [*data, "--student-arg", "depth=3", *out],
        "train-student-arg-malformed": [*data, "--student-arg", "hidden", *out],
        "train-student-arg-trainer-key": [*data, "--student-arg", "num_classes=3", *out],
        "train-student-arg-bad-value": [*data, "--student-arg", "dropout=lots", *out],
        "train-cnn-on-flat-inputs": ["train", "--data", f["lab"], "--input-shape", "64", "--student", "train.students:cnn", *out],
        "train-transform-raises": ["train", "--data", f["lab"], "--transform", "test_errors_catalogue:raising_transform", *out],
        "train-transform-wrong-rows": ["train", "--data", f["lab"], "--transform", "test_errors_catalogue:short_transform", *out],
        "train-jitter-flat-inputs": ["train", "--data", f["lab"], "--input-shape", "64", "--jitter", "2", *out],
        "train-precision-fp16-cpu": [*data, "--precision", "fp16", *out],
        "train-batch-not-divisible-by-ranks": [*data, "--batch-size", "10", *out],  # with ENVIRONMENT's torchrun variables
        "train-eval-without-labels": [*data, "--eval", f["unl"], *out],
        "train-eval-missing": [*data, "--eval", o.parent / "test.parquet", *out],
        "train-resume-no-checkpoint": [*data, "--resume", *out],
        "train-resume-missing-file": [*data, "--resume", o.parent / "step-1.pt", *out],
        "train-resume-not-a-checkpoint": [*data, "--resume", f["bad_checkpoint"], *out],
        "train-resume-and-overwrite": [*data, "--resume", "--overwrite", *out],
        "train-out-not-a-run": [*data, "--out", f["existing_out"]],
        "train-out-is-a-file": [*data, "--out", f["a_file"]],
        "train-out-other-config": [*data, "--epochs", "2", "--out", f["run"]],
        "train-batch-norm-single-row": ["train", "--transfer", f["set"], "--student", "train.students:resnet18", "--batch-size", "36", *out],
        "train-temperature-sparse-targets": ["train", "--transfer", f["set_top3"], "--temperature", "4", *out],
        "train-class-student-per-token": ["train", "--transfer", f["set_tokens"], *out],
        "train-tokens-per-batch-short": [*lm, "--tokens-per-batch", "10", *out],
        "train-tokens-and-batch-size": [*lm, "--tokens-per-batch", "128", "--batch-size", "2", *out],
        "train-tokens-per-batch-class-set": [*transfer, "--tokens-per-batch", "64", *out],
        "train-lm-loss-not-for-kind": [*lm, "--loss", "mse", *out],
        "train-lm-student-vocabulary": ["train", "--transfer", f["set_tokens"], "--student", "test_errors_catalogue:lm_wrong_vocabulary", *out],
        "train-lm-student-not-causal": ["train", "--transfer", f["set_tokens"], "--student", "test_errors_catalogue:lm_not_causal", *out],
        "train-hf-student-no-config": ["train", "--transfer", f["set_tokens"], "--student", f"hf:{f['empty_dir']}", *out],
        "train-gpt-width-heads": [*lm, "--student-arg", "width=30", "--student-arg", "heads=4", *out],
        # eval
        "eval-not-a-run": ["eval", f["not_a_set"], "--data", f["lab"]],
        "eval-unfinished-run": ["eval", f["run_unfinished"], "--data", f["lab"]],
        "eval-config-not-json": ["eval", f["run_bad_config"], "--data", f["lab"]],
        "eval-weights-damaged": ["eval", f["run_bad_weights"], "--data", f["lab"]],
        "eval-weights-do-not-fit": ["eval", f["run_mismatch"], "--data", f["lab"]],
        "eval-data-missing": ["eval", f["run"], "--data", o.parent / "test.parquet"],
        "eval-data-without-labels": ["eval", f["run"], "--data", f["unl"]],
        "eval-labels-outside-classes": ["eval", f["run"], "--data", f["big_labels"], "--label-column", "label"],
        "eval-input-wrong-size": ["eval", f["run"], "--data", f["short"]],
        "eval-class-bias-out-of-range": ["eval", f["run"], "--data", f["lab"], "--class-bias", "10=2.5"],
        "eval-class-bias-malformed": ["eval", f["run"], "--data", f["lab"], "--class-bias", "3:2.5"],
        "eval-class-bias-unknown-name": ["eval", f["run"], "--data", f["lab"], "--class-bias", "three=2.5"],
        "eval-transfer-set-other-classes": ["eval", f["run"], "--data", f["set_7_classes"]],
        "eval-batch-size-zero": ["eval", f["run"], "--data", f["lab"], "--batch-size", "0"],
        "eval-class-run-on-per-token-set": ["eval", f["run"], "--data", f["set_tokens"]],
    }


# -- the doc's table ---------------------------------------------------------------------------

ROW_ID = re.compile(r"^`([a-z0-9][a-z0-9-]*)`$")
FRAGMENT = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")  # `code` or `` code with ` inside ``


@dataclass(frozen=True)
class Row:
    id: str
    command: str
    bad_input: str
    fragments: tuple[str, ...]


def doc_rows() -> list[Row]:
    """The catalogue table of docs/errors.md: rows whose first cell is a `backticked-id`."""
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        match = ROW_ID.match(cells[0])
        assert match and len(cells) == 4, f"malformed catalogue row in {DOC.name}: {line}"
        fragments = tuple(m.group(2).strip() for m in FRAGMENT.finditer(cells[3]))
        assert fragments, f"{DOC.name} row {match.group(1)} names no `message fragment`"
        rows.append(Row(match.group(1), cells[1], cells[2], fragments))
    return rows


ROWS = doc_rows()


def test_doc_and_cases_are_one_list():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), f"ids repeat in {DOC.name}: {sorted({i for i in ids if ids.count(i) > 1})}"
    built = cases(_AnyPath(), Path("/o/out"))
    assert set(ids) == set(built), (
        f"only in {DOC.name}: {sorted(set(ids) - set(built))}; only in this test's cases(): {sorted(set(built) - set(ids))}"
    )
    for row in ROWS:
        assert row.command == built[row.id][0], f"{row.id}: the doc says {row.command}, the case runs {built[row.id][0]}"
    per_command = {c: sum(r.command == c for r in ROWS) for c in COMMANDS}
    assert all(per_command.values()) and len(ROWS) >= 40, per_command
    assert set(SUBPROCESS) <= set(ids) and set(ENVIRONMENT) <= set(ids)


class _AnyPath(dict):
    """Stands in for the fixtures when only the ids and commands of cases() are needed."""

    def __missing__(self, key):
        return Path("/x") / key


# -- running a row -----------------------------------------------------------------------------


def _out_of(argv: list) -> Path | None:
    argv = [str(a) for a in argv]
    return Path(argv[argv.index("--out") + 1]) if "--out" in argv else None


def _published(argv: list) -> dict[str, tuple[int, int]]:
    """What a failed command must neither create nor change: the outputs (and temp
    files) it publishes. Name -> (mtime_ns, size)."""
    command, out = str(argv[0]), _out_of(argv)
    if out is None:
        return {}
    if command == "convert":
        found = [out, *out.parent.glob(f".{out.name}.*")]
    elif command in ("generate", "recombine"):
        found = [out / "_manifest.json", *out.glob("part-*.parquet"), *out.glob(".part-*")] if out.is_dir() else []
    elif command == "train":
        found = [out / "student.pt", out / "student.pt2", *out.glob(".student.pt*")] if out.is_dir() else []
    elif command == "report":
        found = [out / "index.html", *out.glob("*.png"), *out.parent.glob(f".{out.name}.*/*")] if out.is_dir() else [out]
    else:
        found = []
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in found if p.is_file()}


def _check(row: Row, code, stderr: str, before: dict, after: dict) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert code == 2, f"exit {code}, stderr: {stderr}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr}"
    assert lines[0].startswith(f"transferset {row.command}: error: "), lines[0]
    missing = [f for f in row.fragments if f not in lines[0]]
    assert not missing, f"message {lines[0]!r} lacks {missing}"
    assert after == before, f"the failed command wrote outputs: {sorted(set(after.items()) - set(before.items()))}"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, fx, tmp_path, capsys, monkeypatch):
    import torch

    import cli

    if row.id in CPU_ONLY and torch.cuda.is_available():
        pytest.skip("the input is valid on a machine with CUDA")
    for name, value in ENVIRONMENT.get(row.id, {}).items():
        monkeypatch.setenv(name, value)
    for name in MISSING_MODULES.get(row.id, ()):
        monkeypatch.setitem(sys.modules, name, None)

    argv = [str(a) for a in cases(fx, tmp_path / "out")[row.id]] + ["--quiet"]
    before = _published(argv)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse errors
        code = stop.code
    _check(row, code, capsys.readouterr().err, before, _published(argv))


@pytest.mark.parametrize("row_id", SUBPROCESS)
def test_bad_input_in_a_fresh_process(row_id, fx, tmp_path, monkeypatch):
    """As a user meets it: a new interpreter, no --quiet."""
    row = next(r for r in ROWS if r.id == row_id)
    for name, value in ENVIRONMENT.get(row.id, {}).items():
        monkeypatch.setenv(name, value)  # run_cli passes os.environ on
    argv = cases(fx, tmp_path / "out")[row.id]
    before = _published(argv)
    proc = run_cli(*argv)
    _check(row, proc.returncode, proc.stderr, before, _published(argv))


def test_huge_batch_sizes_are_capped_not_refused(fx, tmp_path, capsys):
    """A batch larger than the data (even 2^70 rows) is legal: generate reads at most a
    shard at a time and train takes the whole set as one batch. Documented in errors.md."""
    import cli

    huge = str(2**70)
    assert cli.main(["generate", *TEACHER, "--source", str(fx["lab"]), *PIXELS, "--batch-size", huge, "--out", str(tmp_path / "set"), "--quiet"]) == 0
    assert cli.main(["train", "--transfer", str(tmp_path / "set"), "--student-arg", "hidden=8", "--epochs", "1", "--batch-size", huge,
                     "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["steps_per_epoch"] == 1
