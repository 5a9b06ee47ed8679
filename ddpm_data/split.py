"""Scan an ImageFolder source and decide, per file, its class, key and train/val split.

The decision uses only the file's bytes (SHA-256), never its name, position or the clock:
- key = `{class}-{first 16 hex of sha256}`; a file's key never changes;
- split: val when the first 64 bits of the hash, read as a fraction of 2**64, fall below
  `val_fraction`. Each class is split on its own at the same fraction (stratified), and adding
  or removing other files never moves an existing image between train and val;
- exact duplicates (same bytes) within a class are stored once (the first path in sorted order;
  the others are reported as skipped); the same bytes filed under two or more classes are
  reported and excluded from all of them.

Only regular files (or symlinks to them) are ever opened: a named pipe, a device or a socket
with an image extension is skipped with its kind as the reason (reading one would block forever
or never end).
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from ddpm_data.images import IMAGE_EXTENSIONS
from ddpm_data.shardformat import sample_key

SPLIT_HASH_HEX = 16  # hash hex digits that decide the split (64 bits)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

EXPECTED_LAYOUT = """expected layout (one subfolder per class; images at any depth below it):
  {src}/
    normal/      img_0001.png  img_0002.jpg  ...
    abnormal/    scan_17.png   more/scan_18.png  ...
For sample data run 'ddpm-data synth data'."""


class SourceError(ValueError):
    """The source folder cannot be built from; the message shows the expected layout."""


@dataclass(frozen=True)
class SourceItem:
    """One image that will be stored."""

    path: Path          # absolute path of the source file
    relpath: str        # path relative to the source folder, POSIX separators
    class_name: str
    label: int          # index of class_name in the sorted class list
    sha256: str         # hex digest of the file bytes
    key: str            # sample key in tar and HDF5 (no dots)
    split: str          # "train" or "val"


@dataclass(frozen=True)
class SourcePlan:
    """What to store, in storage order (label, key), and what was left out and why."""

    classes: list[str]
    items: list[SourceItem]
    skipped: list[tuple[str, str]]  # (relpath, reason), sorted by path
    ignored: int                    # hidden and non-image files


def is_hidden(relative: Path) -> bool:
    """True when any component of `relative` starts with a dot (".masks/x.png", ".DS_Store")."""
    return any(part.startswith(".") for part in relative.parts)


def split_of(sha256: str, val_fraction: float) -> str:
    """"val" when the hash's first 64 bits, as a fraction of 2**64, are below `val_fraction`."""
    return "val" if int(sha256[:SPLIT_HASH_HEX], 16) / 2.0**64 < val_fraction else "train"


def _layout_error(src: Path, problem: str) -> SourceError:
    return SourceError(f"--src {src}: {problem}\n" + EXPECTED_LAYOUT.format(src=src))


def _walk_files(folder: Path) -> Iterable[Path]:
    """All files below `folder`, sorted, without following symlinked folders."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def find_classes(src: Path) -> list[str]:
    """Sorted names of the non-hidden subfolders of `src`; SourceError when there are none."""
    if not src.exists():
        raise _layout_error(src, "folder does not exist")
    if not src.is_dir():
        raise _layout_error(src, "is not a folder")
    classes = sorted(entry.name for entry in src.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise _layout_error(src, "no class folders found")
    return classes


_FILE_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
               (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def file_problem(path: str | Path) -> str | None:
    """Skip reason for a source path that must not be opened, from its metadata alone: not a
    regular file (a pipe, device or socket, or a symlink to one), a broken symlink; None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "unreadable: broken symbolic link" if os.path.islink(path) else "unreadable: file vanished"
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if stat.S_ISREG(mode):
        return None
    via = "symbolic link to a " if os.path.islink(path) else ""
    return f"not a regular file ({via}{_kind(mode)}); skipped without opening it"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a source file for reading, refusing (OSError) anything but a regular file.

    Opened non-blocking, so a file swapped for a named pipe since the scan cannot hang the build."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path) -> bytes:
    """All bytes of a regular source file (see `open_regular`)."""
    with open_regular(path) as file:
        return file.read()


def hash_file(path: str) -> tuple[str | None, str | None]:
    """(sha256 hex, None) of the file at `path`, or (None, skip reason) when empty, unreadable or
    not a regular file."""
    try:
        with open_regular(path) as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"
    return (None, "empty file (0 bytes)") if digest == _EMPTY_SHA256 else (digest, None)


HashMap = Callable[[Callable[[str], tuple], list[str]], Iterable[tuple]]


def plan_source(
    src: str | Path,
    val_fraction: float,
    map_files: HashMap = map,
    on_file: Callable[[int], None] | None = None,
) -> SourcePlan:
    """Scan `src`, hash every image file, and return the storage plan.

    `map_files(hash_file, paths)` runs the hashing (the build passes an ordered process-pool
    map); `on_file(total)` is called once per file hashed (progress bar). Raises SourceError for a
    missing source, no class folders, or a class folder without image files.
    """
    src = Path(src)
    classes = find_classes(src)
    ignored = sum(1 for entry in src.iterdir() if entry.is_file())  # loose files beside the classes
    ignored += sum(1 for entry in src.iterdir() if entry.is_dir() and entry.name.startswith(".")
                   for _ in _walk_files(entry))
    candidates: list[tuple[str, str]] = []  # (class, relpath)
    for class_name in classes:
        images = 0
        for path in _walk_files(src / class_name):
            relative = path.relative_to(src)
            if is_hidden(relative) or path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored += 1
                continue
            images += 1
            candidates.append((class_name, relative.as_posix()))
        if images == 0:
            raise _layout_error(src, f"class folder '{class_name}' holds no image files "
                                     f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")

    problems = {relpath: reason for _, relpath in candidates if (reason := file_problem(src / relpath))}
    skipped: list[tuple[str, str]] = list(problems.items())
    candidates = [(class_name, relpath) for class_name, relpath in candidates if relpath not in problems]
    by_hash: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # sha -> class -> relpaths
    hashes = map_files(hash_file, [str(src / relpath) for _, relpath in candidates])
    for (class_name, relpath), (digest, reason) in zip(candidates, hashes):
        if on_file is not None:
            on_file(len(candidates))
        if digest is None:
            skipped.append((relpath, reason))
        else:
            by_hash[digest][class_name].append(relpath)

    items: list[SourceItem] = []
    keys: dict[str, str] = {}  # key -> relpath; a 64-bit prefix clash is astronomically rare, but checked
    for digest, holders in sorted(by_hash.items()):
        if len(holders) > 1:
            names = ", ".join(sorted(holders))
            for class_name, relpaths in holders.items():
                for relpath in relpaths:
                    skipped.append((relpath, f"same image filed under classes {names}; excluded from all"))
            continue
        (class_name, relpaths), = holders.items()
        relpaths = sorted(relpaths)
        for duplicate in relpaths[1:]:
            skipped.append((duplicate, f"exact duplicate of {relpaths[0]}; stored once"))
        key = sample_key(class_name, digest)
        if key in keys:
            skipped.append((relpaths[0], f"sample key {key} clashes with {keys[key]} (64-bit hash prefix collision)"))
            continue
        keys[key] = relpaths[0]
        items.append(SourceItem(
            path=(src / relpaths[0]).resolve(),
            relpath=relpaths[0],
            class_name=class_name,
            label=classes.index(class_name),
            sha256=digest,
            key=key,
            split=split_of(digest, val_fraction),
        ))
    items.sort(key=lambda item: (item.label, item.key))
    return SourcePlan(classes=classes, items=items, skipped=sorted(skipped), ignored=ignored)
