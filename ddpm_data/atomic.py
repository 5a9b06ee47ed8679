"""Write a folder atomically: build it in a hidden temporary folder beside the target, then swap.

While a build runs it holds two `flock`s, which the kernel drops when the process dies (even by
kill -9): one on `.{name}.lock` beside the target, so a second build of the same target fails at
once naming the first (`BusyError`), and one on a lock file inside its temporary folder
`.{name}.building-XXXX`, so a later build can tell a stale leftover from a build in progress and
remove only the former. On Linux the final step swaps old and new with
renameat2(RENAME_EXCHANGE), so the target path always holds either the complete old or the
complete new folder; elsewhere two renames are used.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

LOCK_NAME = ".building.lock"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class BusyError(Exception):
    """Another process is writing the same target; the message names it and the fix."""


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.building-"


def target_lock_path(target: Path) -> Path:
    """`.{name}.lock` beside `target`: held for the whole time a process writes `target`."""
    return target.parent / f".{target.name}.lock"


def busy_holder(target: str | Path) -> str | None:
    """Who holds the lock of `target` ("pid 123"), or None when nobody writes it now."""
    path = target_lock_path(Path(target))
    try:
        with open(path) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    except OSError:
        return None  # no lock file (or unreadable): nobody is known to write it
    return None


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def _busy(target: Path, holder: str) -> BusyError:
    return BusyError(f"{target}: another build ({holder}) is writing it right now; wait for it to finish")


def _same_file(handle: IO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def target_lock(target: Path) -> Iterator[None]:
    """Hold `.{name}.lock` beside `target` (exclusively) or raise BusyError naming its holder.

    The file is removed before it is unlocked; a process that opened it just before then finds it
    no longer at its path and tries again on a fresh one."""
    path = target_lock_path(target)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise _busy(target, _holder(path)) from None
        if _same_file(handle, path):
            break
        handle.close()
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete leftovers of interrupted builds of `target` (unlocked temp folders); returns them."""
    if not target.parent.is_dir():
        return []
    return _remove_unlocked(target.parent.glob(_temp_prefix(target) + "*"))


STAGING_PREFIX = "ddpm-build-"  # $TMPDIR folders of builds bound for a URL


@contextlib.contextmanager
def staging_folder() -> Iterator[Path]:
    """A locked folder in $TMPDIR, deleted on exit: a build bound for a URL is made here, then
    uploaded. The unlocked ones that killed builds left behind (a real set is GBs) go first."""
    _remove_unlocked(Path(tempfile.gettempdir()).glob(STAGING_PREFIX + "*"))
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    lock = open(folder / LOCK_NAME, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder
    finally:
        lock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _remove_unlocked(candidates: Iterator[Path]) -> list[Path]:
    """Delete the folders among `candidates` whose LOCK_NAME no process holds; returns them."""
    removed = []
    for candidate in sorted(candidates):
        if not candidate.is_dir() or candidate.is_symlink():
            continue
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


def exchange(a: Path, b: Path) -> bool:
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


def make_parents(target: Path) -> list[Path]:
    """Create the missing parent folders of `target`; returns those created, outermost first."""
    missing = [parent for parent in reversed(target.absolute().parents) if not parent.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) where they are still empty: undo `make_parents`."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _commit(temp: Path, target: Path, overwrite: bool, may_replace: Callable[[Path], None] | None) -> None:
    if not target.exists():
        os.rename(temp, target)
        return
    if is_empty_folder(target):
        try:
            os.rename(temp, target)  # POSIX rename replaces an empty folder atomically
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if not overwrite:
        raise FileExistsError(f"{target}: appeared while the build was running; pass --overwrite to replace it")
    if may_replace is not None:
        may_replace(target)  # checked again now: the folder may have changed since the build began
    if not exchange(temp, target):
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
        os.rename(target, old / "old")
        os.rename(temp, target)
        shutil.rmtree(old, ignore_errors=True)


def is_empty_folder(path: Path) -> bool:
    """True for a real (not symlinked) folder with nothing in it: there is nothing to lose."""
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


@contextlib.contextmanager
def atomic_folder(target: str | Path, overwrite: bool,
                  may_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a locked temporary folder; on normal exit it replaces `target`, on error it is deleted.

    `target` must not exist unless `overwrite` or it is an empty folder (checked by the caller
    before any work, and again here); `may_replace(target)` raises when an existing `target` must not be replaced. Raises
    BusyError when another process writes `target`. Parent folders created here are removed again
    when the build fails.
    """
    target = Path(target)
    created = make_parents(target)
    committed = False
    try:
        with target_lock(target):
            remove_stale_temps(target)
            temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
            os.chmod(temp, 0o755)  # mkdtemp makes it private; the output is an ordinary folder
            lock = open(temp / LOCK_NAME, "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield temp
                (temp / LOCK_NAME).unlink()
                _commit(temp, target, overwrite, may_replace)
                committed = True
            finally:
                lock.close()
                if temp.exists():
                    shutil.rmtree(temp, ignore_errors=True)  # after an exchange this is the old output
    finally:
        if not committed:
            remove_empty(created)


def check_owned(folder: Path, marker: str, foreign: Callable[[Path], list[str]], error: type[Exception],
                label: str, writer: str, owned: str, other: str) -> None:
    """`error` unless `folder` is empty, or holds `marker` (the command wrote it) and nothing the
    `foreign` listing names: what `--overwrite` may replace. `label` starts the message (the
    flag and folder), `writer` and `owned` name the command and its folders, `other` the flag
    to choose another."""
    if not any(folder.iterdir()):
        return
    if not (folder / marker).is_file():
        raise error(f"{label}: holds no {marker}, so {writer} did not write it; --overwrite only replaces "
                    f"{owned}. Choose another {other}")
    names = foreign(folder)
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise error(f"{label}: also holds {shown}, which {writer} did not write; --overwrite would "
                    f"delete them. Move them out of the folder or choose another {other}")


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in the existing `folder` ("read-only filesystem" or
    "permission denied"), or None when one can."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only filesystem" if read_only else "permission denied"
