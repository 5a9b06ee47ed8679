"""Training batches from a shard folder or URL: `open_reader` (stream | memory | auto) and `load_split`.

Both modes draw the same way. The sample stream is cut into *parts*, one per (rank, loader
worker); part p of P owns a disjoint subset of every class: whole shards (shard i goes to part
i mod P) when the class has at least P shards, otherwise every P-th sample of the class, so no part
is empty and no sample is read by two parts. A part makes batch j by drawing `batch_size` classes
from the class probabilities (balance.py) with a generator seeded by (seed, part, j); the t-th
draw of class c is position t of the part's class-c sequence, which runs through its subset in
passes, each pass in a fresh seeded order (`ClassSequence`). A position is therefore just the
counts (batches made, sequence positions per class) per part; `state_dict()` holds them and a
restored reader goes on with exactly the batches an uninterrupted one would have delivered.

- memory: each rank reads its own block of every class once (`rows.read_rows`: data.h5 for a
  local folder, the tar shards for a URL) into host or device memory; batches are index lookups
  there (fast; no worker processes), each draw O(log units) with nothing copied.
- stream: tar shards are read by DataLoader workers, a window of `SHUFFLE_WINDOW` samples at a
  time, PNGs decoded there (`shardformat`, on webdataset's tar parsing); the shard order and
  mixing are ours because `ResampledShards`/`RandomMix` cannot restore a position without
  replaying the whole stream. Each part opens only the shards it owns, local or at a URL.
  Checks, and when: at open, for a local folder, that each shard this rank reads exists and is
  whole tar records ending in the end-of-archive blocks (`shard_file_problem`: no hashing; a URL
  is not looked at before it is read); on every read of a shard, its sha256 (computed while
  reading, once) and sample count, and each sample's own png_sha256 where the set has them: a
  window is used only once checked (see `_ShardSource.windows`); per sample used, its key,
  .cls/.json and PNG shape. A shard failing at open raises ShardError naming it, or with
  `OnError.skip` is left out of `counts` and listed in `skipped`. One failing when read (missing,
  access denied, a broken download, a checksum) raises ShardError naming it, or with
  `OnError.skip` is listed in `skipped` (and warned about) when the batch that passed over it is
  delivered; its positions are passed over, so `counts` and the class probabilities stay as
  opened and a resumed reader passes over the same positions.
- auto: memory when the split fits `memory_budget_mb`.
"""
from __future__ import annotations

import bisect
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ddpm_data.balance import class_probabilities, epoch_samples
from ddpm_data.config import OnError, ReaderConfig, ReaderMode  # noqa: F401 (re-exported)
from ddpm_data.manifest import Manifest, load_manifest, rebuild_hint, unchecked_shards_warning
from ddpm_data.remote import Location
from ddpm_data.rows import as_ranges, read_rows
from ddpm_data.shardformat import (FormatError, ShardEntry, decode_png, iter_shard, read_shard, sample_problems,
                                   shard_file_problem)


class ShardError(ValueError):
    """A shard or data.h5 is missing, truncated, or fails its checksum; the message names it."""


# ---------------------------------------------------------------- seeded order


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (numpy's SeedSequence mixes them well)."""
    state = np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


_CLASS_DRAWS, _PASS_ORDER, _SHARD_ORDER = 1, 2, 3  # stream tags for the seeds


def draw_classes(seed: int, part: int, batch: int, probabilities: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class labels (batch_size,) int64 of batch `batch` of `part`."""
    generator = _generator(seed, _CLASS_DRAWS, part, batch)
    return torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)


class ClassSequence:
    """Positions t = 0, 1, ... of one part's draws of one class: `units` (ranges of items) in passes.

    Pass k visits the units in a seeded order; each unit is cut into consecutive windows of
    `window` items (the whole unit when None), and each window's items are visited in a seeded
    order. So the item at position t is computed from t alone, in O(log units) time and without
    copying any order (`item`), and a unit can be read front to back holding one window at a time
    (stream mode, `walk`).
    """

    def __init__(self, units: list[range], seed: int, part: int, label: int, window: int | None = None):
        self.units, self.seed, self.part, self.label = units, seed, part, label
        self.length = sum(len(unit) for unit in units)
        if self.length == 0:
            raise ValueError("internal: empty class sequence")  # callers check sizes first
        self.window = window
        self._pass, self._order, self._starts = -1, [], []
        self._perm_key, self._perm = None, np.zeros(0, dtype=np.int64)

    def window_size(self, unit: int) -> int:
        """Items per window of `unit`."""
        return self.window or max(len(self.units[unit]), 1)

    def unit_order(self, pass_index: int) -> list[int]:
        if pass_index != self._pass:  # one pass cached: positions only move forward
            generator = _generator(self.seed, _PASS_ORDER, self.part, self.label, pass_index)
            self._pass = pass_index
            self._order = torch.randperm(len(self.units), generator=generator).tolist()
            self._starts = list(itertools.accumulate((len(self.units[u]) for u in self._order), initial=0))
        return self._order

    def window_order(self, pass_index: int, unit: int, window_index: int) -> np.ndarray:
        """The visiting order of one window (a permutation of its offsets). The last one asked for
        is cached: memory mode asks for the same one, its whole unit, draw after draw."""
        key = (pass_index, unit, window_index)
        if key != self._perm_key:
            size = self.window_size(unit)
            count = min(size, len(self.units[unit]) - window_index * size)
            # window 0 keeps the seed of the whole-unit order used before windows (same batches as then)
            window_key = (window_index,) if window_index else ()
            generator = _generator(self.seed, _SHARD_ORDER, self.part, self.label, pass_index, unit, *window_key)
            self._perm_key, self._perm = key, torch.randperm(count, generator=generator).numpy()
        return self._perm

    def locate(self, position: int) -> tuple[int, int, int]:
        """(pass, unit, offset within the unit in visiting order) of `position`."""
        pass_index, within = divmod(position, self.length)
        order = self.unit_order(pass_index)
        slot = bisect.bisect_right(self._starts, within) - 1  # the rightmost start <= within: a non-empty unit
        return pass_index, order[slot], within - self._starts[slot]

    def item(self, position: int) -> int:
        """The item drawn at `position`."""
        pass_index, unit, offset = self.locate(position)
        size = self.window_size(unit)
        window_index, inside = divmod(offset, size)
        return self.units[unit][window_index * size + int(self.window_order(pass_index, unit, window_index)[inside])]

    def take(self, start: int, count: int) -> list[int]:
        """Items at positions start .. start + count - 1 (each O(log units): no order is copied)."""
        return [self.item(position) for position in range(start, start + count)]

    def walk(self, start: int) -> Iterator[tuple[int, int, int]]:
        """From position `start` on, forever: (pass, unit, offset to start at within the unit)."""
        pass_index, unit, offset = self.locate(start)
        slot = self.unit_order(pass_index).index(unit)
        while True:
            for current in self.unit_order(pass_index)[slot:]:
                if len(self.units[current]):
                    yield pass_index, current, offset
                offset = 0
            pass_index, slot = pass_index + 1, 0


def split_units(unit_sizes: list[int], part: int, parts: int) -> list[range]:
    """Part `part`'s share of a class stored as units (shards) of `unit_sizes` items.

    Returns per unit the item positions (within the unit) this part owns, as a range (O(1)
    memory): whole units i mod parts == part when there are at least `parts` units, else every
    parts-th item of the class.
    """
    if len(unit_sizes) >= parts:
        return [range(n) if i % parts == part else range(0) for i, n in enumerate(unit_sizes)]
    owned, first = [], 0
    for n in unit_sizes:
        owned.append(range((part - first) % parts, n, parts))
        first += n
    return owned


# ---------------------------------------------------------------- shared bookkeeping


class _Position:
    """Per part: batches made and positions reached in each class sequence (the draws, plus the
    positions of shards skipped as bad); plain ints so it survives weights_only loads."""

    def __init__(self, parts: int, classes: int):
        self.batches = [0] * parts
        self.consumed = [[0] * classes for _ in range(parts)]
        self.delivered = 0

    def advance(self, part: int, consumed: list[int]) -> None:
        """One batch of `part` delivered; its class sequences now stand at `consumed`."""
        self.batches[part] += 1
        self.consumed[part] = list(consumed)
        self.delivered += 1


class _ReaderBase:
    """Shared API: iteration, `epoch_length`, `state_dict()`, `load_state_dict()`."""

    mode: ReaderMode

    def __init__(self, manifest: Manifest, config: ReaderConfig, counts: dict[str, int], rank: int, world_size: int,
                 parts: int):
        self.manifest, self.config, self.rank, self.world_size = manifest, config, rank, world_size
        self.classes = list(manifest.classes)
        self.counts = counts  # {class: training images read}
        self.probabilities = class_probabilities(config.balance, counts)
        self.epoch_samples = epoch_samples(self.probabilities, counts)
        self.epoch_length = math.ceil(self.epoch_samples / (config.batch_size * world_size))
        self._probs = torch.tensor([self.probabilities[c] for c in self.classes], dtype=torch.float64)
        self.parts = parts
        self.position = _Position(parts, len(self.classes))
        self.skipped: list[dict[str, str]] = []
        unchecked = unchecked_shards_warning(manifest)
        if unchecked is not None:
            warnings.warn(unchecked, stacklevel=3)

    def __iter__(self) -> "_ReaderBase":
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain ints/lists/strings: fits a torch.load(weights_only=True) checkpoint."""
        return {
            "mode": self.mode.value,
            "seed": self.config.seed,
            "balance": str(self.config.balance),
            "batch_size": self.config.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "delivered": self.position.delivered,
            "batches": list(self.position.batches),
            "consumed": [list(row) for row in self.position.consumed],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a reader with the same settings)."""
        mine = self.state_dict()
        for key in ("mode", "seed", "balance", "batch_size", "rank", "world_size"):
            if state.get(key) != mine[key]:
                raise ValueError(f"reader state: saved with {key}={state.get(key)!r}, this reader has {key}={mine[key]!r}; "
                                 f"resume with the same data options")
        if len(state["batches"]) != self.parts or any(len(row) != len(self.classes) for row in state["consumed"]):
            raise ValueError(f"reader state: saved for {len(state['batches'])} parts (ranks x workers), this reader "
                             f"has {self.parts}; resume with the same --workers")
        self.position.batches = [int(b) for b in state["batches"]]
        self.position.consumed = [[int(c) for c in row] for row in state["consumed"]]
        self.position.delivered = int(state["delivered"])
        self._restart()

    def _restart(self) -> None:
        """Drop any read-ahead so the next batch follows the restored position."""

    def close(self) -> None:
        """Stop worker processes, if any."""


# ---------------------------------------------------------------- memory mode


def load_split(shard_dir: Location, split: str = "val", limit: int | None = None,
               per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split: (uint8 (N, C, S, S) at stored size, int64 labels (N,)) in (label, key) order, from
    data.h5 when the folder is local, else from the split's tar shards (a URL). With `limit`,
    only that many rows spread evenly over the split are read: the rows
    `ddpm_model.train.make_val_set` keeps, so validation reads no more than it uses. With
    `per_class`, at most that many rows of each class, spread evenly over the class, so that
    start-up does not grow with the split."""
    manifest = load_manifest(shard_dir)
    if per_class is None:
        rows = _spread(0, manifest.num_samples(split), limit)
    else:
        counts = [manifest.counts.get(split, {}).get(name, 0) for name in manifest.classes]  # rows by label
        starts = np.cumsum([0, *counts[:-1]])
        rows = np.concatenate([_spread(int(start), count, per_class) for start, count in zip(starts, counts)])
    try:
        arrays = read_rows(manifest, split, as_ranges(rows))
    except FormatError as error:
        raise ShardError(f"{error}; {rebuild_hint(manifest.root, manifest.size)}") from error
    return torch.from_numpy(arrays.images), torch.from_numpy(arrays.labels)


def _spread(start: int, count: int, limit: int | None) -> np.ndarray:
    """Row numbers start .. start + count - 1, or `limit` of them spread evenly when there are more."""
    if limit is None or count <= limit:
        return np.arange(start, start + count)
    return start + torch.linspace(0, count - 1, limit).round().long().unique().numpy()


def rank_block(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of a class's `count` rows that `rank` owns in memory mode: a contiguous block."""
    return count * rank // world_size, count * (rank + 1) // world_size


class MemoryReader(_ReaderBase):
    """The rank's rows in memory (host or device); a batch is a gather of rows.

    Each rank reads only its own block of every drawn class (`rank_block`), so ranks on one machine
    hold one copy of the split between them, and start-up reads 1 / world_size of it per rank."""

    mode = ReaderMode.memory

    def __init__(self, manifest: Manifest, config: ReaderConfig, rank: int, world_size: int):
        counts = {name: manifest.counts.get(config.split, {}).get(name, 0) for name in manifest.classes}
        super().__init__(manifest, config, counts, rank, world_size, parts=1)
        _check_part_sizes(counts, self.probabilities, world_size, "ranks")
        ranges, blocks, first = [], [], 0
        for label, name in enumerate(self.classes):
            start, stop = rank_block(counts[name], rank, world_size)
            if self.probabilities[name] > 0:  # a class never drawn is not read
                ranges.append((first + start, first + stop))
                blocks.append((label, stop - start))
            first += counts[name]
        arrays = self._read(manifest, config, ranges)
        held = np.bincount(arrays.labels, minlength=len(self.classes))
        self._check_rows(manifest, config, arrays.labels, blocks, held)
        self.sequences, first = [None] * len(self.classes), 0
        for label, _ in blocks:
            self.sequences[label] = ClassSequence([range(first, first + int(held[label]))], config.seed, rank, label)
            first += int(held[label])
        self.device = torch.device(config.device)
        self.images = torch.from_numpy(arrays.images).to(self.device)
        self._pixels = arrays.images if self.device.type == "cpu" else None  # (N, C, S, S) uint8: the rank's rows

    def _read(self, manifest: Manifest, config: ReaderConfig, ranges: list[tuple[int, int]]) -> Any:
        """This rank's rows; a bad shard (at a URL: the rows come from the tar shards, each read
        whole and checked) raises ShardError, or with OnError.skip is warned about and left out."""
        skipped: list[dict[str, str]] | None = [] if config.on_error is OnError.skip and manifest.is_remote else None
        try:
            arrays = read_rows(manifest, config.split, ranges, skipped)
        except FormatError as error:
            fix = (f"rebuild with 'ddpm-data build --size {manifest.size}', {_SKIP_HINT}" if manifest.is_remote
                   else f"{rebuild_hint(manifest.root, manifest.size)}, or read the tar shards with --mode stream")
            raise ShardError(f"{error}; {fix}") from error
        for bad in skipped or []:
            warnings.warn(f"{bad['path']}: {bad['reason']}; skipped (--skip-bad-shards)", stacklevel=4)
        self.skipped = list(skipped or [])
        return arrays

    def _check_rows(self, manifest: Manifest, config: ReaderConfig, labels: np.ndarray, blocks: list[tuple[int, int]],
                    held: np.ndarray) -> None:
        """The rows came in class order, as many per class as asked for, less the skipped shards'."""
        expected = np.repeat([label for label, _ in blocks], [int(held[label]) for label, _ in blocks])
        if not np.array_equal(labels, expected) or any(held[label] > size for label, size in blocks):
            raise ShardError(f"{manifest.hdf5_path}: /{config.split} rows are not in class order as the manifest "
                             f"counts say; {rebuild_hint(manifest.root, manifest.size)}")
        empty = [self.classes[label] for label, size in blocks if size and not held[label]]
        if empty:
            raise ShardError(f"class {', '.join(empty)}: every shard holding this rank's rows is bad "
                             f"({', '.join(bad['path'] for bad in self.skipped)}); rebuild with "
                             f"'ddpm-data build --size {manifest.size}'")

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        position = self.position
        labels = draw_classes(self.config.seed, self.rank, position.batches[0], self._probs, self.config.batch_size)
        drawn = labels.tolist()
        consumed = list(position.consumed[0])
        rows = []
        for label in drawn:  # the t-th draw of a class is position t of its sequence: O(log units) each
            rows.append(self.sequences[label].item(consumed[label]))
            consumed[label] += 1
        position.advance(0, consumed)
        if self.device.type == "cpu":  # numpy's take: one copy per row, no thread pool (torch's waits on busy cores)
            return torch.from_numpy(np.take(self._pixels, rows, axis=0)), labels
        return self.images.index_select(0, torch.tensor(rows, device=self.device)), labels.to(self.device)


def _check_part_sizes(counts: dict[str, int], probabilities: dict[str, float], parts: int, what: str) -> None:
    small = [f"{name} ({n})" for name, n in counts.items() if probabilities[name] > 0 and n < parts]
    if small:
        raise ValueError(f"class {', '.join(small)} has fewer training images than {what} ({parts}); "
                         f"every part needs at least one image of each class: use fewer --workers or ranks")


# ---------------------------------------------------------------- stream mode

SHUFFLE_WINDOW = 64  # stream mode: samples of a shard held and shuffled together (per class and part)


@dataclass(frozen=True)
class _Shard:
    entry: ShardEntry
    path: Location    # absolute path or URL
    label: int


_SKIP_HINT = "or pass --skip-bad-shards to leave it out"


class _ShardSource:
    """One part's shard reads, a window of samples at a time (`windows`).

    A bad shard raises ShardError, or under OnError.skip ends its windows early: it is remembered
    (not read again by this part) and queued in `found` for the reader to report. `bad` starts
    with the shards found bad when the reader opened (several ranks: see StreamReader).
    """

    def __init__(self, manifest: Manifest, on_error: OnError, bad: dict[str, str]):
        self.manifest, self.on_error = manifest, on_error
        self.root, self.size = manifest.root, manifest.size
        self.bad: dict[str, str] = dict(bad)
        self.found: list[dict[str, str]] = []  # bad shards not yet reported

    def windows(self, shard: _Shard, items: range, window: int, offset: int) -> Iterator[tuple[int, list | None]]:
        """(first offset of the window, its samples in file order) for the windows of `items` (file
        positions this part owns) from the one holding `offset` on; (offset, None) ends them when the
        shard is bad. Samples are released once checked: each window but the last against the
        samples' own png_sha256, the last (or the only one, for a unit of at most `window` items, or
        a set without per-sample checksums) once the whole file matched its sha256 and count."""
        reached = [offset // window * window]
        if str(shard.path) in self.bad:
            yield reached[0], None
            return
        try:
            if len(items) <= window:
                samples = read_shard(self.root, shard.entry)
                yield 0, [samples[i] for i in items]
            else:
                yield from self._stream(shard, items, window, reached)
        except FormatError as error:
            if self.on_error is not OnError.skip:
                raise ShardError(f"{error}; rebuild with 'ddpm-data build --size {self.size}', {_SKIP_HINT}") from error
            self.bad[str(shard.path)] = error.reason
            self.found.append({"path": str(shard.path), "reason": error.reason})
            yield reached[0], None

    def _stream(self, shard: _Shard, items: range, window: int, reached: list[int]) -> Iterator[tuple[int, list]]:
        samples = iter_shard(shard.path, shard.entry.sha256)
        last, index = (len(items) - 1) // window * window, -1
        for base in range(reached[0], len(items), window):
            wanted, held = items[base:base + window], []
            while len(held) < len(wanted):
                key, members = next(samples, (None, None))
                if key is None:
                    raise FormatError(shard.path, f"holds {index + 1} samples, the manifest says {shard.entry.count}")
                index += 1
                if index not in wanted:
                    continue
                problems = [] if base == last else sample_problems(key, members, shard.entry.class_name, shard.label,
                                                                   checksums=True)
                if problems:
                    raise FormatError(shard.path, f"sample {key}: {problems[0]}")
                held.append((key, members))
            if base == last:  # read to the end: the file's sha256 covers the last window
                index += sum(1 for _ in samples)
                if index + 1 != shard.entry.count:
                    raise FormatError(shard.path, f"holds {index + 1} samples, the manifest says {shard.entry.count}")
            yield base, held
            reached[0] = base + window

    def take_found(self) -> list[dict[str, str]]:
        found, self.found = self.found, []
        return found


def _decode_sample(key: str, members: dict[str, bytes], shard: _Shard, shape: tuple[int, int, int]) -> np.ndarray:
    """One sample -> uint8 (C, S, S); ShardError naming the shard when it breaks the format."""
    where = f"{shard.path}: sample {key}"
    problems = sample_problems(key, members, shard.entry.class_name, shard.label)
    if problems:
        raise ShardError(f"{where}: {problems[0]}; rebuild with 'ddpm-data build'")
    try:
        return decode_png(members["png"], shape)
    except FormatError as error:
        raise ShardError(f"{where}: .png {error.reason}; rebuild with 'ddpm-data build'") from error


class _ClassStream:
    """Pixels of one class for one part, from sequence position `position` on.

    `position` counts the positions passed: the draws, plus those of shards skipped as bad, so a
    reader resumed at `position` passes over the same shards.
    """

    def __init__(self, sequence: ClassSequence, shards: list[_Shard], source: _ShardSource, class_name: str,
                 shape: tuple[int, int, int], start: int):
        self.sequence, self.shards, self.source = sequence, shards, source
        self.class_name, self.shape, self.position = class_name, shape, start
        self._pixels = self._walk(start)

    def __next__(self) -> np.ndarray:
        return next(self._pixels)

    def _walk(self, start: int) -> Iterator[np.ndarray]:
        for pass_index, unit, offset in self.sequence.walk(start):
            shard, items, size = self.shards[unit], self.sequence.units[unit], self.sequence.window_size(unit)
            for base, samples in self.source.windows(shard, items, size, offset):
                if samples is None:  # bad: pass over the unit's positions not yet drawn
                    self.position += len(items) - max(offset, base)
                    self._check_some_usable()
                    break
                order = self.sequence.window_order(pass_index, unit, base // size)
                for inside in order[max(offset - base, 0):]:
                    self.position += 1
                    yield _decode_sample(*samples[inside], shard, self.shape)

    def _check_some_usable(self) -> None:
        owned = [str(self.shards[unit].path) for unit, items in enumerate(self.sequence.units) if items]
        if all(path in self.source.bad for path in owned):
            # fewer parts can help only when other parts read shards of this class that are not bad
            others = any(str(shard.path) not in owned and str(shard.path) not in self.source.bad for shard in self.shards)
            raise ShardError(f"class {self.class_name}: every shard this reader part reads is bad "
                             f"({', '.join(owned)}); rebuild with "
                             f"'ddpm-data build --size {self.source.size}'" + (", or use fewer --workers" if others else ""))


class _PartStream:
    """Batches of one part (one rank x worker), from its start position on."""

    def __init__(self, reader: "StreamReader", part: int):
        self.config, self.part, self.probs = reader.config, part, reader._probs
        self.source = _ShardSource(reader.manifest, reader.config.on_error, reader.bad_at_open)
        self.shape = (reader.manifest.channels, reader.manifest.stored_size, reader.manifest.stored_size)
        self.shards, self.classes = reader.shards, reader.classes
        self.sequences = [
            ClassSequence(split_units([s.entry.count for s in class_shards], part, reader.total_parts),
                          reader.config.seed, part, label, reader.window)
            if self.probs[label] > 0 else None
            for label, class_shards in enumerate(self.shards)
        ]

    def batches(self, batch: int, consumed: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int], list]]:
        """(uint8 (N, C, S, S), int64 labels (N,), positions per class after it, bad shards found) forever,
        starting at batch number `batch` with the class sequences at `consumed`."""
        streams = {label: _ClassStream(seq, self.shards[label], self.source, self.classes[label], self.shape,
                                       consumed[label])
                   for label, seq in enumerate(self.sequences) if seq}
        while True:
            labels = draw_classes(self.config.seed, self.part, batch, self.probs, self.config.batch_size)
            pixels = np.stack([next(streams[label]) for label in labels.tolist()])
            positions = [streams[label].position if label in streams else consumed[label]
                         for label in range(len(consumed))]
            yield torch.from_numpy(pixels), labels, positions, self.source.take_found()
            batch += 1


class _WorkerDataset(torch.utils.data.IterableDataset):
    """Each DataLoader worker plays one part; `rotation` realigns workers after a resume."""

    def __init__(self, reader: "StreamReader", rotation: int):
        self.reader, self.rotation = reader, rotation

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info else 1
        local = ((info.id if info else 0) + self.rotation) % workers
        return self.reader.part_batches(local)


class StreamReader(_ReaderBase):
    """Tar shards read by this rank's parts (DataLoader workers), each opening only its own shards.

    At open, a local folder's shards that this rank reads are looked at (`shard_file_problem`: size
    and end blocks, no hashing); a URL's are not (each look would be a request: a missing or broken
    one surfaces when read). With one rank a shard found missing or truncated at open is left out of
    `counts`; with several, counts stay as the manifest says (every rank must agree on the
    probabilities and the epoch) and its positions are passed over like a shard found bad when read.
    """

    mode = ReaderMode.stream

    def __init__(self, manifest: Manifest, config: ReaderConfig, rank: int, world_size: int):
        workers = max(config.workers, 1)
        self.total_parts = world_size * workers
        self.window = SHUFFLE_WINDOW if manifest.sample_checksums else None  # else: whole shards, checked first
        self._skipped: list[dict[str, str]] = []
        self.bad_at_open: dict[str, str] = {}
        self.shards = self._usable_shards(manifest, config, range(rank * workers, (rank + 1) * workers),
                                          drop=world_size == 1)
        counts = {name: sum(s.entry.count for s in self.shards[label]) for label, name in enumerate(manifest.classes)}
        super().__init__(manifest, config, counts, rank, world_size, parts=workers)
        self.skipped = self._skipped
        _check_part_sizes(counts, self.probabilities, self.total_parts, "ranks x workers")
        self.device = torch.device(config.device)
        self._loader_iter = None

    def _usable_shards(self, manifest: Manifest, config: ReaderConfig, parts: range, drop: bool) -> list[list[_Shard]]:
        """The split's shards per label. A local shard this rank reads that is missing or truncated
        raises now, or is skipped: dropped (`drop`) or marked bad. Contents are checked when read."""
        shards: list[list[_Shard]] = [[] for _ in manifest.classes]
        for entry in manifest.shards:
            if entry.split == config.split:
                label = manifest.label(entry.class_name)
                shards[label].append(_Shard(entry, manifest.file(entry.path), label))
        if manifest.is_remote:
            return shards
        for label, class_shards in enumerate(shards):
            mine = {unit for part in parts
                    for unit, items in enumerate(split_units([s.entry.count for s in class_shards], part,
                                                             self.total_parts)) if items}
            bad = []
            for unit in sorted(mine):
                shard = class_shards[unit]
                reason = shard_file_problem(shard.path)
                if reason is None:
                    continue
                if config.on_error is not OnError.skip:
                    raise ShardError(f"{shard.path}: {reason}; rebuild with 'ddpm-data build --size {manifest.size}', "
                                     f"{_SKIP_HINT}")
                self._report_skipped([{"path": str(shard.path), "reason": reason}], stacklevel=5)
                self.bad_at_open[str(shard.path)] = reason
                bad.append(unit)
            if drop:
                shards[label] = [shard for unit, shard in enumerate(class_shards) if unit not in bad]
        return shards
    def _report_skipped(self, found: list[dict[str, str]], stacklevel: int) -> None:
        for bad in found:
            if all(bad["path"] != known["path"] for known in self._skipped):
                self._skipped.append(bad)
                warnings.warn(f"{bad['path']}: {bad['reason']}; skipped (--skip-bad-shards)", stacklevel=stacklevel)

    def part_batches(self, local: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, list[int], list]]:
        """Batches of this rank's `local`-th part (a worker), from its saved position."""
        stream = _PartStream(self, self.rank * self.parts + local)
        for images, labels, positions, found in stream.batches(self.position.batches[local],
                                                               self.position.consumed[local]):
            yield images, labels, local, positions, found

    def _iterator(self):
        if self.config.workers == 0:
            return self.part_batches(0)
        dataset = _WorkerDataset(self, rotation=self.position.delivered % self.parts)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.config.workers,
                                             pin_memory=self.device.type == "cuda")
        return iter(loader)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._loader_iter is None:
            self._loader_iter = self._iterator()
        images, labels, local, positions, found = next(self._loader_iter)
        expected = self.position.delivered % self.parts
        if int(local) != expected:
            raise RuntimeError(f"internal: batch from worker {int(local)}, expected {expected} (DataLoader order changed)")
        self._report_skipped(found, stacklevel=3)
        self.position.advance(expected, [int(p) for p in positions])
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _restart(self) -> None:
        self.close()

    def close(self) -> None:
        self._loader_iter = None  # a DataLoader iterator shuts its workers down when collected


# ---------------------------------------------------------------- entry point


def split_bytes(manifest: Manifest, split: str = "train") -> int:
    """Bytes of the split's pixels at stored size (what memory mode holds)."""
    return manifest.num_samples(split) * manifest.channels * manifest.stored_size**2


def choose_mode(manifest: Manifest, config: ReaderConfig) -> ReaderMode:
    """`config.mode`, with auto resolved: memory when the split fits the memory budget."""
    if config.mode is not ReaderMode.auto:
        return config.mode
    fits = split_bytes(manifest, config.split) <= config.memory_budget_mb * 2**20
    return ReaderMode.memory if fits else ReaderMode.stream


_READERS = {ReaderMode.memory: MemoryReader, ReaderMode.stream: StreamReader}


def open_reader(shard_dir: Location, config: ReaderConfig, rank: int = 0, world_size: int = 1) -> _ReaderBase:
    """An endless iterator of (uint8 (N, C, S, S) at stored size, int64 labels (N,)) on config.device.

    `rank` / `world_size` come from the caller (torch.distributed, if used); every rank gets a
    disjoint part of each class. Has `epoch_length` (batches per rank per epoch, see balance.py),
    `mode` (resolved), `probabilities`, `counts`, `skipped`, `state_dict()`, `load_state_dict()`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    manifest = load_manifest(shard_dir)
    return _READERS[choose_mode(manifest, config)](manifest, config, rank, world_size)
