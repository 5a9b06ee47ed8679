"""Servers on 127.0.0.1 for the remote tests: a plain HTTP server of a folder (in this process,
optionally cutting some downloads short, or `python -m http.server` as a process), and moto's S3
server with fake credentials. All stop with their context."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: frozenset[str] = frozenset()
    token: str | None = None  # when set, a request without "Authorization: Bearer <token>" gets 403

    def send_head(self):
        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_error(403, "Forbidden")
            return None
        return super().send_head()

    def copyfile(self, source, outputfile) -> None:
        if Path(self.path).name in self.truncate:  # Content-Length promised the whole file: send half
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            outputfile.flush()
            self.close_connection = True
            return
        super().copyfile(source, outputfile)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


class _FaultyHandler(_Handler):
    """Answers the first `failures` requests for a file with `status`; sends bodies in chunks of
    `chunk` bytes, `pause` s apart, or stops sending for `stall` s after the first chunk."""
    failures, status, chunk, pause, stall = 0, 503, 1 << 20, 0.0, 0.0
    only: frozenset[str] = frozenset()  # the file names that fail (empty: all)
    seen: dict[str, int] = {}

    def send_head(self):
        count = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if count <= self.failures and (not self.only or Path(self.path).name in self.only):
            self.send_error(self.status)
            return None
        return super().send_head()

    def copyfile(self, source, outputfile) -> None:
        if self.only and Path(self.path).name not in self.only:
            return super().copyfile(source, outputfile)
        first = True
        try:
            while data := source.read(self.chunk):
                outputfile.write(data)
                outputfile.flush()
                time.sleep(self.stall if first and self.stall else self.pause)
                first = False
        except (BrokenPipeError, ConnectionResetError):  # the reader gave up: what the test wants
            self.close_connection = True


@contextlib.contextmanager
def faulty_server(folder: Path, failures: int = 0, status: int = 503, chunk: int = 1 << 20, pause: float = 0.0,
                  stall: float = 0.0, only: tuple[str, ...] = ()) -> Iterator[str]:
    """Serve `folder` on 127.0.0.1 badly (see _FaultyHandler); yields its base URL. Threads that
    still sleep end with the process (daemon threads), bounded by `stall`."""
    handler = type("Handler", (_FaultyHandler,), {"failures": failures, "status": status, "chunk": chunk,
                                                  "pause": pause, "stall": stall, "seen": {}, "only": frozenset(only)})
    with _serving(folder, handler, daemon_threads=True) as url:
        yield url


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def http_server(folder: Path, truncate: tuple[str, ...] = (), token: str | None = None) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port); yields its base URL. Files named in
    `truncate` are cut off halfway through their body; with `token`, only requests bearing it are served."""
    handler = type("Handler", (_Handler,), {"truncate": frozenset(truncate), "token": token})
    with _serving(folder, handler) as url:
        yield url


@contextlib.contextmanager
def _serving(folder: Path, handler: type, daemon_threads: bool = False) -> Iterator[str]:
    """`handler` serving `folder` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = daemon_threads
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3(bucket: str = "shards") -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), fake credentials and AWS_ENDPOINT_URL in the
    environment, one bucket; yields the endpoint. moto[server] and s3fs come with the test extra
    (pip install -e '.[test]', as `make test` does): without them the test fails, it is not skipped."""
    from moto import server as server_module
    from s3fs import S3FileSystem

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in (*FAKE_CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(FAKE_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    S3FileSystem.clear_instance_cache()  # a cached client would keep another test's endpoint
    try:
        S3FileSystem().mkdir(bucket)
        yield endpoint
    finally:
        S3FileSystem.clear_instance_cache()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@contextlib.contextmanager
def python_http_server(folder: Path) -> Iterator[str]:
    """`python -m http.server` serving `folder` on 127.0.0.1 (a free port), as a user would run it;
    yields its base URL, and stops the server at the end."""
    command = [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        port = re.search(r" port (\d+)", line)
        assert port is not None, f"python -m http.server did not start: {line!r}"
        yield f"http://127.0.0.1:{port[1]}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()
