"""Training batches from a shard folder: `open_reader` (stream | memory | auto) and `load_split`.

Both modes draw the same way. The sample stream is cut into *parts*, one per (rank, loader
worker); part p of P owns a disjoint subset of every class: whole shards (shard i goes to part
i mod P) when the class has at least P shards, otherwise every P-th sample of the class, so no part
is empty and no sample is read by two parts. A part makes batch j by drawing `batch_size` classes
from the class probabilities (balance.py) with a generator seeded by (seed, part, j); the t-th
draw of class c is position t of the part's class-c sequence, which runs through its subset in
passes, each pass in a fresh seeded order. A position is therefore just the counts
(batches made, sequence positions per class) per part; `state_dict()` holds them and a restored
reader goes on with exactly the batches an uninterrupted one would have delivered.

- memory: the split is read once from data.h5 into host or device memory; a part is a rank and
  batches are index lookups there (fast; no worker processes).
- stream: tar shards are read by DataLoader workers, PNGs decoded there (`shardformat`, on
  webdataset's tar parsing); the shard order and mixing are ours because
  `ResampledShards`/`RandomMix` cannot restore a position without replaying the whole stream.
  Checks, and when: at open, that every shard file exists and is whole tar records ending in the
  end-of-archive blocks (`shard_file_problem`: no hashing); on every read of a shard, its sha256
  (computed while reading, once) and sample count, before any of its samples is used; per sample
  used, its key, .cls/.json and PNG shape. A shard failing at open raises ShardError naming it, or
  with `OnError.skip` is left out of `counts` and listed in `skipped`. One failing when read
  raises ShardError naming it, or with `OnError.skip` is listed in `skipped` (and warned about)
  when the batch that passed over it is delivered; its positions are passed over, so `counts` and
  the class probabilities stay as opened and a resumed reader passes over the same positions.
- auto: memory when the split fits `memory_budget_mb`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ddpm_data.balance import class_probabilities, epoch_samples
from ddpm_data.config import OnError, ReaderConfig, ReaderMode  # noqa: F401 (re-exported)
from ddpm_data.manifest import Manifest, load_manifest, sha256_file
from ddpm_data.shardformat import (FormatError, ShardEntry, decode_png, read_hdf5_split, read_shard, sample_problems,
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
    """Positions t = 0, 1, ... of one part's draws of one class: `units` (lists of items) in passes.

    Pass k visits the units in a seeded order and each unit's items in a seeded order, so the
    item at position t is computed from t alone.
    """

    def __init__(self, units: list[list[int]], seed: int, part: int, label: int):
        self.units, self.seed, self.part, self.label = units, seed, part, label
        self.length = sum(len(unit) for unit in units)
        if self.length == 0:
            raise ValueError("internal: empty class sequence")  # callers check sizes first
        self._pass, self._units, self._items = -1, [], {}

    def unit_order(self, pass_index: int) -> list[int]:
        if pass_index != self._pass:  # one pass cached: positions only move forward
            generator = _generator(self.seed, _PASS_ORDER, self.part, self.label, pass_index)
            self._pass, self._items = pass_index, {}
            self._units = torch.randperm(len(self.units), generator=generator).tolist()
        return self._units

    def item_order(self, pass_index: int, unit: int) -> list[int]:
        self.unit_order(pass_index)
        if unit not in self._items:
            items = self.units[unit]
            generator = _generator(self.seed, _SHARD_ORDER, self.part, self.label, pass_index, unit)
            self._items[unit] = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
        return self._items[unit]

    def walk(self, start: int) -> Iterator[tuple[int, list[int]]]:
        """From position `start` on, forever: (unit, items of that unit in draw order)."""
        pass_index, skip = divmod(start, self.length)
        while True:
            for unit in self.unit_order(pass_index):
                count = len(self.units[unit])
                if skip >= count:
                    skip -= count
                    continue
                yield unit, self.item_order(pass_index, unit)[skip:]
                skip = 0
            pass_index += 1

    def take(self, start: int, count: int) -> list[int]:
        """Items at positions start .. start + count - 1."""
        out: list[int] = []
        for _, items in self.walk(start):
            out.extend(items[: count - len(out)])
            if len(out) == count:
                return out
        raise AssertionError("unreachable")  # walk() never ends


def split_units(unit_sizes: list[int], part: int, parts: int) -> list[list[int]]:
    """Part `part`'s share of a class stored as units (shards) of `unit_sizes` items.

    Returns per unit the item positions (within the unit) this part owns: whole units i mod
    parts == part when there are at least `parts` units, else every parts-th item of the class.
    """
    if len(unit_sizes) >= parts:
        return [list(range(n)) if i % parts == part else [] for i, n in enumerate(unit_sizes)]
    owned, first = [], 0
    for n in unit_sizes:
        owned.append([j for j in range(n) if (first + j) % parts == part])
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


def _read_hdf5(manifest: Manifest, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    path, rebuild = manifest.hdf5_path, f"run 'ddpm-data build --size {manifest.size}' again"
    expected = manifest.hdf5.get("sha256")
    if path.is_file() and expected and sha256_file(path) != expected:
        raise ShardError(f"{path}: fails its sha256 checksum (truncated or modified); {rebuild}, "
                         f"or read the tar shards with --mode stream")
    try:
        arrays = read_hdf5_split(path, split, (manifest.channels, manifest.stored_size, manifest.stored_size))
    except FormatError as error:
        raise ShardError(f"{error}; {rebuild}") from error
    return torch.from_numpy(arrays.images), torch.from_numpy(arrays.labels)


def load_split(shard_dir: str | Path, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split from data.h5: (uint8 (N, C, S, S) at stored size, int64 labels (N,))."""
    return _read_hdf5(load_manifest(shard_dir), split)


class MemoryReader(_ReaderBase):
    mode = ReaderMode.memory

    def __init__(self, manifest: Manifest, config: ReaderConfig, rank: int, world_size: int):
        images, labels = _read_hdf5(manifest, config.split)
        counts = {name: int((labels == label).sum()) for label, name in enumerate(manifest.classes)}
        super().__init__(manifest, config, counts, rank, world_size, parts=1)
        _check_part_sizes(counts, self.probabilities, world_size, "ranks")
        self.device = torch.device(config.device)
        self.images, self.labels = images.to(self.device), labels
        self.sequences = []
        for label in range(len(self.classes)):
            owned = torch.nonzero(labels == label).flatten().tolist()[rank::world_size]
            self.sequences.append(ClassSequence([owned], config.seed, rank, label) if owned else None)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        position = self.position
        labels = draw_classes(self.config.seed, self.rank, position.batches[0], self._probs, self.config.batch_size)
        drawn = labels.tolist()
        rows = [0] * len(drawn)
        for label in set(drawn):
            slots = [i for i, value in enumerate(drawn) if value == label]
            for slot, row in zip(slots, self.sequences[label].take(position.consumed[0][label], len(slots))):
                rows[slot] = row
        position.advance(0, [count + drawn.count(label) for label, count in enumerate(position.consumed[0])])
        # index_select: ~20x faster than advanced indexing for whole rows on the CPU
        return self.images.index_select(0, torch.tensor(rows, device=self.device)), labels.to(self.device)


def _check_part_sizes(counts: dict[str, int], probabilities: dict[str, float], parts: int, what: str) -> None:
    small = [f"{name} ({n})" for name, n in counts.items() if probabilities[name] > 0 and n < parts]
    if small:
        raise ValueError(f"class {', '.join(small)} has fewer training images than {what} ({parts}); "
                         f"every part needs at least one image of each class: use fewer --workers or ranks")


# ---------------------------------------------------------------- stream mode


@dataclass(frozen=True)
class _Shard:
    entry: ShardEntry
    path: Path    # absolute
    label: int


_SKIP_HINT = "or pass --skip-bad-shards to leave it out"


class _ShardSource:
    """One part's shard reads: each read checks the shard once (`shardformat.read_shard`).

    A bad shard raises ShardError, or under OnError.skip reads as None: it is remembered (not
    read again by this part) and queued in `found` for the reader to report.
    """

    def __init__(self, root: Path, on_error: OnError, size: int):
        self.root, self.on_error, self.size = root, on_error, size
        self.bad: dict[Path, str] = {}
        self.found: list[dict[str, str]] = []  # bad shards not yet reported

    def samples(self, shard: _Shard) -> list[tuple[str, dict[str, bytes]]] | None:
        if shard.path in self.bad:
            return None
        try:
            return read_shard(self.root, shard.entry)
        except FormatError as error:
            if self.on_error is not OnError.skip:
                raise ShardError(f"{error}; rebuild with 'ddpm-data build --size {self.size}', {_SKIP_HINT}") from error
            self.bad[shard.path] = error.reason
            self.found.append({"path": str(shard.path), "reason": error.reason})
            return None

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
        for unit, items in self.sequence.walk(start):
            shard = self.shards[unit]
            samples = self.source.samples(shard)
            if samples is None:
                self.position += len(items)
                self._check_some_usable()
                continue
            for item in items:
                self.position += 1
                yield _decode_sample(*samples[item], shard, self.shape)

    def _check_some_usable(self) -> None:
        owned = [self.shards[unit].path for unit, items in enumerate(self.sequence.units) if items]
        if all(path in self.source.bad for path in owned):
            # fewer parts can help only when other parts read shards of this class that are not bad
            others = any(shard.path not in owned and shard.path not in self.source.bad for shard in self.shards)
            raise ShardError(f"class {self.class_name}: every shard this reader part reads is bad "
                             f"({', '.join(str(path) for path in owned)}); rebuild with "
                             f"'ddpm-data build --size {self.source.size}'" + (", or use fewer --workers" if others else ""))


class _PartStream:
    """Batches of one part (one rank x worker), from its start position on."""

    def __init__(self, reader: "StreamReader", part: int):
        self.config, self.part, self.probs = reader.config, part, reader._probs
        self.source = _ShardSource(reader.manifest.root, reader.config.on_error, reader.manifest.size)
        self.shape = (reader.manifest.channels, reader.manifest.stored_size, reader.manifest.stored_size)
        self.shards, self.classes = reader.shards, reader.classes
        self.sequences = [
            ClassSequence(split_units([s.entry.count for s in class_shards], part, reader.total_parts),
                          reader.config.seed, part, label)
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
    mode = ReaderMode.stream

    def __init__(self, manifest: Manifest, config: ReaderConfig, rank: int, world_size: int):
        workers = max(config.workers, 1)
        self.shards = self._usable_shards(manifest, config)
        counts = {name: sum(s.entry.count for s in self.shards[label]) for label, name in enumerate(manifest.classes)}
        super().__init__(manifest, config, counts, rank, world_size, parts=workers)
        self.skipped = self._skipped
        self.total_parts = world_size * workers
        _check_part_sizes(counts, self.probabilities, self.total_parts, "ranks x workers")
        self.device = torch.device(config.device)
        self._loader_iter = None

    def _usable_shards(self, manifest: Manifest, config: ReaderConfig) -> list[list[_Shard]]:
        """The split's shards per label; a missing or truncated file is skipped or raises now, the
        contents are checked when read (see the module docstring)."""
        self._skipped: list[dict[str, str]] = []
        shards: list[list[_Shard]] = [[] for _ in manifest.classes]
        for entry in manifest.shards:
            if entry.split != config.split:
                continue
            shard = _Shard(entry, manifest.root / entry.path, manifest.label(entry.class_name))
            reason = shard_file_problem(shard.path)
            if reason is None:
                shards[shard.label].append(shard)
            elif config.on_error is OnError.skip:
                self._report_skipped([{"path": str(shard.path), "reason": reason}], stacklevel=4)
            else:
                raise ShardError(f"{shard.path}: {reason}; rebuild with 'ddpm-data build --size {manifest.size}', "
                                 f"{_SKIP_HINT}")
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


def open_reader(shard_dir: str | Path, config: ReaderConfig, rank: int = 0, world_size: int = 1) -> _ReaderBase:
    """An endless iterator of (uint8 (N, C, S, S) at stored size, int64 labels (N,)) on config.device.

    `rank` / `world_size` come from the caller (torch.distributed, if used); every rank gets a
    disjoint part of each class. Has `epoch_length` (batches per rank per epoch, see balance.py),
    `mode` (resolved), `probabilities`, `counts`, `skipped`, `state_dict()`, `load_state_dict()`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    manifest = load_manifest(shard_dir)
    return _READERS[choose_mode(manifest, config)](manifest, config, rank, world_size)
