"""Write a folder atomically: build it in a hidden temporary folder beside the target, then swap.

While a build runs, its temporary folder `.{name}.building-XXXX` holds a lock file with an
exclusive `flock`; the kernel drops the lock when the process dies (even by kill -9), so the
next build can tell a stale leftover from a build in progress and remove only the former.
On Linux the final step swaps old and new with renameat2(RENAME_EXCHANGE), so the target path
always holds either the complete old or the complete new folder; elsewhere two renames are used.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".building.lock"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.building-"


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete leftovers of interrupted builds of `target` (unlocked temp folders); returns them."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for candidate in sorted(target.parent.glob(_temp_prefix(target) + "*")):
        lock = candidate / LOCK_NAME
        try:
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another build is writing it right now
        except OSError:
            pass  # no lock file: the build died before creating it
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


@contextlib.contextmanager
def atomic_folder(target: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a locked temporary folder; on normal exit it replaces `target`, on error it is deleted.

    `target` must not exist unless `overwrite` (checked by the caller before any work, and again here).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    os.chmod(temp, 0o755)  # mkdtemp makes it private; the output is an ordinary folder
    lock = open(temp / LOCK_NAME, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield temp
        (temp / LOCK_NAME).unlink()
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target}: exists; pass --overwrite to replace it")
            if not _exchange(temp, target):
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
                os.rename(target, old / "old")
                os.rename(temp, target)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, target)
    finally:
        lock.close()
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)  # after an exchange this is the old output
