"""`ddpm-data verify`: recompute every checksum and decode every sample of a shard folder.

Each file is read once (`shardformat`): a shard's sha256 is computed while its samples are read.

Checks, per file: the SHA-256 recorded in the manifest; every tar sample has a decodable
`.png` of stored_size x stored_size in the manifest's mode, a `.cls` equal to its class label
and a `.json` sidecar naming that class (and, where the set has per-sample checksums, the PNG's
`png_sha256`); per-shard and per-class counts match the manifest; every HDF5 row has the right
shape, dtype and label, matches its `pixel_sha256` where present, and holds exactly the pixels
of the tar sample with the same key (and no key is missing on either side).

Each problem is charged to the file that is wrong, and to it alone: a damaged shard's samples
judge nothing else (its class is left out of the count check, and HDF5 rows of its class are not
blamed for missing from it), and a shard whose bytes match their recorded sha256 but not the
recorded sample count shows the manifest is wrong, not the shard. An empty or malformed recorded
sha256 is a problem of manifest.json; the file it belongs to is still read, and when its samples
differ from data.h5 whose own sha256 matches, the file without a checksum is blamed.

The folder may be a URL (remote.py): shards are streamed, and data.h5 is copied to a temporary
local file while it is hashed (h5py needs random access), then checked there. A URL cannot be
listed for shards the manifest lost; only a local folder is.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ddpm_data.manifest import (MANIFEST_NAME, SPLITS, Manifest, ManifestError, checksum_problem, load_manifest,
                                sha256_file)
from ddpm_data.redact import public
from ddpm_data.remote import Location, RemoteError, is_url, join, open_input
from ddpm_data.shardformat import (FormatError, ShardEntry, decode_png, iter_shard, key_prefix,
                                   pixel_digest, read_hdf5_split, sample_problems)

HDF5_BLOCK = 256  # rows read at a time
SHARD_NAME = re.compile(r"(?P<split>train|val)-(?P<class>.+)-\d{6}\.tar")  # shardformat.shard_name
@dataclass(frozen=True)
class Problem:
    """One defect: the file (relative to the shard folder) and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    """Result of `verify`: `ok` when `problems` is empty."""

    folder: Location
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    samples_checked: int = 0   # tar samples + HDF5 rows decoded

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_files(self) -> list[str]:
        """Each defective file once, in order of discovery."""
        return list(dict.fromkeys(problem.path for problem in self.problems))


class _Checker:
    def __init__(self, manifest: Manifest, report: VerifyReport) -> None:
        self.manifest, self.report = manifest, report
        self.shape = (manifest.channels, manifest.stored_size, manifest.stored_size)
        # pixel digests and counts of the intact shards only: a damaged shard judges no other file
        self.tar_pixels: dict[str, dict[str, bytes]] = {split: {} for split in SPLITS}  # split -> key -> digest
        self.tar_counts: dict[str, dict[str, int]] = {split: defaultdict(int) for split in SPLITS}
        self.damaged_classes: set[tuple[str, str]] = set()  # (split, class) with a damaged shard
        self.unverified: dict[tuple[str, str], str] = {}  # (split, key) -> its shard, which has no valid sha256
        self.hdf5_verified = False            # data.h5 matched a well-formed recorded sha256

    def problem(self, path: str, message: str) -> None:
        self.report.problems.append(Problem(path, message))

    def check_shard(self, entry: ShardEntry, listed: bool = True) -> None:
        """Read the shard once: each sample as it comes, the sha256 when the file is exhausted.

        Its pixel digests and count are kept only when the shard has no problem at all (a flipped
        bit may still decode, or split a sample in two). A shard the manifest does not list
        (`listed=False`) has no sha256 or count to check."""
        self.report.files_checked += 1
        label, digests, problems_before = self.manifest.label(entry.class_name), {}, len(self.report.problems)
        unverified = listed and checksum_problem(entry.sha256)
        if unverified:
            self.problem(MANIFEST_NAME, f"shard {entry.path}: {unverified}; rebuild the folder with 'ddpm-data build'")
            problems_before += 1
        try:
            for key, members in iter_shard(self.manifest.file(entry.path), None if unverified else entry.sha256):
                if key in digests or key in self.tar_pixels[entry.split]:
                    self.problem(entry.path, f"sample {key}: key appears twice in split {entry.split}")
                digests[key] = self.check_sample(entry, label, key, members)
        except FormatError as error:  # ChecksumError, missing or unreadable
            self.problem(entry.path, error.reason)
        if len(self.report.problems) > problems_before:
            self.damaged_classes.add((entry.split, entry.class_name))
            return
        if listed and len(digests) != entry.count:  # the bytes are the ones recorded: the count is wrong
            self.problem(MANIFEST_NAME, f"shard {entry.path}: count {entry.count}, but the shard (whose sha256 "
                                        f"matches) holds {len(digests)} samples")
        self.tar_pixels[entry.split].update({key: d for key, d in digests.items() if d is not None})
        if unverified:
            self.unverified.update({(entry.split, key): entry.path for key in digests})
        self.tar_counts[entry.split][entry.class_name] += len(digests)

    def check_sample(self, entry: ShardEntry, label: int, key: str, members: dict[str, bytes]) -> bytes | None:
        """Check one tar sample; returns its pixel digest, None when its PNG is missing or bad."""
        self.report.samples_checked += 1
        for reason in sample_problems(key, members, entry.class_name, label, self.manifest.sample_checksums):
            self.problem(entry.path, f"sample {key}: {reason}")
        if "png" not in members:
            return None
        try:
            return pixel_digest(decode_png(members["png"], self.shape))
        except FormatError as error:
            self.problem(entry.path, f"sample {key}: .png {error.reason}")
            return None

    def check_counts(self) -> None:
        for split in SPLITS:
            for name in self.manifest.classes:
                if (split, name) in self.damaged_classes:
                    continue
                found, expected = self.tar_counts[split].get(name, 0), self.manifest.counts.get(split, {}).get(name, 0)
                if found != expected:
                    self.problem(MANIFEST_NAME, f"counts[{split}][{name}] = {expected}, shards hold {found}")

    def check_hdf5(self) -> None:
        relative = self.manifest.hdf5["path"]
        self.report.files_checked += 1
        try:
            with _local_copy(self.manifest.hdf5_path) as (path, digest):
                expected = self.manifest.hdf5.get("sha256")
                unverified = checksum_problem(expected)
                if unverified:
                    self.problem(MANIFEST_NAME, f"hdf5 {relative}: {unverified}; rebuild the folder with 'ddpm-data build'")
                elif digest != expected:
                    self.problem(relative, "sha256 differs from the manifest (file changed or corrupted)")
                else:
                    self.hdf5_verified = True
                for split in SPLITS:
                    try:
                        self.check_hdf5_split(path, relative, split)
                    except FormatError as error:
                        self.problem(relative, error.reason)
        except RemoteError as error:
            self.problem(relative, error.reason)

    def expected_rows(self, split: str) -> tuple[int, str]:
        """Rows /{split} must hold: what its intact shards hold (the manifest's counts may be the
        wrong file), or the manifest's count when a shard of the split is damaged."""
        if any(damaged == split for damaged, _ in self.damaged_classes):
            return self.manifest.num_samples(split), "the manifest says"
        return sum(self.tar_counts[split].values()), "the tar shards hold"

    def check_unlisted_shards(self) -> None:
        """A shard in the folder that the manifest does not list: the manifest lost it. Its samples
        are still read, so the HDF5 rows it holds are not blamed for lacking a tar sample. Only a
        local folder is listed."""
        if not isinstance(self.manifest.root, Path):
            return
        listed = {entry.path for entry in self.manifest.shards}
        for path in sorted(self.manifest.root.glob("*.tar")):
            match = SHARD_NAME.fullmatch(path.name)
            if path.name in listed or match is None or match["class"] not in self.manifest.classes:
                continue
            self.problem(MANIFEST_NAME, f"does not list the shard {path.name} found in the folder")
            self.check_shard(ShardEntry(path.name, match["split"], match["class"], 0, ""), listed=False)

    def check_hdf5_split(self, path: Path, relative: str, split: str) -> None:
        """Every row of /{split}, HDF5_BLOCK rows at a time, against the tar samples."""
        n, source = self.expected_rows(split)
        tar_pixels, seen = self.tar_pixels[split], set()
        start, total = 0, None
        while total is None or start < total:
            block = read_hdf5_split(path, split, self.shape, slice(start, start + HDF5_BLOCK))
            total, start = block.total, start + HDF5_BLOCK
            if total != n:
                self.problem(relative, f"/{split} holds {total} rows, {source} {n}")
                return
            for pixels, label, key in zip(block.images, block.labels, block.keys):
                seen.add(key)
                self.check_hdf5_row(relative, split, pixels, int(label), key)
            if block.digests is None and self.manifest.sample_checksums and start == HDF5_BLOCK:
                self.problem(relative, f"/{split} lacks its pixel_sha256 dataset")
            for key in block.bad_rows():
                self.problem(relative, f"/{split} row {key}: pixels differ from their pixel_sha256")
        for key in sorted(set(tar_pixels) - seen):
            self.problem(relative, f"/{split}: tar sample {key} is missing")

    def check_hdf5_row(self, relative: str, split: str, pixels: np.ndarray, label: int, key: str) -> None:
        self.report.samples_checked += 1
        classes = self.manifest.classes
        if not 0 <= label < len(classes) or not key.startswith(key_prefix(classes[label])):
            self.problem(relative, f"/{split} row {key}: label {label} does not match the key")
        digest = self.tar_pixels[split].get(key)
        if digest is None:
            if not 0 <= label < len(classes) or (split, classes[label]) not in self.damaged_classes:
                self.problem(relative, f"/{split} row {key}: no tar sample with this key")
        elif digest != pixel_digest(pixels):
            if (split, key) in self.unverified and self.hdf5_verified:  # the file without a checksum changed
                self.problem(self.unverified[split, key], f"sample {key}: pixels differ from {relative}, whose sha256 "
                                                   f"matches the manifest (this shard has none to check)")
            else:
                self.problem(relative, f"/{split} row {key}: pixels differ from the tar sample")


@contextlib.contextmanager
def _local_copy(location: Location) -> Iterator[tuple[Path, str]]:
    """(a local path of the file, its sha256): the file itself when local, else a temporary copy
    written while hashing it (removed afterwards). RemoteError when it cannot be read."""
    if isinstance(location, Path):
        if not location.is_file():
            raise RemoteError(location, "missing")
        yield location, sha256_file(location)
        return
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="ddpm-verify-") as folder:
        path = Path(folder) / "data.h5"
        with open_input(location) as source, open(path, "wb") as target:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                target.write(chunk)
        yield path, digest.hexdigest()


def verify(folder: Location) -> VerifyReport:
    """Check every file of the shard folder `folder` (a path or a URL); never raises for a damaged folder."""
    report = VerifyReport(folder=folder if is_url(folder) else Path(folder))
    try:
        manifest = load_manifest(folder)
    except ManifestError as error:  # its message starts with the manifest's path: given once, by Problem
        message = str(error)
        for shown in (public(join(folder, MANIFEST_NAME)), str(Path(folder) / MANIFEST_NAME)):
            message = message.removeprefix(f"{shown}: ")  # the path or URL, given once by Problem
        report.problems.append(Problem(MANIFEST_NAME, message))
        return report
    checker = _Checker(manifest, report)
    for entry in manifest.shards:
        checker.check_shard(entry)
    checker.check_unlisted_shards()
    checker.check_counts()
    checker.check_hdf5()
    return report
