"""Chosen rows of a split, from data.h5 when the folder is local (a missing data.h5 is an error
there, as every damaged file), else decoded from the tar shards.

Row i of a split is the i-th sample in (label, key) order: data.h5's row order, and the order of
the split's tar shards as the manifest lists them (sorted by path: class, then shard index)
followed by their samples. Callers ask for row ranges (memory mode: this rank's block of each
class), or spread-out rows (validation); only the shards or HDF5 chunks that hold them are read.

Checks on the way: data.h5 rows against their `pixel_sha256` (a file written before per-row
digests is hashed whole first); every tar shard that holds a wanted row is read to its end, so
its rows are kept only once the whole file matched its sha256 and sample count (a sample's own
`png_sha256` travels with it: it cannot tell a shard replaced by another valid shard). Failures
raise FormatError naming the file, or, given a `skipped` list, leave the shard's rows out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ddpm_data.manifest import Manifest, sha256_file
from ddpm_data.shardformat import (CHECKSUM_REASON, FormatError, ShardEntry, SplitArrays, decode_png, iter_hdf5_rows,
                                   iter_shard, read_shard, sample_problems)

Ranges = list[tuple[int, int]]   # [start, stop) row ranges, sorted and disjoint
HDF5_READ_ROWS = 1024            # rows read (and checked) per HDF5 call: bounds the temporary copy


def as_ranges(rows: np.ndarray) -> Ranges:
    """Sorted row numbers -> the [start, stop) runs they form."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks)]


def read_rows(manifest: Manifest, split: str, ranges: Ranges,
              skipped: list[dict[str, str]] | None = None) -> SplitArrays:
    """The rows of `ranges` of `split`: uint8 (N, C, S, S) images, labels, keys, in row order.

    FormatError for a bad file; with a `skipped` list, a bad tar shard is appended to it as
    {"path", "reason"} and its rows are left out instead (data.h5 is one file: it always raises)."""
    if manifest.is_remote:
        return _from_tars(manifest, split, ranges, skipped)
    return _from_hdf5(manifest, split, ranges)


def _allocate(manifest: Manifest, ranges: Ranges) -> np.ndarray:
    rows = sum(stop - start for start, stop in ranges)
    return np.empty((rows, manifest.channels, manifest.stored_size, manifest.stored_size), dtype=np.uint8)


def _from_hdf5(manifest: Manifest, split: str, ranges: Ranges) -> SplitArrays:
    path, shape = Path(manifest.hdf5_path), (manifest.channels, manifest.stored_size, manifest.stored_size)
    images, labels, keys, filled, total, checked = _allocate(manifest, ranges), [], [], 0, 0, False
    blocks = [slice(first, min(first + HDF5_READ_ROWS, stop)) for start, stop in ranges
              for first in range(start, stop, HDF5_READ_ROWS)]
    for block in iter_hdf5_rows(path, split, shape, blocks):
        if block.digests is None and not checked:  # written before per-row digests: hash the file once
            expected = manifest.hdf5.get("sha256")
            if expected and sha256_file(path) != expected:
                raise FormatError(path, CHECKSUM_REASON)
            checked = True
        bad = block.bad_rows()
        if bad:
            raise FormatError(path, f"/{split} row {bad[0]}: pixels {CHECKSUM_REASON}")
        images[filled:filled + len(block.labels)] = block.images
        filled, total = filled + len(block.labels), block.total
        labels.append(block.labels)
        keys.extend(block.keys)
    if filled != len(images):
        raise FormatError(path, f"/{split} holds {total} rows, fewer than the manifest's {manifest.num_samples(split)}")
    return SplitArrays(images, np.concatenate(labels) if labels else np.zeros(0, np.int64), tuple(keys),
                       manifest.num_samples(split))


def _shard_rows(manifest: Manifest, split: str) -> Iterator[tuple[ShardEntry, int]]:
    """(entry, row number of its first sample) for every shard of `split`, in row order."""
    first = 0
    for entry in manifest.shards:
        if entry.split == split:
            yield entry, first
            first += entry.count


def shard_samples(manifest: Manifest, entry: ShardEntry) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of one shard, each checked before it is yielded: against its `png_sha256` when
    the set has per-sample checksums (one sample in memory at a time; the file's sha256 is checked
    at its end), else after reading the whole shard against its file sha256. FormatError otherwise."""
    location, label = manifest.file(entry.path), manifest.label(entry.class_name)
    if not manifest.sample_checksums:
        yield from read_shard(manifest.root, entry)
        return
    count = 0
    for key, members in iter_shard(location, entry.sha256):
        problems = sample_problems(key, members, entry.class_name, label, checksums=True)
        if problems:
            raise FormatError(location, f"sample {key}: {problems[0]}")
        count += 1
        yield key, members
    if count != entry.count:
        raise FormatError(location, f"holds {count} samples, the manifest says {entry.count}")


def _shard_rows_wanted(manifest: Manifest, entry: ShardEntry, wanted: Ranges,
                       shape: tuple[int, int, int]) -> tuple[list[np.ndarray], list[str]]:
    """(pixels, keys) of the rows of one shard in `wanted` (absolute row numbers from 0 at the
    shard's first sample), returned only after the whole shard was read and checked."""
    images, keys = [], []
    for row, (key, members) in enumerate(shard_samples(manifest, entry)):
        if any(start <= row < stop for start, stop in wanted):
            try:
                images.append(decode_png(members.get("png", b""), shape))
            except FormatError as error:
                raise FormatError(manifest.file(entry.path), f"sample {key}: .png {error.reason}") from error
            keys.append(key)
    return images, keys


def _from_tars(manifest: Manifest, split: str, ranges: Ranges, skipped: list[dict[str, str]] | None) -> SplitArrays:
    shape = (manifest.channels, manifest.stored_size, manifest.stored_size)
    images, labels, keys, filled = _allocate(manifest, ranges), [], [], 0
    for entry, first in _shard_rows(manifest, split):
        wanted = [(max(start, first) - first, min(stop, first + entry.count) - first) for start, stop in ranges
                  if start < first + entry.count and stop > first]
        if not wanted:
            continue
        try:
            pixels, shard_keys = _shard_rows_wanted(manifest, entry, wanted, shape)
        except FormatError as error:
            if skipped is None:
                raise
            skipped.append({"path": str(manifest.file(entry.path)), "reason": error.reason})
            continue
        if pixels:
            images[filled:filled + len(pixels)] = np.stack(pixels)
        labels.extend([manifest.label(entry.class_name)] * len(pixels))
        keys.extend(shard_keys)
        filled += len(pixels)
    return SplitArrays(images[:filled], np.asarray(labels, dtype=np.int64), tuple(keys), manifest.num_samples(split))
