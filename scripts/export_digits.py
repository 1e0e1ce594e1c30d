"""Regenerate data/digits.parquet from scikit-learn's bundled copy of the UCI digits.

    python scripts/export_digits.py [--out data/digits.parquet]

scikit-learn is needed only here, to regenerate the file; transferset itself never
imports it. The output is byte-for-byte the same on every run with the same
pyarrow version (the Parquet footer records the writer's version): no timestamps,
no absolute paths, one row group, the metadata JSON with sorted keys.

The sample: the 1,797 8x8 digits of the UCI "Optical Recognition of Handwritten
Digits" test set (Alpaydin & Kaynak, 1998, CC BY 4.0, doi:10.24432/C50P49), each
pixel a count 0..16 of "on" pixels in a 4x4 block of a 32x32 bitmap.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from transferset.convert import ConvertOptions, write_source  # noqa: E402
from transferset.io import file_sha256  # noqa: E402

ORIGIN = {
    "dataset": "UCI Optical Recognition of Handwritten Digits, test set (optdigits.tes), via sklearn.datasets.load_digits()",
    "authors": "E. Alpaydin, C. Kaynak",
    "year": 1998,
    "doi": "10.24432/C50P49",
    "license": "CC BY 4.0",
}
# Where load_digits() reads from, relative to the scikit-learn package; hashed so
# that a changed upstream copy shows up as a different sha256 in the metadata.
SKLEARN_FILE = "datasets/data/digits.csv.gz"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 [1797, 8, 8] in 0..16, labels int64 [1797] in 0..9, sha256 of the csv)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images  # float64 [1797, 8, 8], integer values 0..16
    if images.shape != (1797, 8, 8) or not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 16:
        raise SystemExit(f"unexpected load_digits() data: shape {images.shape}, range {images.min()}..{images.max()}")
    labels = np.asarray(digits.target, dtype=np.int64)
    csv = resources.files("sklearn").joinpath(SKLEARN_FILE)
    with resources.as_file(csv) as csv_path:
        digest = file_sha256(Path(csv_path))
    return images.astype(np.uint8), labels, digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "digits.parquet")
    args = parser.parse_args(argv)

    images, labels, csv_sha256 = load_digits_arrays()
    provenance = {
        "source_files": [f"sklearn/{SKLEARN_FILE}"],
        "sha256": {f"sklearn/{SKLEARN_FILE}": csv_sha256},
        "origin": ORIGIN,
    }
    result = write_source(images, labels, args.out, ConvertOptions(overwrite=True), provenance, where="load_digits()")
    print(f"wrote {result.path}: {result.rows} rows, {args.out.stat().st_size:,} bytes, sha256 {file_sha256(Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
