"""`ddpm-data verify`: recompute every checksum and decode every sample of a shard folder.

Checks, per file: the SHA-256 recorded in the manifest; every tar sample has a decodable
`.png` of stored_size x stored_size in the manifest's mode, a `.cls` equal to its class label
and a `.json` sidecar naming that class; per-shard and per-class counts match the manifest;
every HDF5 row has the right shape, dtype and label, and holds exactly the pixels of the tar
sample with the same key (and no key is missing on either side).
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_data.manifest import MANIFEST_NAME, SPLITS, Manifest, ManifestError, load_manifest, sha256_file
from ddpm_data.stats import iter_tar_samples

HDF5_BLOCK = 256  # rows read at a time
_UNTRUSTED = b""  # pixel digest placeholder for a tar sample from a damaged shard


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

    folder: Path
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


def _pixel_digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).digest()


class _Checker:
    def __init__(self, manifest: Manifest, report: VerifyReport) -> None:
        self.manifest, self.report = manifest, report
        self.mode = "RGB" if manifest.channels == 3 else "L"
        self.tar_pixels: dict[str, dict[str, bytes]] = {split: {} for split in SPLITS}  # split -> key -> digest
        self.tar_counts: dict[str, dict[str, int]] = {split: defaultdict(int) for split in SPLITS}
        # a shard that is missing or unreadable: do not blame the manifest counts or the HDF5 file for it
        self.damaged_splits: set[str] = set()
        self.damaged_classes: set[tuple[str, str]] = set()

    def problem(self, path: str, message: str) -> None:
        self.report.problems.append(Problem(path, message))

    def check_checksum(self, relative: str, expected: str | None) -> bool | None:
        """True: checksum matches; False: it differs; None: the file is missing."""
        path = self.manifest.root / relative
        self.report.files_checked += 1
        if not path.is_file():
            self.problem(relative, "missing")
            return None
        if expected and sha256_file(path) != expected:
            self.problem(relative, "sha256 differs from the manifest (file changed or corrupted)")
            return False
        return True

    def check_shard(self, entry: dict) -> None:
        relative, class_name = entry["path"], entry["class"]
        intact = self.check_checksum(relative, entry["sha256"])
        if intact is None:
            self.damaged_splits.add(entry["split"])
            self.damaged_classes.add((entry["split"], class_name))
            return
        label, count = self.manifest.classes.index(class_name), 0
        try:
            for key, parts in iter_tar_samples(self.manifest.root / relative):
                count += 1
                self.check_sample(relative, entry["split"], class_name, label, key, parts, trusted=intact)
        except Exception as error:  # any tar-level failure means the file is bad; keep checking others
            self.problem(relative, f"unreadable tar after {count} samples: {error}")
            self.damaged_splits.add(entry["split"])
            self.damaged_classes.add((entry["split"], class_name))
            return
        if count != entry["count"]:
            self.problem(relative, f"holds {count} samples, manifest says {entry['count']}")
        self.tar_counts[entry["split"]][class_name] += count

    def check_sample(self, relative: str, split: str, class_name: str, label: int, key: str, parts: dict,
                     trusted: bool) -> None:
        """Check one tar sample; `trusted` is False when its shard failed its checksum, so its
        pixels are not used to judge the HDF5 file (a flipped bit may still decode)."""
        self.report.samples_checked += 1
        if "." in key or not key.startswith(class_name.replace(".", "_") + "-"):
            self.problem(relative, f"sample {key!r}: key does not match its class {class_name!r}")
        missing = {"png", "cls", "json"} - parts.keys()
        if missing:
            self.problem(relative, f"sample {key}: missing {', '.join(sorted(missing))}")
            return
        if parts["cls"].strip() != str(label).encode():
            self.problem(relative, f"sample {key}: .cls {parts['cls']!r} is not the label {label} of {class_name!r}")
        try:
            sidecar = json.loads(parts["json"])
            if sidecar.get("class") != class_name or sidecar.get("label") != label:
                self.problem(relative, f"sample {key}: .json names class {sidecar.get('class')!r}")
        except (ValueError, AttributeError) as error:
            self.problem(relative, f"sample {key}: .json unreadable ({error})")
        try:
            image = Image.open(io.BytesIO(parts["png"]))
            image.load()
        except Exception as error:
            self.problem(relative, f"sample {key}: .png does not decode ({error})")
            self.tar_pixels[split][key] = _UNTRUSTED  # the HDF5 row cannot be compared; not its fault
            return
        size = self.manifest.stored_size
        if image.size != (size, size) or image.mode != self.mode:
            self.problem(relative, f"sample {key}: .png is {image.mode} {image.width}x{image.height}, "
                                   f"expected {self.mode} {size}x{size}")
            self.tar_pixels[split][key] = _UNTRUSTED
            return
        if key in self.tar_pixels[split]:
            self.problem(relative, f"sample {key}: key appears twice in split {split}")
        pixels = np.asarray(image)
        self.tar_pixels[split][key] = (
            _pixel_digest(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)) if trusted else _UNTRUSTED)

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
        if self.check_checksum(relative, self.manifest.hdf5.get("sha256")) is None:
            return
        import h5py

        try:
            with h5py.File(self.manifest.root / relative, "r") as h5:
                for split in SPLITS:
                    self.check_hdf5_split(relative, h5, split)
        except Exception as error:  # h5py raises OSError/KeyError/ValueError for damaged files
            self.problem(relative, f"unreadable HDF5: {error}")

    def check_hdf5_split(self, relative: str, h5, split: str) -> None:
        manifest, size = self.manifest, self.manifest.stored_size
        images, labels, keys = h5[f"{split}/images"], h5[f"{split}/labels"], h5[f"{split}/keys"]
        n = manifest.num_samples(split)
        expected_shape = (n, manifest.channels, size, size)
        if images.shape != expected_shape or images.dtype != np.uint8:
            self.problem(relative, f"/{split}/images is {images.dtype} {images.shape}, expected uint8 {expected_shape}")
            return
        if labels.shape != (n,) or keys.shape != (n,):
            self.problem(relative, f"/{split}/labels or /{split}/keys length differs from {n}")
            return
        tar_pixels, seen = self.tar_pixels[split], set()
        for start in range(0, n, HDF5_BLOCK):
            block = images[start:start + HDF5_BLOCK]
            block_labels = labels[start:start + HDF5_BLOCK]
            block_keys = keys.asstr()[start:start + HDF5_BLOCK]
            for pixels, label, key in zip(block, block_labels, block_keys):
                self.report.samples_checked += 1
                seen.add(key)
                class_name = manifest.classes[label] if 0 <= label < len(manifest.classes) else None
                if class_name is None or not key.startswith(class_name.replace(".", "_") + "-"):
                    self.problem(relative, f"/{split} row {key}: label {label} does not match the key")
                digest = tar_pixels.get(key)
                if digest is None and split not in self.damaged_splits:
                    self.problem(relative, f"/{split} row {key}: no tar sample with this key")
                elif digest not in (None, _UNTRUSTED) and digest != _pixel_digest(pixels):
                    self.problem(relative, f"/{split} row {key}: pixels differ from the tar sample")
        for key in sorted(set(tar_pixels) - seen) if split not in self.damaged_splits else []:
            self.problem(relative, f"/{split}: tar sample {key} is missing")


def verify(folder: str | Path) -> VerifyReport:
    """Check every file of the shard folder `folder`; never raises for a damaged folder."""
    report = VerifyReport(folder=Path(folder))
    try:
        manifest = load_manifest(folder)
    except ManifestError as error:
        report.problems.append(Problem(MANIFEST_NAME, str(error)))
        return report
    checker = _Checker(manifest, report)
    for entry in manifest.shards:
        checker.check_shard(entry)
    checker.check_counts()
    checker.check_hdf5()
    return report
