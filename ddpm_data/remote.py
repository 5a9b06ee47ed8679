"""Shard sets at a URL: where a shard folder's files are, how they are opened, how a set is uploaded.

A *location* is a local folder (`Path`) or a URL (`str`):
- any fsspec URL: `s3://bucket/shards/96`, `gs://...`, `https://host/shards/96`, `file:///data/96`;
- webdataset's `pipe:` convention: `pipe:COMMAND` runs COMMAND and reads its standard output. A
  file of the set is `COMMAND` with `{}` replaced by the file name, or with `/NAME` appended when
  there is no `{}`: `pipe:curl -sfL https://host/shards/96` reads
  `curl -sfL https://host/shards/96/manifest.json`, `pipe:aws s3 cp s3://b/96/{} -` reads
  `aws s3 cp s3://b/96/manifest.json -`.

Credentials come from the environment the libraries read (AWS_ACCESS_KEY_ID, AWS_PROFILE,
GOOGLE_APPLICATION_CREDENTIALS, ...), never from the URL: a location holding a URL with a user
name, a password or a query string (where tokens and signatures go) is refused (`as_location`),
because locations are written to config.json, manifests and logs. A `pipe:` command is accepted and
stored and shown as `redact.public` gives it (secret-bearing words as ***), and every error message
passes through `redact.redact` as well.

Every failure to open or read a file raises `RemoteError` (a ValueError) whose message starts
with the location: "missing", "access denied (...)", "download failed (...)".
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union
from urllib.parse import urlsplit

from ddpm_data.redact import PIPE, hide_url_credentials, public, redact
from ddpm_data.transfer import Unreachable, current, outage, retrying, storage_options

Location = Union[Path, str]   # a local folder or file, or a URL
STREAM_BLOCK_BYTES = 4 << 20  # read-ahead of a streamed remote file: bounds memory per open shard
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CREDENTIAL_HINT = ("pass credentials through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://), not in the URL")


class RemoteError(ValueError):
    """A file of a shard set cannot be opened or read; the message is `{location}: {reason}`."""

    def __init__(self, location: Location, reason: str) -> None:
        self.path, self.reason = public(location), redact(reason)
        super().__init__(f"{self.path}: {self.reason}")


def is_url(location: Location | None) -> bool:
    """True for `scheme://...` and `pipe:...` strings; local paths (also as str) are False."""
    return isinstance(location, str) and (location.startswith(PIPE) or bool(_SCHEME.match(location)))


def as_location(text: str | Path, flag: str = "--shards") -> Location:
    """A command-line value as a location: a URL stays a string (checked), anything else is a Path.

    Raises ValueError naming `flag` (and the URL with its credentials hidden) when a URL in it,
    also one inside a pipe: command, carries a user name, a password or a query string."""
    if isinstance(text, Path) or not is_url(text):
        return Path(text)
    if hide_url_credentials(text) != text:
        raise ValueError(f"{flag} {public(text)}: the URL holds credentials (user name, password or query "
                         f"string), which would be written to config.json, manifests and logs; {_CREDENTIAL_HINT}")
    return text.rstrip("/") if not text.startswith(PIPE) else text


WRITABLE = "a local folder, s3://, gs://, file:// or another fsspec URL that can be written"


def writable(location: Location) -> bool:
    """Whether a build can write there: not a pipe: command, not plain http(s)://."""
    return not is_url(location) or (not location.startswith(PIPE) and urlsplit(location).scheme not in ("http", "https"))


def check_writable(location: Location, flag: str = "--out") -> None:
    """ValueError naming `flag` when `location` cannot be written or holds credentials (before any
    work is done)."""
    location = as_location(location, flag)
    if not writable(location):
        raise ValueError(f"{flag} {public(location)}: cannot be written (http(s):// and pipe: locations are read "
                         f"only); write to {WRITABLE}, and serve that over HTTP if you like")


def join(base: Location, name: str) -> Location:
    """The location of file `name` (relative, '/'-separated) inside the folder `base`."""
    if not is_url(base):
        return Path(base) / name
    if base.startswith(PIPE):
        return base.replace("{}", name) if "{}" in base else f"{base.rstrip('/')}/{name}"
    return f"{base.rstrip('/')}/{name}"


def name_of(location: Location) -> str:
    """The last component of a location (a run folder is named after it)."""
    if not is_url(location):
        return Path(location).resolve().name
    text = location[len(PIPE):].replace("{}", "") if location.startswith(PIPE) else location
    return next((part for part in reversed(re.split(r"[/\s]+", text)) if part and part != "-"), "shards")


def _error_reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "missing"
    if isinstance(error, PermissionError):
        return f"access denied ({error}); check the credentials: {_CREDENTIAL_HINT}"
    return f"unreadable ({type(error).__name__}: {error})"


class _GuardedFile:
    """A remote file whose read errors (a dropped connection, a truncated download, a failing pipe
    command) become RemoteError naming the location, or, for an outage, are retried (`transfer`):
    the file is opened again (`reopen`) and read up to where it broke. Named after its location
    for webdataset's messages."""

    def __init__(self, file: Any, location: str, reopen: Callable[[], Any] | None = None) -> None:
        self._file, self.name, self._reopen, self._position = file, location, reopen, 0

    def read(self, size: int = -1) -> bytes:
        if self._reopen is None:
            return self._read(size)
        return retrying(self.name, lambda: self._read(size))

    def _read(self, size: int) -> bytes:
        try:
            if self._file is None:  # a retry: open again, and pass over what was read before
                self._file = self._reopen()
                _skip(self._file, self._position)
            data = self._file.read(size)
            if not data and size != 0 and hasattr(self._file, "wait_for_child"):
                self._file.wait_for_child()  # a pipe at its end: a failed command is an error, not an empty file
            self._position += len(data)
            return data
        except RemoteError:
            raise
        except Exception as error:  # aiohttp, botocore and webdataset's Pipe raise their own types
            if self._reopen is not None and outage(error, current().stall_timeout_s):
                self._drop()
                raise  # `retrying` names it, and opens the file again for the next try
            raise RemoteError(self.name, download_failed(error)) from error

    def _drop(self) -> None:
        file, self._file = self._file, None
        try:
            if file is not None:
                file.close()
        except Exception:  # the connection is gone already
            pass

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return bool(getattr(self._file, "seekable", lambda: False)())

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except Exception as error:  # a pipe command that failed reports its status when closed
            raise RemoteError(self.name, download_failed(error)) from error

    def __enter__(self) -> "_GuardedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._drop()  # the first error is the one to report

    def __repr__(self) -> str:
        return self.name


_PIPE_EXIT = re.compile(r": exit (-?\d+) \((?:read|write)\)")  # webdataset's Pipe: "(args, kwargs): exit N (read) {}"


def download_failed(error: Exception) -> str:
    """The reason for a failed read: a pipe command's exit status in words (webdataset's message
    is a Python tuple holding the whole command), else the error's own text, redacted."""
    status = _PIPE_EXIT.search(str(error))
    if status is not None:
        return (f"the command failed (exit status {status.group(1)}; its own message, if it printed one, is just "
                f"above); run it by hand to see why")
    return f"download failed ({type(error).__name__}: {redact(str(error))})"


def _skip(file: Any, count: int) -> None:
    """Pass over the first `count` bytes of a file opened again after an outage."""
    while count > 0:
        data = file.read(min(count, STREAM_BLOCK_BYTES))
        if not data:
            raise ConnectionResetError("the file ended before the point a retry resumes from")
        count -= len(data)


def _open_fsspec(location: str) -> Any:
    import fsspec

    protocol = urlsplit(location).scheme
    options: dict[str, Any] = {"block_size": 0} if protocol in ("http", "https") else \
        {"block_size": STREAM_BLOCK_BYTES, "cache_type": "readahead"}
    filesystem, path = fsspec.core.url_to_fs(location, **storage_options(protocol))
    return filesystem.open(path, "rb", **options)


def open_input(location: Location) -> BinaryIO:
    """Open a file for sequential reading: a local file, a pipe command's output, or an fsspec URL
    streamed with bounded read-ahead. Raises RemoteError ("missing", "access denied", ...), or
    transfer.Unreachable for an outage (after the retries)."""
    if not is_url(location):
        try:
            return open(location, "rb")
        except OSError as error:
            raise RemoteError(location, _error_reason(error) if isinstance(error, FileNotFoundError)
                              else f"unreadable ({error.strerror or error})") from None
    if location.startswith(PIPE):
        from webdataset.gopen import Pipe

        try:
            pipe = Pipe(location[len(PIPE):], mode="rb", shell=True, bufsize=1 << 20)
        except OSError as error:
            raise RemoteError(location, f"cannot run the pipe command ({error})") from None
        return _GuardedFile(pipe, location)  # type: ignore[return-value]
    try:
        file = retrying(location, lambda: _open_fsspec(location))
    except Unreachable:
        raise
    except Exception as error:  # fsspec backends raise OSError subclasses and their own types
        raise RemoteError(location, _error_reason(error)) from error
    return _GuardedFile(file, location, reopen=lambda: _open_fsspec(location))  # type: ignore[return-value]


def read_bytes(location: Location) -> bytes:
    """The whole content of a (small) file; RemoteError as `open_input`."""
    with open_input(location) as file:
        return file.read()


def exists(location: Location) -> bool:
    """Whether the file exists (a pipe command is run and its output discarded)."""
    if not is_url(location):
        return Path(location).is_file()
    if location.startswith(PIPE):
        try:
            read_bytes(location)
            return True
        except RemoteError:
            return False
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(location, **storage_options(urlsplit(location).scheme))

    def look() -> bool:
        try:
            return bool(filesystem.isfile(path))
        except FileNotFoundError as error:
            if outage(error, current().stall_timeout_s):
                raise  # fsspec's HTTP backend calls a refused connection "not found"
            return False

    try:
        return retrying(location, look)
    except Unreachable:
        raise
    except Exception as error:
        raise RemoteError(location, _error_reason(error)) from error


def file_sizes(folder: Location) -> dict[str, int]:
    """{file name: bytes} of the files directly in `folder`, from one listing; {} where a location
    cannot be listed (pipe commands, plain HTTP servers)."""
    if not is_url(folder):
        folder = Path(folder)
        return {path.name: path.stat().st_size for path in folder.iterdir() if path.is_file()} if folder.is_dir() else {}
    if folder.startswith(PIPE):
        return {}
    import fsspec

    try:
        filesystem, path = fsspec.core.url_to_fs(folder)
        return {Path(entry["name"]).name: int(entry["size"]) for entry in filesystem.ls(path, detail=True)
                if entry.get("type") == "file" and entry.get("size") is not None}
    except Exception:  # listing is a convenience (stats); reading names every problem
        return {}


# ---------------------------------------------------------------- upload


def list_names(url: str) -> list[str]:
    """Sorted names of the files directly in the URL folder `url` ([] when there is none).
    Raises RemoteError naming the URL when it cannot be listed (pipe: commands, plain HTTP)."""
    if url.startswith(PIPE):
        raise RemoteError(url, "a pipe: location cannot be listed or written; use an fsspec URL such as "
                               "s3://bucket/path")
    import fsspec

    try:
        filesystem, root = fsspec.core.url_to_fs(url)
        if not filesystem.exists(root):
            return []
        return sorted(Path(name).name for name in filesystem.ls(root, detail=False))
    except Exception as error:
        raise RemoteError(url, f"cannot be listed: {_error_reason(error)}") from error


def upload_folder(local: Path, url: str, last: str, overwrite: bool, owned: Callable[[str], bool]) -> None:
    """Copy the files of the local folder `local` to the URL folder `url`, `last` (the manifest)
    at the end as the commit point: readers find either no `last` or a complete set.

    An existing set (`url/last` present) is refused unless `overwrite`; then its `last` is removed
    first, so no reader pairs the old manifest with new files, and the files of the old set that
    the new one lacks, and that `owned(name)` says the writer wrote, are removed after the commit
    (nothing else is: the caller refuses a folder holding other files first). The sizes of the
    uploaded files are checked against the local ones (one listing) before `last` is written.
    Raises RemoteError naming the URL.
    """
    import fsspec

    if url.startswith(PIPE):
        raise RemoteError(url, "cannot write to a pipe: location; use an fsspec URL such as s3://bucket/path")
    try:
        filesystem, root = fsspec.core.url_to_fs(url)
        manifest = f"{root}/{last}"
        if filesystem.exists(manifest):
            if not overwrite:
                raise RemoteError(url, f"holds a shard set ({last}); pass --overwrite to replace it")
            filesystem.rm_file(manifest)
        old = {Path(name).name for name in filesystem.ls(root, detail=False)} if filesystem.exists(root) else set()
        filesystem.makedirs(root, exist_ok=True)
        files = sorted(path for path in local.iterdir() if path.is_file() and path.name != last)
        for path in files:
            filesystem.put_file(str(path), f"{root}/{path.name}")
        uploaded = {Path(entry["name"]).name: entry.get("size") for entry in filesystem.ls(root, detail=True)}
        for path in files:
            if uploaded.get(path.name) != path.stat().st_size:
                raise RemoteError(f"{url}/{path.name}", f"upload incomplete ({uploaded.get(path.name)} of "
                                                        f"{path.stat().st_size} bytes); run the build again")
        staged = f"{root}/.{last}.uploading"
        filesystem.put_file(str(local / last), staged)
        filesystem.mv(staged, manifest)
        for name in sorted(old - {path.name for path in files} - {last}):
            if owned(name):
                filesystem.rm_file(f"{root}/{name}")
    except RemoteError:
        raise
    except NotImplementedError:
        raise RemoteError(url, "this kind of URL cannot be written to; use s3://, gs:// or file://") from None
    except Exception as error:
        raise RemoteError(url, f"upload failed: {_error_reason(error)}") from error
