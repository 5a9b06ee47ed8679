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

The plan lives in a temporary SQLite file, not in Python objects: the main process holds a few
MB whatever the number of images (SQLite sorts and groups on disk), and `SourcePlan.items` reads
the items back in storage order each time it is iterated.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ddpm_data.dicom import DICOM_EXTENSIONS, PREAMBLE_END, has_preamble
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


class PlanItems:
    """The items to store, in storage order (label, key), read back from the plan's SQLite file on
    each iteration (one row in memory at a time); `len()` is their number. The file's temporary
    folder is deleted by `close()`, or when this object is garbage-collected."""

    _READ_ROWS = 1024

    def __init__(self, folder: Path, src: Path, classes: list[str], val_fraction: float, count: int) -> None:
        self._database, self._src, self._classes = folder / "plan.sqlite", src.resolve(), classes
        self._val_fraction, self._count = val_fraction, count
        self.close = weakref.finalize(self, shutil.rmtree, folder, True)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[SourceItem]:
        # A connection per iteration: the build reads the plan from two threads at once.
        connection = sqlite3.connect(self._database, check_same_thread=False)  # may be closed by GC elsewhere
        try:
            cursor = connection.execute("SELECT label, relpath, sha256 FROM items ORDER BY label, sha256")
            while rows := cursor.fetchmany(self._READ_ROWS):
                for label, relpath, digest in rows:
                    name = self._classes[label]
                    yield SourceItem(path=self._src / relpath, relpath=relpath, class_name=name, label=label,
                                     sha256=digest, key=sample_key(name, digest), split=split_of(digest, self._val_fraction))
        finally:
            connection.close()


@dataclass(frozen=True)
class SourcePlan:
    """What to store, in storage order (label, key), and what was left out and why."""

    classes: list[str]
    items: PlanItems                # iterable (SourceItem in storage order) with len()
    skipped: list[tuple[str, str]]  # (relpath, reason), sorted by path
    ignored: int                    # hidden and non-image files

    def close(self) -> None:
        """Delete the plan's temporary file now (else when `items` is garbage-collected)."""
        self.items.close()


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
    folder = Path(tempfile.mkdtemp(prefix="ddpm-plan-"))
    try:
        database = folder / "plan.sqlite"
        connection = sqlite3.connect(database)
        # WAL: the hashing writes while the pool's feeder thread reads the file list through a second
        # connection; with a rollback journal each spill of the writer's cache waits out the busy
        # timeout on that reader (100k images: the build stalled for good).
        connection.execute("PRAGMA journal_mode=WAL")
        with connection:
            listed, problems = _list_candidates(connection, src, classes)
            ignored += listed
            connection.commit()  # the hashing reads the list through a second connection
            _hash_candidates(connection, src, map_files, on_file)
            skipped = problems + _plan_items(connection, classes)
            count = connection.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        connection.close()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return SourcePlan(classes=classes, items=PlanItems(folder, src, classes, val_fraction, count),
                      skipped=sorted(skipped), ignored=ignored)


_BATCH = 4096  # rows per SQLite insert


def _is_image(path: Path, problem: str | None) -> bool:
    """An image or DICOM extension, or a regular file of another name that opens with the DICOM
    preamble (DICOM files are often named by their UIDs: 1.2.840.113619.2.55.3.604688119.962)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS:
        return True
    if problem is not None:
        return False
    try:
        with open_regular(path) as file:
            return has_preamble(file.read(PREAMBLE_END))
    except OSError:
        return False


def _list_candidates(connection: sqlite3.Connection, src: Path,
                     classes: list[str]) -> tuple[int, list[tuple[str, str]]]:
    """Insert every image file below the class folders that may be opened into `files`; returns
    the ignored count and the (relpath, reason) of those that must not be (`file_problem`)."""
    connection.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, label INTEGER, relpath TEXT)")
    ignored, batch, problems = 0, [], []
    for label, class_name in enumerate(classes):
        images = 0
        for path in _walk_files(src / class_name):
            relative = path.relative_to(src)
            problem = file_problem(path)
            if is_hidden(relative) or not _is_image(path, problem):
                ignored += 1
                continue
            images += 1
            if problem is not None:
                problems.append((relative.as_posix(), problem))
                continue
            batch.append((label, relative.as_posix()))
            if len(batch) == _BATCH:
                connection.executemany("INSERT INTO files (label, relpath) VALUES (?, ?)", batch)
                batch.clear()
        if images == 0:
            raise _layout_error(src, f"class folder '{class_name}' holds no image files (extensions: "
                                     f"{' '.join(sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS))}, or DICOM files of any name)")
    connection.executemany("INSERT INTO files (label, relpath) VALUES (?, ?)", batch)
    return ignored, problems


def _hash_candidates(connection: sqlite3.Connection, src: Path, map_files: HashMap,
                     on_file: Callable[[int], None] | None) -> None:
    """Hash every file of `files` (through `map_files`) into `hashes` (sha256, or a skip reason)."""
    connection.execute("CREATE TABLE hashes (id INTEGER PRIMARY KEY, sha256 TEXT, reason TEXT)")
    total = connection.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    reader = sqlite3.connect(connection.execute("PRAGMA database_list").fetchone()[2], check_same_thread=False)

    def paths() -> Iterator[str]:  # read by the pool's feeder thread: its own connection
        cursor = reader.execute("SELECT relpath FROM files ORDER BY id")
        while rows := cursor.fetchmany(_BATCH):
            yield from (str(src / relpath) for relpath, in rows)

    try:
        batch = []
        for row_id, (digest, reason) in enumerate(map_files(hash_file, paths()), start=1):
            if on_file is not None:
                on_file(total)
            batch.append((row_id, digest, reason))
            if len(batch) == _BATCH:
                connection.executemany("INSERT INTO hashes VALUES (?, ?, ?)", batch)
                batch.clear()
        connection.executemany("INSERT INTO hashes VALUES (?, ?, ?)", batch)
    finally:
        reader.close()


def _plan_items(connection: sqlite3.Connection, classes: list[str]) -> list[tuple[str, str]]:
    """Fill `items` (one row per stored image) and return the skipped (relpath, reason) pairs.

    Same rules as ever: unreadable and empty files skipped; the same bytes under several classes
    excluded from all; within a class the first path in sorted order stored, the other copies
    skipped; a 64-bit key prefix shared by two different files of a class: the later digest skipped."""
    connection.executescript("""
        CREATE TABLE hashed AS SELECT files.label, files.relpath, hashes.sha256
            FROM files JOIN hashes USING (id) WHERE hashes.sha256 IS NOT NULL;
        CREATE INDEX hashed_by_digest ON hashed (sha256, label, relpath);
        CREATE TABLE digests AS SELECT sha256, MIN(label) AS label, MIN(relpath) AS relpath,
            COUNT(DISTINCT label) AS labels FROM hashed GROUP BY sha256;
    """)
    skipped = [(relpath, reason) for relpath, reason in
               connection.execute("SELECT relpath, reason FROM files JOIN hashes USING (id) WHERE sha256 IS NULL")]
    for digest, in connection.execute("SELECT sha256 FROM digests WHERE labels > 1").fetchall():
        rows = connection.execute("SELECT label, relpath FROM hashed WHERE sha256 = ?", (digest,)).fetchall()
        names = ", ".join(sorted({classes[label] for label, _ in rows}))
        skipped += [(relpath, f"same image filed under classes {names}; excluded from all") for _, relpath in rows]
    skipped += [(relpath, f"exact duplicate of {kept}; stored once") for relpath, kept in connection.execute(
        "SELECT hashed.relpath, digests.relpath FROM hashed JOIN digests USING (sha256) "
        "WHERE digests.labels = 1 AND hashed.relpath != digests.relpath")]
    connection.execute("CREATE TABLE items AS SELECT label, relpath, sha256 FROM digests WHERE labels = 1")
    clashes = connection.execute(
        "SELECT label, substr(sha256, 1, ?) AS prefix FROM items GROUP BY label, prefix HAVING COUNT(*) > 1",
        (SPLIT_HASH_HEX,)).fetchall()
    for label, prefix in clashes:  # astronomically rare, but checked
        rows = connection.execute("SELECT relpath, sha256 FROM items WHERE label = ? AND substr(sha256, 1, ?) = ? "
                                  "ORDER BY sha256", (label, SPLIT_HASH_HEX, prefix)).fetchall()
        key = sample_key(classes[label], rows[0][1])
        for relpath, digest in rows[1:]:
            skipped.append((relpath, f"sample key {key} clashes with {rows[0][0]} (64-bit hash prefix collision)"))
            connection.execute("DELETE FROM items WHERE sha256 = ?", (digest,))
    connection.execute("CREATE INDEX items_in_order ON items (label, sha256)")
    return skipped
