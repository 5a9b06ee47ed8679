"""How a file at a URL is fetched when the network or the server fails: outages named as
outages, bounded visible retries, and a timeout on progress rather than on total time.

- An *outage* (connection refused, host not found, no byte for `stall_timeout_s`, a cut-off
  transfer, HTTP 5xx or 429) is retried up to `retries` times, each retry one warning line with
  its reason; then, as for HTTP 403 (not retried), `Unreachable` names the URL, what happened and
  what to do. It is never taken for a bad shard: `--skip-bad-shards` does not pass over it.
- A transfer fails only when no byte arrives for `stall_timeout_s` (aiohttp's `sock_read`,
  botocore's `read_timeout`), so a slow but steady download completes, however long it takes.

The libraries' own retries did not fit: fsspec's HTTP backend has none, s3fs and botocore retry
silently for minutes, and neither tells a reader which URL is waiting.
"""
from __future__ import annotations

import asyncio
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ddpm_data.redact import public, redact

T = TypeVar("T")
RETRY_BACKOFF_S = (1.0, 2.0, 4.0, 8.0)  # wait before retry 1, 2, 3, 4 and later


@dataclass(frozen=True)
class TransferConfig:
    """Reading files at a URL (every command that reads a shard set)."""

    retries: int = 3               # retries of a request that failed on the way (outage, stall, 5xx); 0 = none
    stall_timeout_s: float = 60.0  # no byte for this long ends a transfer (an outage); slow but steady goes on

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"--retries {self.retries}: must be >= 0")
        if not self.stall_timeout_s > 0:
            raise ValueError(f"--stall-timeout {self.stall_timeout_s}: must be > 0 seconds")


_config = TransferConfig()


def use(config: TransferConfig) -> None:
    """Set the transfer settings of this process (the commands call it once, from their options)."""
    global _config
    _config = config


def current() -> TransferConfig:
    return _config


class RetryWarning(UserWarning):
    """One retry of a file at a URL, with its reason."""


class Unreachable(ValueError):
    """The server or the network failed (not the file); the message names the URL and the fix."""

    def __init__(self, location: Any, what: str, tries: int) -> None:
        self.path, self.reason = public(location), redact(what)
        retried = f" (tried {tries} times)" if tries > 1 else ""
        fix = ("check the credentials (environment, ~/.netrc, fsspec configuration) and run the command again"
               if what.startswith("access denied") else
               "check that the server is up and reachable, then run the command again (a training run: "
               "--resume keeps it); --retries and --stall-timeout set the patience")
        super().__init__(f"{self.path}: {self.reason}{retried}; {fix}")


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status", None) or getattr(error, "code", None)
    response = getattr(error, "response", None)
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def outage(error: BaseException, stall_timeout_s: float) -> tuple[str, bool] | None:
    """(what happened, worth retrying) when `error` is a failure of the server or the network;
    None for anything else (a missing file, a bad argument)."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    for item in chain:
        name, text = type(item).__name__, str(item)
        status = _status(item)
        if status == 403:
            return "access denied (HTTP 403)", False
        if status is not None and (status >= 500 or status == 429):
            return f"server error (HTTP {status})", True
        if isinstance(item, socket.gaierror) or "DNS" in name or "Name or service not known" in text:
            return "host not found (DNS lookup failed)", True
        if isinstance(item, ConnectionRefusedError) or "Connect call failed" in text or "ConnectorError" in name \
                or name == "EndpointConnectionError":
            return "connection refused (nothing listening)", True
        if isinstance(item, (asyncio.TimeoutError, TimeoutError, socket.timeout)) or "Timeout" in name:
            return f"stalled: no byte for {stall_timeout_s:g} s", True
        if isinstance(item, (ConnectionResetError, BrokenPipeError)) or name in (
                "ServerDisconnectedError", "ClientPayloadError", "IncompleteRead", "ClientOSError"):
            return f"transfer cut off ({name})", True
    return None


def retrying(location: Any, attempt: Callable[[], T], config: TransferConfig | None = None) -> T:
    """`attempt()`, retried on an outage up to `config.retries` times (a warning per retry);
    Unreachable when it still fails or fails in a way not worth retrying. Other errors pass."""
    config = config or _config
    for tries in range(1, config.retries + 2):
        try:
            return attempt()
        except Unreachable:
            raise
        except Exception as error:
            found = outage(error, config.stall_timeout_s)
            if found is None:
                raise
            what, retry = found
            if not retry or tries > config.retries:
                raise Unreachable(location, what, tries) from None
            wait = RETRY_BACKOFF_S[min(tries - 1, len(RETRY_BACKOFF_S) - 1)]
            warnings.warn(f"{public(location)}: {what}; retry {tries} of {config.retries} in {wait:g} s",
                          RetryWarning, stacklevel=2)
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def storage_options(protocol: str, config: TransferConfig | None = None) -> dict[str, Any]:
    """fsspec file-system options: a timeout on progress, no silent retries of the library's own.
    HTTP reads ~/.netrc and proxy settings (`trust_env`), as curl and requests do."""
    config = config or _config
    if protocol in ("http", "https"):
        import aiohttp
        import fsspec.config

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.stall_timeout_s,
                                        sock_read=config.stall_timeout_s)
        configured = fsspec.config.conf.get(protocol, {}).get("client_kwargs", {})  # the user's fsspec configuration
        return {"client_kwargs": {"trust_env": True, **configured, "timeout": timeout}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": config.stall_timeout_s, "read_timeout": config.stall_timeout_s,
                                  "retries": {"max_attempts": 1, "mode": "standard"}}}
    return {}
