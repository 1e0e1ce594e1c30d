"""`transferset report`: a transfer set drawn as PNG figures and one HTML page.

The recipe, top to bottom:

    open the set (manifest, provenance)  ->  pick the report of its target kind
    ->  check --out  ->  check every shard and summarise (`inspect`'s statistics)
    ->  the kind's statistics and figures  ->  the page  ->  publish the folder

Nothing is drawn before every shard has passed its checks (footer provenance,
size, SHA-256: `transferset.inspect.summarize`), and nothing is published until
every file of the report is written: the folder is filled under a temporary name
beside --out and renamed into place, replacing an earlier report there.

Reports are picked by `provenance.target_kind` from `REPORTS`; a kind without one
(a per-token set, say) is refused in one line. Adding one is a function
`(manifest, summary) -> (figures, notes)` registered there.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transferset.errors import UserError
from transferset.format.codecs import refuse_per_token
from transferset.format.manifest import Manifest, read_manifest
from transferset.io import reporting_write_errors

PAGE = "index.html"


@dataclass(frozen=True)
class Drawn:
    file: str  # the PNG's name in the report folder
    title: str
    caption: str
    png: bytes


def dense_report(manifest: Manifest, summary: dict[str, Any]) -> tuple[list[Drawn], list[str]]:
    from transferset.report import figures
    from transferset.report.captions import confusion_caption, histograms_caption, members_caption, reliability_caption
    from transferset.report.stats import dense_stats

    stats = dense_stats(manifest)
    names = manifest.provenance.class_names
    drawn = [
        Drawn("confusion.png", "Which classes the targets confuse", confusion_caption(stats, names),
              figures.png(figures.confusion_figure(stats, names))),
        Drawn("entropy-and-confidence.png", "How sure the targets are", histograms_caption(stats),
              figures.png(figures.histograms_figure(stats))),
    ]
    notes = []
    if stats.reliability is not None:
        drawn.append(Drawn("reliability.png", "How calibrated the targets are", reliability_caption(stats),
                           figures.png(figures.reliability_figure(stats.reliability, stats.temperature))))
    else:
        notes.append("No row is labelled, so there is no reliability diagram (it compares the targets with the labels).")
    if stats.agreement is not None:
        accuracies = [t["accuracy"] for t in summary["teachers"]] + [summary["ensemble_accuracy"]]
        drawn.append(Drawn("members.png", "Where the members disagree", members_caption(stats),
                           figures.png(figures.members_figure(stats.agreement, accuracies))))
    else:
        notes.append("The members' own logits were not kept, so there is no per-member accuracy or agreement: "
                     "generate with --keep-teacher-logits to see them.")
    return drawn, notes


# target kind -> its report; the one place a report branches on the kind.
REPORTS: dict[str, Callable[[Manifest, dict], tuple[list[Drawn], list[str]]]] = {"dense": dense_report}


def build_report(directory: str | Path, out: str | Path) -> Path:
    """Write the report of the set at `directory` into the folder `out`; the page's path."""
    from transferset.commands.inspect import tables
    from transferset.inspect import summarize
    from transferset.report.page import render

    out = Path(out)
    manifest = read_manifest(directory)
    kind = manifest.provenance.target_kind
    refuse_per_token(manifest.provenance, f"transfer set {str(directory)!r}", "`transferset report` draws class-target sets only")
    if kind not in REPORTS:
        raise UserError(
            f"transfer set {str(directory)!r} holds {kind!r} targets; `transferset report` draws {', '.join(REPORTS)} sets "
            f"(inspect and train read this one)"
        )
    check_out(out)
    summary = summarize(directory)  # checks every shard before anything is drawn
    drawn, notes = REPORTS[kind](manifest, summary)
    page = render(f"transfer set {directory}", tables(summary), drawn, notes)
    publish(out, {PAGE: page.encode(), **{d.file: d.png for d in drawn}})
    return out / PAGE


# -- the output folder ---------------------------------------------------------------------------

GENERATOR = '<meta name="generator" content="transferset report">'  # how an earlier report is recognised


def is_report(folder: Path) -> bool:
    try:
        with open(folder / PAGE, "rb") as f:
            return GENERATOR.encode() in f.read(2048)
    except OSError:
        return False


def check_out(out: Path) -> None:
    """--out may be new, an empty folder or an earlier report (replaced); nothing else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; a report is a folder ({PAGE} and its PNGs): choose another --out")
    where = Path(os.path.abspath(out))
    if where == Path.cwd() or where in Path.cwd().parents:  # replacing it would pull the folder from under the shell
        raise UserError(f"--out {out} is the current folder (or holds it); name a folder for the report, e.g. --out report")
    above = next((p for p in where.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {out}: {above} is a file, not a folder; give a path in a folder")
    if out.is_dir() and any(out.iterdir()) and not is_report(out):
        raise UserError(
            f"--out {out} is a folder that holds other files (not a transferset report); "
            f"choose a new or empty folder, or the folder of an earlier report to replace it"
        )


def publish(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a temporary folder beside `out`, then rename it to `out`
    (an earlier report there is moved aside first and deleted after)."""
    out = Path(os.path.abspath(out))  # `a/../report` is named report: the temp folder goes beside it
    draft = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    with reporting_write_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(draft, ignore_errors=True)
        draft.mkdir()
        try:
            for name, data in files.items():
                (draft / name).write_bytes(data)
            if out.exists():
                out.rename(old)
            try:
                draft.rename(out)
            except BaseException:
                if old.exists() and not out.exists():
                    old.rename(out)  # put the earlier report back
                raise
        except BaseException:
            shutil.rmtree(draft, ignore_errors=True)
            raise
    shutil.rmtree(old, ignore_errors=True)
