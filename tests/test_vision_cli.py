"""Images end to end through the CLI: a folder of PNG and JPEG files made here with Pillow ->
convert --image-folder -> generate --views -> train; exact replay of the stored views; bad input."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli, run_in_process

from transferset.format.manifest import read_manifest
from transferset.inputs import InputSpec
from transferset.views.expand import ViewPlan

Image = pytest.importorskip("PIL.Image")
AUGMENT = "random-resized-crop(8,scale=0.4-1),hflip"


def _folder(root, classes=2, per_class=5, loose=2):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((9 + i, 7 + 2 * c)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    for i in range(loose):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(root / f"loose{i}.png")
    return root


def _generate(source, out, *more, check=False):
    return run_in_process("generate", "--teacher", "teacher_models:tiny_a", "--source", source, "--input-shape", "1,8,8",
                          "--input-scale", "1/255", "--views", "3", "--augment", AUGMENT, "--storage-dtype", "float32",
                          "--batch-size", "4", "--out", out, "-q", *more, check=check)


@pytest.fixture(scope="module")
def views_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    folder = _folder(root / "photos")
    source = root / "photos.parquet"
    proc = run_cli("convert", "--image-folder", folder, "--out", source)  # once as a user runs it
    assert proc.returncode == 0, proc.stderr
    assert "12 images (10 labelled, 2 classes)" in proc.stdout
    _generate(source, root / "set", check=True)
    return root, folder, source, root / "set"


def test_the_source_keeps_each_files_bytes_name_and_class(views_set):
    _, folder, source, _ = views_set
    table = pq.read_table(source)
    meta = json.loads(pq.read_schema(source).metadata[b"transferset.convert"])
    assert meta["kind"] == "images" and meta["class_names"] == ["class0", "class1"]
    names = table.column("file_name").to_pylist()
    assert names[:2] == ["class0/0.jpg", "class0/1.png"] and names[-2:] == ["loose0.png", "loose1.png"]
    assert table.column("label").to_pylist() == [0] * 5 + [1] * 5 + [None, None]
    for name, data in zip(names, table.column("image").to_pylist()):
        assert data == (folder / name).read_bytes()  # no re-encoding


def test_stored_views_replay_exactly_what_the_teacher_saw(views_set):
    _, _, _, out = views_set
    prov = read_manifest(out).provenance
    assert prov.target_kind == "views" and prov.input["image"] and prov.input["shape"] == [1, 8, 8]
    table = pq.read_table(out / "part-00000.parquet")
    spec = InputSpec.from_dict(prov.input)
    decoded = spec.to_tensor(table)  # [rows, 1, 8, 8] as the teachers' inputs were decoded
    plan = ViewPlan.from_options(prov.target_options)
    params = np.array(table.column("view_params").to_pylist())
    assert np.array_equal(params, plan.params(table.column("id").to_pylist(), (1, 8, 8)))  # a pure function of (seed, id, view)
    views = plan.augmentation.apply(decoded.repeat_interleave(3, 0), torch.from_numpy(params.reshape(-1, params.shape[-1])))
    from teacher_models import tiny_a

    with torch.no_grad():
        teacher = torch.log_softmax(tiny_a()(views), dim=-1).reshape(len(table), 3, 10)
    stored = torch.log_softmax(torch.tensor(table.column("logits").to_pylist()), dim=-1)
    torch.testing.assert_close(stored, teacher, atol=1e-5, rtol=0)


def test_the_stream_gives_one_replayed_view_per_row_and_resumes_exactly(views_set):
    from train.stream import StreamSource
    from train.views import choose_views

    _, _, _, out = views_set
    source = StreamSource.open_transfer_set(out)
    table = pq.read_table(out / "part-00000.parquet")
    decoded = InputSpec.from_dict(source.provenance.input).to_tensor(table)
    params = torch.tensor(table.column("view_params").to_pylist())
    logits = torch.tensor(table.column("logits").to_pylist())
    aug = ViewPlan.from_options(source.provenance.target_options).augmentation
    full = list(source.epoch(batch_size=5, seed=3, epoch=4, columns_extra=("id",)))
    resumed = list(source.epoch(batch_size=5, seed=3, epoch=4, start_batch=1, columns_extra=("id",)))
    for a, b in zip(full[1:], resumed):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.target_logits, b.target_logits)
    ids = table.column("id").to_pylist()
    for batch in full:
        rows = np.array([ids.index(i) for i in batch.extra["id"]])
        chosen = choose_views(3, 4, rows, 3)
        want = aug.apply(decoded[rows], params[rows, chosen])
        assert torch.equal(batch.inputs, want) and torch.equal(batch.target_logits, logits[rows, chosen])


def test_train_a_resnet_from_the_views(views_set):
    root, _, _, out = views_set
    proc = run_in_process("train", "--transfer", out, "--student", "train.students:resnet18", "--student-arg", "width=4",
                          "--epochs", "2", "--batch-size", "6", "--lr", "0.001", "--out", root / "run", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (root / "run" / "student.pt").exists()


def _refused(proc, fragment, *absent):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
    for path in absent:
        assert not path.exists()


def test_bad_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(run_in_process("convert", "--image-folder", tmp_path / "empty", "--out", tmp_path / "a.parquet"),
             "holds no files", tmp_path / "a.parquet")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("not an image")
    _refused(run_in_process("convert", "--image-folder", notes, "--out", tmp_path / "b.parquet"),
             "'README.txt' is not a decodable image", tmp_path / "b.parquet")
    folder = _folder(tmp_path / "photos", per_class=2, loose=0)
    good = (folder / "class0" / "0.jpg").read_bytes()
    (folder / "class1" / "broken.jpg").write_bytes(good[: len(good) // 2])
    _refused(run_in_process("convert", "--image-folder", folder, "--out", tmp_path / "c.parquet"),
             "'class1/broken.jpg' is not a decodable image", tmp_path / "c.parquet")
    proc = run_in_process("convert", "--image-folder", folder, "--out", tmp_path / "c.parquet", "--skip-bad-images")
    assert proc.returncode == 0 and "skipped 1 files" in proc.stdout, proc.stderr
    skipped = json.loads(pq.ParquetFile(tmp_path / "c.parquet").metadata.metadata[b"transferset.convert.skipped"])
    assert skipped == {"skipped_bad_images": 1, "bad_images": ["class1/broken.jpg"]}
    assert pq.read_table(tmp_path / "c.parquet").num_rows == 4
    _refused(run_in_process("convert", "--image-folder", notes, "--out", tmp_path / "d.parquet", "--skip-bad-images"),
             "holds no decodable image", tmp_path / "d.parquet")


@pytest.mark.parametrize("flags, fragment", [
    (["--augment", "cutout(3)"], "unknown augmentation 'cutout'"),
    (["--augment", "shift(99)"], "shift: N 99 is out of range; give 0..64"),
    (["--augment", "random-resized-crop(8,scale=0.5-3)"], "scale=0.5-3 is out of range; give 0 < LO <= HI <= 1"),
    (["--augment", "random-resized-crop(16)"], "makes views of 1,16,16 but the input shape is 1,8,8"),
    (["--views", "0"], "--views 0 must be at least 1"),
])
def test_bad_views_flags_write_nothing(views_set, tmp_path, flags, fragment):
    _, _, source, _ = views_set
    out = tmp_path / "set"
    _refused(_generate(source, out, *flags), fragment, out)


def test_the_cards_recipe_decodes_the_images_as_generate_did(views_set, monkeypatch):
    import re

    _, _, _, out = views_set
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(out.parent)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    table = scope["table"]
    spec = InputSpec.from_dict(read_manifest(out).provenance.input)
    torch.testing.assert_close(scope["x"], spec.to_tensor(table), atol=1e-6, rtol=0)
    logits = np.array(table.column("logits").to_pylist())[:, 0]
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(scope["targets"], want / want.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_a_topk_views_set_verifies_and_other_readers_read_it(views_set, tmp_path):
    _, _, source, _ = views_set
    out = tmp_path / "topk"
    _generate(source, out, "--targets", "topk:3", "--storage-dtype", "float16", check=True)
    assert run_in_process("verify", out).returncode == 0
    shard = out / "part-00000.parquet"
    encodings = {pq.ParquetFile(shard).metadata.row_group(0).column(i).path_in_schema: pq.ParquetFile(shard).metadata.row_group(0).column(i).encodings
                 for i in range(pq.ParquetFile(shard).metadata.num_columns)}
    assert "DELTA_BINARY_PACKED" in encodings["target_token_ids.list.element.list.element"]
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"select id, target_token_ids, view_params from '{shard}' order by id").fetchall()
    table = pq.read_table(shard).sort_by("id")
    assert [list(map(list, r[1])) for r in rows] == table.column("target_token_ids").to_pylist()
    assert [list(map(list, r[2])) for r in rows] == table.column("view_params").to_pylist()
