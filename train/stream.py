"""Stream whole batches from Parquet: a transfer set's soft targets, or plain labelled data.

Reading follows `order.py`: an epoch is a sequence of windows (a few row groups
read together and shuffled among themselves). Each window is read and converted
once into tensors (window.py: one row group at a time, never a whole file), then
whole batches are cut from it by `index_select`, which costs what indexing tensors
already in memory costs (per-sample `__getitem__` + collate reached 25-37% of the
in-memory bound on 2 cores, measurements on these machines; converting inputs per
batch instead of per row group cost ~1.5x in epoch time, measured in bench_stream.py).

The next window is read on a background thread while the current one is used, and
a set that fits in one window is read once and kept. Memory is therefore bounded by
two windows (DEFAULT_WINDOW_BYTES), whatever the dataset size. A batch that
straddles two windows carries its first part over (< batch_size rows). A views set's
whole batch production (window reads, the per-batch view choice and replay) runs on
a thread of its own, PREFETCH_BATCHES ahead of the training step (prefetch.py).

Which rows a process reads follows its `World` (rank, world size; world.py) by
order.py's partition: `batch_size` is the global batch, and each rank yields its
slice of every global batch; a single process is `SINGLE_PROCESS`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator


from train import order
from train.batch import Batch
from train.labelled import scan_labelled
from transferset.prefetch import prefetched
from train.window import RowGroup, Rows, WindowData, extra_value, open_parquet, read_window
from train.world import SINGLE_PROCESS, World
from transferset.errors import UserError
from transferset.format.codecs import TargetCodec, get_codec, sequence_length
from transferset.format.manifest import read_manifest
from transferset.format.provenance import Provenance
from transferset.format.references import SOURCE_ROW, by_reference, input_bytes_per_row, locate_sources
from transferset.format.schema import LABEL
from transferset.format.shards import mixed_shards_message, shard_mismatch
from transferset.inputs import InputSpec
from transferset.progress import counted

# Shuffle window: whole row groups whose rows take at most this many bytes as window
# tensors (float32 inputs and targets, int64 labels), at least one row group. A byte
# budget, not a row count, so that wide rows (images) cannot multiply the memory.
# MNIST train (60k x (784 + 10) float32, ~190 MB) fits one window: a full shuffle,
# read once and kept. 1M rows of 100 targets + 16 features (~470 MB) take two.
# Held at most: the window in use + the one read ahead + one row group in Arrow form.
DEFAULT_WINDOW_BYTES = 256 << 20
# Batches a views set's producer thread makes ahead of the training step (each one a
# batch of float32 views: 256 x 3x224x224 is 154 MB, so a small depth).
PREFETCH_BATCHES = 2


class StreamSource:
    """Row groups of one dataset plus how to turn them into batches. Holds no open
    files (safe to copy into DataLoader workers); each window opens what it reads."""

    def __init__(self, *, row_groups: list[RowGroup], input_spec: InputSpec, label_column: str, num_classes: int,
                 num_labelled: int, provenance: Provenance | None, columns: frozenset[str], window_rows: int | None,
                 window_bytes: int, per_token: bool = False) -> None:
        self._row_groups = [g for g in row_groups if g.rows > 0]
        self.num_rows = sum(g.rows for g in self._row_groups)
        if self.num_rows == 0:
            raise UserError("the data has 0 rows; point at non-empty Parquet files")
        if (window_rows is not None and window_rows < 1) or window_bytes < 1:
            raise UserError(f"the shuffle window ({counted(window_rows, 'row')}, {counted(window_bytes, 'byte')}) must be positive")
        self.input_spec = input_spec
        # token rows for a causal-LM student: a per-token set, or a token source read for one
        self.per_token = per_token
        self.num_classes = num_classes
        self.num_labelled = num_labelled
        self.provenance = provenance  # None for plain labelled data
        self.codec: TargetCodec | None = get_codec(provenance.target_kind) if provenance else None
        self._label_column = label_column
        self._columns = columns  # the columns every file has (for columns_extra)
        self._kept: tuple | None = None  # (key, WindowData) of a set that fits in one window
        self._references: dict[str, str] | None = None  # `--inputs reference` sets: {recorded source path: file}
        # A views set's batches are made (view choice, replay, first decode) PREFETCH_BATCHES ahead
        # on a background thread; other sets' batches cost an index_select and stay on the caller's.
        self.prefetch = PREFETCH_BATCHES if self.codec is not None and self.codec.kind == "views" else 0
        # Row groups per window, sized by the largest row group so that no window exceeds the budget.
        if window_rows is not None:
            self._window = max(1, window_rows // max(g.rows for g in self._row_groups))
        else:
            row_bytes = 8 + (self.codec.decoded_bytes_per_row(provenance) if self.codec else 0)  # int64 label, decoded targets
            if input_spec.transform is None:  # float32 inputs (token rows: 3 x L int64)
                input_bytes = 24 * input_spec.size if per_token else 4 * input_spec.size
                sizes = [g.rows * (row_bytes + input_bytes) for g in self._row_groups]
            else:  # inputs kept as Arrow until the transform: count the stored row group
                sizes = [g.nbytes + g.rows * row_bytes for g in self._row_groups]
            self._window = max(1, window_bytes // max(sizes))

    @property
    def has_targets(self) -> bool:
        return self.provenance is not None

    @property
    def temperature(self) -> float | None:
        return self.provenance.temperature if self.provenance else None

    @property
    def combine(self) -> str | None:
        return self.provenance.combine if self.provenance else None

    @property
    def window_row_groups(self) -> int:
        """Row groups per shuffle window (fixed for a source: part of the epoch order)."""
        return self._window

    # -- opening ------------------------------------------------------------

    @classmethod
    def open_transfer_set(cls, directory, *, window_rows: int | None = None, window_bytes: int = DEFAULT_WINDOW_BYTES,
                          source_root: str | None = None, check_sources: bool = True) -> "StreamSource":
        """`window_rows`, when given, sizes the shuffle window in rows instead of bytes. A set
        with its inputs by reference finds its sources (`source_root` first) and checks them:
        sha256, or with `check_sources` False (train --no-verify) their size and row count."""
        manifest = read_manifest(directory)
        provenance = manifest.provenance
        spec = InputSpec.from_dict(provenance.input)
        codec = get_codec(provenance.target_kind, str(directory))
        references, joined_bytes = None, 0
        if by_reference(provenance):
            references = locate_sources(provenance, f"transfer set {directory}", source_root, check_sources)
            for path in references.values():
                pf = open_parquet(path)
                spec.check_field(pf.schema_arrow, f"source {path}")
                joined_bytes = max(joined_bytes, input_bytes_per_row(pf, spec.columns))
        num_classes = manifest.num_classes
        row_groups, columns = [], None
        for record, path in zip(manifest.shards, manifest.shard_paths()):
            pf = open_parquet(str(path))
            if pf.metadata.num_rows != record.rows:
                raise UserError(f"{path} has {counted(pf.metadata.num_rows, 'row')} but manifest.json says {record.rows:,}; the transfer set is damaged, regenerate it")
            arrow_schema = pf.schema_arrow
            mismatch = shard_mismatch(provenance, arrow_schema)
            if mismatch:
                raise UserError(mixed_shards_message(path, mismatch, directory))
            codec.check_schema(arrow_schema, provenance, str(path))
            if LABEL not in arrow_schema.names:
                raise UserError(f"{path} has no {LABEL!r} column; the transfer set is damaged, regenerate it")
            if references is None:
                spec.check_field(arrow_schema, str(path))
            elif SOURCE_ROW not in arrow_schema.names:
                raise UserError(f"{path} has no {SOURCE_ROW!r} column, but its set takes its inputs by reference; the transfer set is damaged, regenerate it")
            columns = set(arrow_schema.names) if columns is None else columns & set(arrow_schema.names)
            # A reference set's row groups hold no inputs: count the joined ones, so that the
            # window and the decoding parts are sized as for the copy set.
            row_groups += [RowGroup(str(path), i, pf.metadata.row_group(i).num_rows,
                                    pf.metadata.row_group(i).total_byte_size + joined_bytes * pf.metadata.row_group(i).num_rows)
                           for i in range(pf.num_row_groups)]
        source = cls(row_groups=row_groups, input_spec=spec, label_column=LABEL, num_classes=num_classes,
                     num_labelled=sum(s.labelled_rows for s in manifest.shards), provenance=provenance, columns=frozenset(columns),
                     window_rows=window_rows, window_bytes=window_bytes, per_token=sequence_length(provenance) is not None)
        source._references = references
        return source

    @classmethod
    def open_labelled(cls, paths: list[str], input_spec: InputSpec, label_column: str, num_classes: int | None = None,
                      *, what: str = "--data", window_rows: int | None = None, window_bytes: int = DEFAULT_WINDOW_BYTES) -> "StreamSource":
        """Plain Parquet (files, directories, globs) with inputs and integer labels;
        `what` names the flag the paths came from in errors ("--data", "--eval")."""
        found = scan_labelled(paths, input_spec, label_column, num_classes, what)
        return cls(row_groups=found.row_groups, input_spec=input_spec, label_column=label_column, num_classes=found.num_classes,
                   num_labelled=found.num_labelled, provenance=None, columns=found.columns, window_rows=window_rows, window_bytes=window_bytes)

    @classmethod
    def open_tokens(cls, paths: list[str], input_spec: InputSpec, *, what: str = "--data") -> "StreamSource":
        """A token source (`convert --text`, no teacher targets): rows of token ids and masks,
        no labels (the next-token labels come from input_ids)."""
        from transferset.io import expand_parquet_paths

        row_groups, columns = [], None
        for path in expand_parquet_paths(list(paths), what):
            pf = open_parquet(str(path))
            input_spec.check_field(pf.schema_arrow, str(path))
            columns = set(pf.schema_arrow.names) if columns is None else columns & set(pf.schema_arrow.names)
            row_groups += [RowGroup(str(path), i, pf.metadata.row_group(i).num_rows, pf.metadata.row_group(i).total_byte_size)
                           for i in range(pf.num_row_groups)]
        return cls(row_groups=row_groups, input_spec=input_spec, label_column=None, num_classes=0, num_labelled=0, provenance=None,
                   columns=frozenset(columns or ()), window_rows=None, window_bytes=DEFAULT_WINDOW_BYTES, per_token=True)

    # -- the epoch ----------------------------------------------------------

    def num_batches(self, batch_size: int, world: World = SINGLE_PROCESS, drop_last: bool = False) -> int:
        """Global batches of `batch_size` rows per epoch (each rank yields its slice of each)."""
        return self._part(batch_size, world, drop_last).num_batches

    def epoch(self, *, batch_size: int, seed: int, epoch: int, start_batch: int = 0, shuffle: bool = True,
              world: World = SINGLE_PROCESS, drop_last: bool = False, columns_extra: tuple = (),
              prefetch: int | None = None) -> Iterator[Batch]:
        """This rank's slices of the epoch's global batches of `batch_size` rows, from
        global batch `start_batch` on (see order.py). `prefetch`: batches made ahead on a
        background thread (prefetch.py); None: this source's default (`self.prefetch`).

        Deterministic for (seed, epoch, data, batch_size, world.rank, world.world_size);
        resuming at start_batch=k yields exactly the batches after the first k, and reads
        no window that holds none of them."""
        batches = self._batches(batch_size=batch_size, seed=seed, epoch=epoch, start_batch=start_batch, shuffle=shuffle,
                                world=world, drop_last=drop_last, columns_extra=columns_extra)  # checks its arguments now
        depth = self.prefetch if prefetch is None else prefetch
        return prefetched(lambda: batches, depth) if depth else batches

    def _part(self, batch_size: int, world: World, drop_last: bool) -> order.RankPart:
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be >= 1")
        if not drop_last and self.num_rows < world.world_size:
            raise UserError(f"{counted(self.num_rows, 'row')} cannot be split over {counted(world.world_size, 'rank')}; use fewer ranks or more data")
        if batch_size % world.world_size:
            raise UserError(f"--batch-size {batch_size} is the global batch and must be divisible by the {world.world_size} processes; "
                            f"use a multiple of {world.world_size}, e.g. {batch_size - batch_size % world.world_size or world.world_size}")
        return order.rank_part(self.num_rows, batch_size, world.world_size, world.rank, drop_last)

    def _batches(self, *, batch_size, seed, epoch, start_batch, shuffle, world, drop_last, columns_extra,
                 worker: int = 0, num_workers: int = 1) -> Iterator[Batch]:
        part = self._part(batch_size, world, drop_last)
        if part.num_batches == 0:
            raise UserError(f"{counted(self.num_rows, 'row')} give no full batch of {batch_size:,} per rank over {counted(world.world_size, 'rank')} with drop_last; lower the batch size")
        if not 0 <= start_batch <= part.num_batches:
            raise UserError(f"resume position {start_batch} is outside this epoch's {part.num_batches} batches; the data, batch size or world size changed since the checkpoint")
        extra = tuple(dict.fromkeys(columns_extra))
        missing = [name for name in extra if name not in self._columns]
        if missing:
            raise UserError(f"extra {'column' if len(missing) == 1 else 'columns'} {', '.join(missing)} not in the data (columns: {', '.join(sorted(self._columns))})")
        plan = order.epoch_plan([g.rows for g in self._row_groups], seed, epoch, self._window, shuffle)
        mine = order.resume_worker_batches(part.num_batches, num_workers, worker, start_batch)
        return self._read(plan, part, mine.start, mine.stop, extra)

    def _read(self, plan: list[order.Window], part: order.RankPart, first: int, stop: int, extra: tuple) -> Iterator[Batch]:
        if first >= stop:
            return
        lo, hi = part.batch_bounds(first)[0], part.batch_bounds(stop - 1)[1]
        k, pending = first, []  # pending: the parts of batch k read so far (it may straddle windows)
        windows = order.windows_between(plan, lo, hi)
        for window, data in zip(windows, self._windows(windows, extra, whole_set=len(plan) == 1)):
            positions = window.order()
            while k < stop:
                b_lo, b_hi = part.batch_bounds(k)
                if b_lo >= window.stop:
                    break
                a, b = max(b_lo, window.start), min(b_hi, window.stop)
                pending.append(data.take(positions[a - window.start : b - window.start], window))
                if b_hi > window.stop:
                    break  # the rest of batch k is in the next window
                g_lo, g_hi = part.global_bounds(k)
                yield self._assemble(pending, extra, g_hi - g_lo)
                k, pending = k + 1, []
            del data  # release this window before the one after the next is read

    def _windows(self, windows: list[order.Window], extra: tuple, whole_set: bool) -> Iterator[WindowData]:
        """The windows' data, each read on a background thread while the previous one
        is being consumed (pyarrow decodes without the GIL, so reading overlaps the
        training step). At most two windows are alive: the one in use and the next.

        A set that fits in one window is read once and kept: every epoch needs exactly
        that window (only its order changes), so it costs what in-memory data costs."""
        if whole_set:
            key = (windows[0].row_groups, extra, self.input_spec)
            if self._kept is None or self._kept[0] != key:
                self._kept = None  # drop the old one before reading the new one
                self._kept = (key, self._load(windows[0], extra))
            yield self._kept[1]
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferset-read") as pool:
            upcoming = pool.submit(self._load, windows[0], extra)
            for i in range(len(windows)):
                data = upcoming.result()  # re-raises a read error (a UserError naming the file) here
                upcoming = pool.submit(self._load, windows[i + 1], extra) if i + 1 < len(windows) else None
                yield data
                del data

    def _load(self, window: order.Window, extra: tuple) -> WindowData:
        """One window's data as tensors (window.py), read with this source's columns."""
        return read_window(window, extra, row_groups=self._row_groups, input_spec=self.input_spec, label_column=self._label_column,
                           codec=self.codec, provenance=self.provenance, num_classes=self.num_classes, token_rows=self.per_token,
                           references=self._references)

    def _assemble(self, parts: list[Rows], extra: tuple, global_rows: int) -> Batch:
        rows = parts[0] if len(parts) == 1 else Rows.concat(parts)
        if rows.inputs is None:
            inputs = self.input_spec.to_tensor(rows.input_table, where="input")
        elif not self.per_token and not rows.inputs.is_floating_point():  # stored integers: float32 per batch (window.py)
            inputs = self.input_spec.from_stored(rows.inputs)
        else:
            inputs = rows.inputs
        return Batch(inputs, rows.labels, rows.targets, {name: extra_value(rows.extra.column(name)) for name in extra}, self.per_token,
                     global_rows)
