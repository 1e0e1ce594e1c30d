"""The dataset card's "how to use it" section: the transferset command, and a plain
PyTorch snippet built from the set's codec (`codec.recipe`) and input spec. Tests
execute the snippet, so what the card tells a reader is code that runs.
"""

from __future__ import annotations

from transferset.format.provenance import Provenance

_READ_COLUMN = [
    "def column(name, dtype):  # a (nested) fixed-size list column as one tensor [rows, ...]",
    "    values, shape = table.column(name).combine_chunks(), [len(table)]",
    "    while hasattr(values.type, \"list_size\"):",
    "        shape.append(values.type.list_size)",
    "        values = values.flatten()",
    "    return torch.from_numpy(values.to_numpy(zero_copy_only=False).astype(dtype)).view(*shape)",
]


def usage(name: str, provenance: Provenance, codec) -> list[str]:
    """How to train from the set: with transferset, and in plain PyTorch (tests run the latter)."""
    from transferset.format.codecs import sequence_length

    read = ["import numpy as np, pyarrow.dataset as ds, torch", f"T = {float(provenance.temperature)!r}",
            f'table = ds.dataset("{name}", exclude_invalid_files=True).to_table()  # skips README.md and _*.json',
            *join_recipe(provenance), *_READ_COLUMN, *codec.recipe(provenance)]
    if sequence_length(provenance) is not None:
        return [
            "## Read it", "",
            "Per-token targets for a causal language model: position t of a row holds the teachers' distribution "
            "of the token at t + 1, where `target_mask` is 1 (other positions are zeros). In plain PyTorch:", "",
            "```python", *read,
            'input_ids, target_mask = column("input_ids", np.int64), column("target_mask", np.int64).bool()',
            "```",
        ]
    return [
        "## Train a student from it", "",
        "With transferset (no teacher is loaded):", "", "```",
        f"transferset train --transfer {name} --out runs/student", "```", "",
        "Or in plain PyTorch (everything in memory; fine for a first look):", "", "```python",
        *read,
        *input_recipe(provenance),
        "student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), targets.shape[1]))",
        "optimiser = torch.optim.Adam(student.parameters(), lr=1e-3)",
        "for batch in torch.randperm(len(x)).split(256):",
        "    log_q = torch.log_softmax(student(x[batch]) / T, dim=-1)",
        "    loss = T * T * torch.nn.functional.kl_div(log_q, targets[batch], reduction=\"batchmean\")",
        "    optimiser.zero_grad(); loss.backward(); optimiser.step()",
        "```",
    ]


def join_recipe(provenance: Provenance) -> list[str]:
    """Lines that append a reference set's input columns to `table`, read from its sources."""
    from transferset.format.references import by_reference

    if not by_reference(provenance):
        return []
    files = {s["path"]: s.get("resolved", s["path"]) for s in provenance.sources}
    return [
        "# The inputs are not copied into this set: row `source_row` of the file named by `source` holds them.",
        "import pyarrow as pa, pyarrow.parquet as pq",
        f"files = {files!r}  # where generate read each source (edit if they moved)",
        'paths, rows = np.array(table.column("source").to_pylist()), table.column("source_row").to_numpy()',
        "parts, where = [], []",
        "for path in dict.fromkeys(paths.tolist()):",
        "    mine = np.flatnonzero(paths == path)",
        f"    parts.append(pq.read_table(files[path], columns={list(provenance.input['columns'])!r}).take(rows[mine]))",
        "    where.append(mine)",
        "joined = pa.concat_tables(parts).take(np.argsort(np.concatenate(where)))",
        "for name in joined.column_names:",
        "    table = table.append_column(name, joined.column(name))",
    ]


def input_recipe(provenance: Provenance) -> list[str]:
    """Lines that set `x`, float32 [rows, *shape], as the teachers saw it."""
    spec = provenance.input
    column = spec["columns"][0]
    shape = ", ".join(str(d) for d in spec.get("shape") or [-1])
    lines = [f'x = column("{column}", np.float32).view(len(table), {shape})']
    if spec.get("image"):  # encoded image files (convert --image-folder): decoded and resized as generate did
        c, h, w = spec["shape"]
        lines = ["import io, PIL.Image",
                 f'decoded = [np.asarray(PIL.Image.open(io.BytesIO(b)).convert("{"L" if c == 1 else "RGB"}")'
                 f'.resize(({w}, {h}), PIL.Image.Resampling.BILINEAR), np.float32) for b in table.column("{column}").to_pylist()]',
                 f"x = torch.from_numpy(np.stack(decoded)).view(len(table), {h}, {w}, {c}).permute(0, 3, 1, 2).contiguous()"]
    if spec.get("scale", 1.0) != 1.0:
        lines.append(f"x = x * {float(spec['scale'])!r}")
    for key, op in (("mean", "-"), ("std", "/")):
        if spec.get(key):
            values = spec[key]
            per_channel = f"torch.tensor({values!r}).view(-1, *[1] * (x.dim() - 2))" if len(values) > 1 else repr(values[0])
            lines.append(f"x = x {op} {per_channel}")
    if spec.get("transform"):
        lines.append(f"# the teachers saw transform {spec['transform']!r} applied to these columns: apply it here too")
    return lines
