"""`transferset report`: every statistic against NumPy, the command end to end, its
refusals, and the page in a real headless browser.

The sets are written here with the format layer (no teachers, no torch): members'
logits drawn so that class r's rows lean towards r and a little towards r + 1, the
targets their geometric mean (the mean logit), stored in float16 or float32.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_in_process

from transferset.format import schema
from transferset.format.codecs.dense import fixed_floats, storage_numpy_dtype
from transferset.format.manifest import ShardRecord, read_manifest, shard_name, write_manifest
from transferset.format.provenance import Provenance
from transferset.io import file_sha256

try:
    import matplotlib  # noqa: F401  (the `report` extra; CI installs it with `test`)
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip('needs matplotlib (pip install "transferset[report]")', allow_module_level=True)

from transferset.report.captions import reference_rule  # noqa: E402
from transferset.report.stats import dense_stats, target_columns  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


# -- a tiny dense set with the members' logits -----------------------------------------------------


def write_set(directory: Path, *, rows: int = 157, classes: int = 5, members: int = 3, temperature: float = 2.0,
              storage_dtype: str = "float16", keep_members: bool = True, unlabelled_every: int | None = 4,
              labels: np.ndarray | None = None, shards=((40, 40), (50, 27)), seed: int = 0) -> dict[str, np.ndarray]:
    """Write the set; return what a reader must find (stored logits, members, labels with -1 = none)."""
    assert sum(map(sum, shards)) == rows
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, rows) if labels is None else np.where(labels >= 0, labels, rng.integers(0, classes, rows))
    lean = 2.5 * np.eye(classes)[truth] + 1.0 * np.eye(classes)[(truth + 1) % classes]
    member_logits = (lean[None] + rng.normal(0, 1.5, (members, rows, classes))).astype(np.float32)  # [K, N, C]
    target = member_logits.mean(0)
    target -= target.max(1, keepdims=True)
    dtype = storage_numpy_dtype(storage_dtype)
    stored, stored_members = target.astype(dtype), member_logits.astype(dtype)
    if labels is None:
        labels = truth.copy()
        if unlabelled_every:
            labels[np.arange(rows) % unlabelled_every == 1] = -1
    prov = Provenance(
        target_kind="dense", num_classes=classes, temperature=temperature, combine="geometric", storage_dtype=storage_dtype,
        teachers=[{"name": f"member{k}", "format": "factory", "weight": 1 / members, "sha256": f"{k:064d}"} for k in range(members)],
        sources=[{"path": "fixture.parquet"}], input={"columns": ["x"], "shape": [1]}, teacher_logits_kept=keep_members,
    )
    x_field = pa.field("x", pa.list_(pa.field("element", pa.float32(), nullable=False), 1), nullable=False)
    target_schema = schema.target_schema(prov, [x_field])
    directory.mkdir(parents=True)
    records, first = [], 0
    for index, groups in enumerate(shards):
        path = directory / shard_name(index)
        with pq.ParquetWriter(path, target_schema) as writer:
            for size in groups:
                part = slice(first, first + size)
                columns = {
                    schema.ID: pa.array([f"r{i}" for i in range(first, first + size)]),
                    schema.SOURCE: pa.array(["fixture.parquet"] * size),
                    schema.LABEL: pa.array(labels[part], mask=labels[part] < 0, type=pa.int32()),
                    schema.LOGITS: fixed_floats(target[part], storage_dtype),
                }
                if keep_members:
                    per_row = member_logits[:, part].transpose(1, 0, 2).reshape(size * members, classes)
                    columns[schema.TEACHER_LOGITS] = pa.FixedSizeListArray.from_arrays(fixed_floats(per_row, storage_dtype), members)
                columns["x"] = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(size, np.float32)), 1)
                writer.write_table(pa.table(columns, schema=target_schema))
                first += size
        in_shard = labels[first - sum(groups):first]
        records.append(ShardRecord(path.name, index, sum(groups), int((in_shard >= 0).sum()), path.stat().st_size, file_sha256(path)))
    write_manifest(directory, prov, records)
    return {"logits": stored, "members": stored_members, "labels": labels}


# -- the independent NumPy forms ------------------------------------------------------------------


def np_targets(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_entropy(p: np.ndarray) -> np.ndarray:
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)


def np_histogram(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Equal bins over [low, high]; values outside (rounding) count in the end bins."""
    return np.histogram(np.clip(values, low, high), bins=np.linspace(low, high, bins + 1))[0]


def np_reliability(p: np.ndarray, labels: np.ndarray, bins: int):
    confidence, correct = p.max(1), p.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, confidence, minlength=bins)
    acc_sum = np.bincount(which, correct.astype(float), minlength=bins)
    ece = np.abs(acc_sum - conf_sum).sum() / len(labels)  # = sum_b n_b/N |acc_b - conf_b|
    with np.errstate(invalid="ignore"):
        return counts, conf_sum / counts, acc_sum / counts, ece


# -- statistics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_dtype", ["float16", "float32"])
def test_statistics_match_numpy(tmp_path, storage_dtype):
    written = write_set(tmp_path / "set", storage_dtype=storage_dtype)
    stats = dense_stats(read_manifest(tmp_path / "set"))
    logits, members, labels = written["logits"], written["members"], written["labels"]
    p, c, labelled = np_targets(logits, 2.0), 5, written["labels"] >= 0
    assert (stats.rows, stats.labelled, stats.num_classes) == (157, labelled.sum(), c)

    reference = np.where(labelled, labels, logits.argmax(1))
    expected = np.stack([p[reference == r].mean(0) for r in range(c)])
    np.testing.assert_array_equal(stats.reference_counts, np.bincount(reference, minlength=c))
    np.testing.assert_allclose(stats.confusion, expected, rtol=2e-6, atol=1e-7)

    entropy, confidence = np_entropy(p), p.max(1)
    for hist, values, low, high in ((stats.entropy, entropy, 0.0, np.log(c)), (stats.confidence, confidence, 1 / c, 1.0)):
        np.testing.assert_allclose(hist.edges, np.linspace(low, high, 41))
        np.testing.assert_array_equal(hist.labelled, np_histogram(values[labelled], low, high, 40))
        np.testing.assert_array_equal(hist.unlabelled, np_histogram(values[~labelled], low, high, 40))

    counts, conf, acc, ece = np_reliability(p[labelled], labels[labelled], 10)
    np.testing.assert_array_equal(stats.reliability.counts, counts)
    np.testing.assert_allclose(stats.reliability.confidence, conf, rtol=1e-6)
    np.testing.assert_allclose(stats.reliability.accuracy, acc)
    assert stats.reliability.ece == pytest.approx(ece, rel=1e-5)
    assert 0 < ece < 1 and np.isnan(stats.reliability.accuracy).any()  # the fixture leaves some bins empty

    tops = [*members.argmax(-1), logits.argmax(1)]  # K members, then the ensemble
    expected_agreement = np.array([[np.mean(a == b) for b in tops] for a in tops])
    np.testing.assert_allclose(stats.agreement.matrix, expected_agreement)
    assert stats.agreement.names == ["member0", "member1", "member2", "ensemble"]
    assert 0 < expected_agreement[0, 1] < 1  # the members do disagree somewhere


def test_statistics_without_labels_or_members(tmp_path):
    written = write_set(tmp_path / "set", labels=np.full(157, -1), keep_members=False, storage_dtype="float32")
    stats = dense_stats(read_manifest(tmp_path / "set"))
    assert stats.labelled == 0 and stats.reliability is None and stats.agreement is None
    p = np_targets(written["logits"], 2.0)
    top = written["logits"].argmax(1)
    np.testing.assert_allclose(stats.confusion, np.stack([p[top == r].mean(0) for r in range(5)]), rtol=2e-6)
    assert stats.entropy.labelled.sum() == 0 and stats.entropy.unlabelled.sum() == 157
    assert reference_rule(stats) == "the ensemble's top class (none of the 157 rows is labelled)"


def test_a_class_nobody_refers_to_is_a_nan_row(tmp_path):
    labels = np.arange(157) % 4  # every row labelled, class 4 never
    write_set(tmp_path / "set", labels=labels, classes=5)
    stats = dense_stats(read_manifest(tmp_path / "set"))
    assert stats.reference_counts[4] == 0 and np.isnan(stats.confusion[4]).all() and np.isfinite(stats.confusion[:4]).all()
    assert reference_rule(stats) == "the label (all 157 rows are labelled)"


def test_targets_in_log_space_survive_minus_infinity():
    """A probability that underflowed to 0 is stored as -inf; entropy and confidence stay finite."""
    import polars as pl

    logits = np.array([[0.0, -np.inf, -1.0], [0.0, -3.0, -0.5]], np.float32)
    frame = pl.DataFrame({"logits": logits}).select(target_columns(3, 2.0))
    p = np_targets(logits, 2.0)
    np.testing.assert_allclose(frame["entropy"].to_numpy(), np_entropy(p), rtol=1e-6)
    np.testing.assert_allclose(frame["confidence"].to_numpy(), p.max(1), rtol=1e-6)
    np.testing.assert_allclose(np.stack(frame["probs"].to_numpy()), p, rtol=1e-6, atol=1e-8)


# -- the command ----------------------------------------------------------------------------------------


def _report(*argv) -> tuple[int, str, str]:
    done = run_in_process(*argv)
    return done.returncode, done.stdout, done.stderr


def _pngs_in(page: str) -> list[bytes]:
    import base64

    return [base64.b64decode(chunk.split('"', 1)[0]) for chunk in page.split('src="data:image/png;base64,')[1:]]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A set with labelled and unlabelled rows and kept members, and its report."""
    root = tmp_path_factory.mktemp("report")
    write_set(root / "set")
    code, stdout, stderr = _report("report", root / "set", "--out", root / "out")
    assert code == 0, stderr
    return root


def test_report_writes_the_figures_and_one_page(report):
    from PIL import Image

    out = report / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["confusion.png", "entropy-and-confidence.png", "index.html", "members.png", "reliability.png"]
    page = (out / "index.html").read_text()
    embedded = _pngs_in(page)
    in_order = ("confusion.png", "entropy-and-confidence.png", "reliability.png", "members.png")
    assert embedded == [(out / name).read_bytes() for name in in_order]
    for data in embedded:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.width > 300 and image.height > 300
    # the inspect tables, and captions that say what the confusion rows are
    for text in ("ensemble accuracy", "157 (118 labelled, 39 unlabelled)", "member0", "fixture.parquet",
                 "the label for the 118 labelled rows, the ensemble&#x27;s top class for the 39 unlabelled rows", "ECE = "):
        assert text in page, text
    assert "src=\"http" not in page and "<script" not in page  # self-contained, openable from disk
    assert not list(report.glob(".out.*"))  # no temporary folder left


def test_rerun_replaces_an_earlier_report(tmp_path):
    write_set(tmp_path / "set", keep_members=False)
    (tmp_path / "out").mkdir()  # an empty folder is fine
    assert _report("report", tmp_path / "set", "--out", tmp_path / "out", "--quiet")[0] == 0
    (tmp_path / "out" / "members.png").write_bytes(b"left from an older report")
    code, stdout, _ = _report("report", tmp_path / "set", "--out", tmp_path / "out")
    assert code == 0 and "written to" in stdout
    assert not (tmp_path / "out" / "members.png").exists()  # the folder is the new report, nothing else
    assert "--keep-teacher-logits" in (tmp_path / "out" / "index.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "set"]


def test_open_uses_a_browser_where_there_is_one(report, tmp_path, monkeypatch, capsys):
    import webbrowser

    from transferset.commands.report import open_page

    opened = []

    class Browser:
        def open(self, url):
            opened.append(url)
            return True

    monkeypatch.setattr(webbrowser, "get", lambda: Browser())
    code, stdout, _ = _report("report", report / "set", "--out", tmp_path / "a", "--open")
    assert code == 0 and opened == [(tmp_path / "a" / "index.html").resolve().as_uri()]

    def no_browser():
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    open_page(tmp_path / "a" / "index.html")  # a server or CI: a note, not an error
    assert capsys.readouterr().out == (f"no web browser found here; open {tmp_path / 'a' / 'index.html'} "
                                       f"where there is one (it is a single self-contained file)\n")


# -- refusals: one line, exit 2, nothing written ----------------------------------------------------------


def _damaged(root: Path, source: Path) -> Path:
    shutil.copytree(source, root)
    shard = root / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    return root


def _kind(root: Path, source: Path, kind: str) -> Path:
    shutil.copytree(source, root)
    doc = json.loads((root / "_manifest.json").read_text())
    doc["provenance"]["target_kind"] = kind
    (root / "_manifest.json").write_text(json.dumps(doc))
    return root


class _ProbsCodec:
    kind = "probs"  # a kind this version reads but report does not draw


@pytest.mark.parametrize("case, fragment", [
    ("damaged", "part-00001.parquet: checksum mismatch (the file was modified or damaged); the transfer set is damaged"),
    ("not-a-set", "is not a transfer set (no _manifest.json)"),
    ("out-is-a-file", "is a file; a report is a folder (index.html and its PNGs): choose another --out"),
    ("out-is-another-folder", "is a folder that holds other files (not a transferset report)"),
    ("out-below-a-file", "notes.txt is a file, not a folder; give a path in a folder"),
    ("out-is-the-current-folder", "--out . is the current folder (or holds it); name a folder for the report, e.g. --out report"),
    ("kind-without-a-report", "holds 'probs' targets; `transferset report` draws dense sets (inspect and train read this one)"),
    ("kind-unknown", "target kind 'sequence' is reserved for a newer transferset; this version reads dense"),
    ("no-matplotlib", 'draws with matplotlib, which is not installed; pip install "transferset[report]"'),
])
def test_bad_input_is_one_line_and_writes_nothing(report, tmp_path, monkeypatch, case, fragment):
    from transferset.format import codecs

    directory, out = report / "set", tmp_path / "out"
    if case == "damaged":
        directory = _damaged(tmp_path / "damaged", directory)
    elif case == "not-a-set":
        directory = tmp_path
    elif case == "out-is-a-file":
        out.write_text("notes\n")
    elif case == "out-below-a-file":
        (tmp_path / "notes.txt").write_text("notes\n")
        out = tmp_path / "notes.txt" / "report"
    elif case == "out-is-the-current-folder":
        (tmp_path / "here").mkdir()
        monkeypatch.chdir(tmp_path / "here")
        out = Path(".")
    elif case == "out-is-another-folder":
        out.mkdir()
        (out / "thesis.tex").write_text("keep me\n")
    elif case == "kind-without-a-report":
        directory = _kind(tmp_path / "probs", directory, "probs")
        codecs.register(_ProbsCodec())
    elif case == "kind-unknown":
        directory = _kind(tmp_path / "sequence", directory, "sequence")
    elif case == "no-matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    before = sorted(tmp_path.rglob("*"))
    try:
        code, stdout, stderr = _report("report", directory, "--out", out)
    finally:
        if case == "kind-without-a-report":
            codecs.unregister("probs")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("transferset report: error: "), stderr
    assert fragment in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # no report, no temporary folder


# -- the page in a real browser ----------------------------------------------------------------------------

PROBE = """<script>
window.addEventListener("load", () => {
  const found = [...document.images].map(i => {
    const box = i.getBoundingClientRect();
    return [i.naturalWidth, i.naturalHeight, box.left, box.top + window.scrollY, box.width, box.height];
  });
  const out = document.createElement("pre");
  out.textContent = "PROBE" + JSON.stringify(found) + "END";
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Debian chromium, cut off from the network and from any user profile."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--window-size=1200,3000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60)


def test_the_page_renders_in_a_browser(report, tmp_path):
    """Every <img> decodes in chromium (naturalWidth > 0), and where the page puts each
    one the screenshot shows a drawing: many distinct colours, not a blank box."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing, but CI installs Debian's chromium (apt-get install -y chromium)")
        pytest.skip(f"needs {CHROMIUM} (apt-get install chromium)")
    from PIL import Image

    page = report / "out" / "index.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    assert "PROBE" in dom.stdout, dom.stderr[-2000:]
    images = json.loads(dom.stdout.split("PROBE", 2)[-1].split("END", 1)[0])
    assert len(images) == 4 and all(w > 300 and h > 300 for w, h, *_ in images), images

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile")
    screen = Image.open(shot).convert("RGB")
    assert screen.size == (1200, 3000)
    inside = [box for box in images if box[3] + box[5] <= 3000]
    assert len(inside) >= 3, images  # the window is tall enough for most of the page
    for _, _, left, top, width, height in inside:
        region = np.asarray(screen.crop((int(left), int(top), int(left + width), int(top + height))))
        colours = len(np.unique(region.reshape(-1, 3), axis=0))
        assert colours > 50 and region.std() > 20, (left, top, colours, region.std())
    # The same measure where the page draws nothing: beside the (narrow) confusion figure.
    _, _, left, top, width, height = images[0]
    assert left + width + 20 < 1000
    blank = np.asarray(screen.crop((int(left + width + 20), int(top), 1100, int(top + height))))
    assert len(np.unique(blank.reshape(-1, 3), axis=0)) < 5
