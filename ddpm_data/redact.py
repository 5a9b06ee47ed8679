"""What of a location may be written or shown: no password, token or signature ever reaches a
config.json, checkpoint, report, log or error line.

- `public(location)`: the form of a location that is stored and printed. A URL loses its user
  name, password and query values (`***`). A `pipe:` command keeps only parts that cannot be a
  secret: the program name, option names (`-sfL`, `--netrc`, `--header`), URLs (as above), paths
  (`/...`, `~/...`), `{}`, `-`, shell operators, and words whose only non-letters are environment
  references (`"Authorization: Bearer $TOKEN"`: the shell that runs the command expands it, so the
  command line holds no secret). Every other word becomes `***`; a command with nothing hidden is
  kept exactly, so it can be run again from a run's config.json.
- `redact(text)`: free text (an error from a library, a message naming a location) with every URL
  stripped as above, and the values of secret-bearing options (`-H 'Authorization: ...'`,
  `--user`, `--oauth2-bearer`, `Bearer ...`, `*_TOKEN=...`) replaced by `***`.
- `scrub(value)`: a JSON-like document with `public` applied to every `pipe:` string and `redact`
  to every other string.

A whitelist for the stored form (a command's unknown words may be secrets), patterns for free text
(where a command's end cannot be told).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
PIPE = "pipe:"
# a URL inside a message or a pipe command; it ends at a space, a quote, a bracket, a comma or a semicolon
_EMBEDDED_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>(),;]+")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ENV_REFERENCE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_SHELL_WORDS = {"{}", "-", "|", "||", "&&", ";", ">", "<", "2>/dev/null"}
_SECRET_OPTION = (r"(?:-u|-U|--user|--proxy-user|--oauth2-bearer|--password|--pass|--passwd|--token|--api-key|"
                  r"--access-token|-b|--cookie|--aws-sigv4-secret)")
_SECRET_HEADER = r"(?:(?:Proxy-)?Authorization|Cookie|[\w-]*(?:Token|Key|Secret|Auth)[\w-]*)"
_TEXT_PATTERNS = [
    # -H 'Authorization: ...' / --header "X-Api-Key: ..." (quoted or not)
    (re.compile(rf"((?:-H|--header)(?:\s+|=))(['\"])\s*{_SECRET_HEADER}\s*:[^'\"]*\2", re.I), rf"\1{HIDDEN}"),
    (re.compile(rf"((?:-H|--header)(?:\s+|=)){_SECRET_HEADER}:\S*", re.I), rf"\1{HIDDEN}"),
    (re.compile(rf"(?<![\w-])({_SECRET_OPTION}(?:\s+|=))(?:'[^']*'|\"[^\"]*\"|\S+)"), rf"\1{HIDDEN}"),
    (re.compile(rf"\b({_SECRET_HEADER}\s*:\s*)(?:Bearer|Basic|Token)?\s*[^\s'\"]+", re.I), rf"\1{HIDDEN}"),
    (re.compile(r"\b(Bearer|Basic)\s+[^\s'\"*][^\s'\"]*"), rf"\1 {HIDDEN}"),
    (re.compile(r"\b([A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|_KEY|CREDENTIALS?)[A-Z0-9_]*=)(?:'[^']*'|\"[^\"]*\"|\S+)"),
     rf"\1{HIDDEN}"),
]


def _hide_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{HIDDEN}@{host}" if "@" in parts.netloc else host
    query = "&".join(f"{pair.partition('=')[0]}={HIDDEN}" for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def hide_url_credentials(text: str) -> str:
    """`text` with every URL in it stripped of its user name, password and query values (***)."""
    return _EMBEDDED_URL.sub(lambda match: _hide_credentials(match.group(0)), text)


def redact(text: str) -> str:
    """`text` (a message, a location) with every URL stripped of its user name, password and query
    values, and the values of secret-bearing options and headers, as ***."""
    text = hide_url_credentials(text)
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _public_word(word: str, first: bool) -> str:
    if first and "=" not in word:
        return word  # the program name
    if _URL.match(word):
        return _hide_credentials(word)
    if word.startswith("-") and len(word) > 1:
        name, equals, _ = word.partition("=")
        return f"{name}={HIDDEN}" if equals else word
    if word in _SHELL_WORDS or word.startswith(("/", "~/", "./")):
        return word
    rest = _ENV_REFERENCE.sub("", word)
    if rest != word and re.fullmatch(r"[A-Za-z :_-]*", rest):
        return word  # only environment references, expanded when the command runs
    if "=" in word and first:
        return f"{word.partition('=')[0]}={HIDDEN}"  # an environment assignment before the program
    return HIDDEN


def public_command(command: str) -> str:
    """A `pipe:` location as it may be stored and shown (see the module docstring)."""
    try:
        words = shlex.split(command[len(PIPE):])
    except ValueError:  # unbalanced quotes: nothing but the program name is safe
        return f"{PIPE}{command[len(PIPE):].split()[0] if command[len(PIPE):].split() else ''} {HIDDEN}"
    shown, program_seen = [], False
    for word in words:
        shown.append(_public_word(word, first=not program_seen))
        program_seen = program_seen or "=" not in word or word.startswith("-")
    if shown == words:
        return command
    return PIPE + " ".join(shown)


def public(location: Any) -> str:
    """A location (a Path, a URL, a `pipe:` command) as it may be stored and shown."""
    text = str(location)
    if isinstance(location, Path):
        return text
    return public_command(text) if text.startswith(PIPE) else redact(text)


def is_hidden(location: Any) -> bool:
    """True when `public(location)` lost a part of it, or `location` is such a form itself (read
    back from a config.json): it cannot be used to read again."""
    return HIDDEN in public(location)


def scrub(value: Any) -> Any:
    """A JSON-like value with `public` applied to every string that is a `pipe:` command and
    `redact` to every other string (keys included)."""
    if isinstance(value, str):
        return public(value)
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    return value
