"""An image folder's files and their classes, in a fixed order.

    DIR/cat/1.jpg, DIR/cat/sub/2.png   -> label 0 (classes: sorted sub-folder names)
    DIR/dog/3.jpg                      -> label 1
    DIR/4.jpg                          -> unlabelled (label null)

Hidden files and folders (a leading dot) are skipped, as every file manager hides
them; every other file is expected to be an image and is checked by decoding it
(convert.py), so a stray README is reported by name, never silently taken or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferset.errors import UserError


@dataclass(frozen=True)
class FolderFiles:
    paths: list[Path]  # in row order: class folders in name order, files by relative path; then the loose files
    labels: list[int | None]
    class_names: list[str]


def _files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_folder(root: Path) -> FolderFiles:
    if not root.is_dir():
        raise UserError(f"--image-folder {str(root)!r} is not a folder; give a folder of class sub-folders or images")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[int | None] = []
    for label, folder in enumerate(class_dirs):
        found = _files_below(folder)
        paths += found
        labels += [label] * len(found)
    loose = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    paths += loose
    labels += [None] * len(loose)
    if not paths:
        raise UserError(f"--image-folder {str(root)!r} holds no files (neither class sub-folders of images nor images); "
                        f"point it at the images")
    return FolderFiles(paths, labels, [p.name for p in class_dirs])
