"""The shard folder's `manifest.json`: what a build wrote, read back and checked.

Schema (format_version 1, fully specified in docs/data-format.md): `size`, `stored_size`,
`channels`, `classes` (sorted names; label = index), `counts` ({split: {class: n}}), `shards`
(list of {"path", "split", "class", "count", "sha256"}, paths relative to the folder), `hdf5`
({"path", "sha256"}), `skipped` (list of {"path", "reason"}), `mean`/`std` (per channel, [0, 1]
units, train split at stored size), `source_sizes` ({"WxH": n}), `ignored` (int), `options`
(the build config), `format_version`, `tool_version`; optional `sample_checksums` (true: every
sample's .json sidecar carries its PNG's sha256 and data.h5 its rows' pixel sha256) and
`intensity` (the intensity rule, how `channels` was chosen, and per class what the rule did).

The folder may be a URL (see remote.py): the manifest is read from it like any other file.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ddpm_data.redact import public
from ddpm_data.remote import Location, RemoteError, as_location, is_url, join, read_bytes, writable
from ddpm_data.shardformat import ShardEntry

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")


class ManifestError(ValueError):
    """The manifest is missing or invalid; the message names the file and how to rebuild."""


@dataclass(frozen=True)
class Manifest:
    """A loaded `manifest.json`; nested fields keep their JSON shapes (dicts and lists)."""

    root: Location                  # the shard folder: an absolute Path, or a URL (str)
    format_version: int
    tool_version: str
    size: int                       # training resolution (px)
    stored_size: int                # side of every stored image (px), >= size
    channels: int                   # 1 (L) or 3 (RGB)
    classes: list[str]              # sorted class names; label = position
    counts: dict[str, dict[str, int]]   # {"train": {class: n}, "val": {class: n}}
    shards: list[ShardEntry]        # every tar shard, sorted by path
    hdf5: dict[str, str]            # {"path": "data.h5", "sha256": ...}
    skipped: list[dict[str, str]] = field(default_factory=list)   # [{"path", "reason"}]
    mean: list[float] = field(default_factory=list)   # per channel, [0, 1] units
    std: list[float] = field(default_factory=list)
    source_sizes: dict[str, int] = field(default_factory=dict)    # {"WxH": n}
    ignored: int = 0                # non-image and hidden files seen in the source
    options: dict[str, Any] = field(default_factory=dict)         # the build config
    sample_checksums: bool = False  # per-sample sha256 in the sidecars and data.h5 (sets built before: False)
    intensity: dict[str, Any] = field(default_factory=dict)  # the intensity rule and what it did per class (intensity.py)

    @property
    def is_remote(self) -> bool:
        """True when the folder is a URL."""
        return is_url(self.root)

    def file(self, relative: str) -> Location:
        """Location of a file of the set (a manifest `path`): an absolute Path, or a URL."""
        return join(self.root, relative)

    def shard_paths(self, split: str, class_name: str | None = None) -> list[Location]:
        """Locations (absolute paths or URLs) of the tar shards of `split` (and `class_name`), in manifest order."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: unknown; valid: {', '.join(SPLITS)}")
        if class_name is not None and class_name not in self.classes:
            raise ValueError(f"class {class_name!r}: unknown; valid: {', '.join(self.classes)}")
        return [
            self.file(shard.path)
            for shard in self.shards
            if shard.split == split and (class_name is None or shard.class_name == class_name)
        ]

    @property
    def hdf5_path(self) -> Location:
        """Absolute path (or URL) of the HDF5 file."""
        return self.file(self.hdf5["path"])

    def label(self, class_name: str) -> int:
        """The integer label of `class_name`."""
        if class_name not in self.classes:
            raise ValueError(f"class {class_name!r}: unknown; valid: {', '.join(self.classes)}")
        return self.classes.index(class_name)

    def num_samples(self, split: str) -> int:
        """Number of samples stored for `split` (all classes)."""
        return sum(self.counts.get(split, {}).values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without `root`), as written to `manifest.json`."""
        document = asdict(self)
        del document["root"]
        if not self.sample_checksums:  # absent from sets written before per-sample checksums
            del document["sample_checksums"]
        if not self.intensity:  # absent from sets written before the intensity rule
            del document["intensity"]
        document["shards"] = [shard.to_json() for shard in self.shards]
        return document


def manifest_to_json(document: dict[str, Any]) -> str:
    """Serialise a manifest document: UTF-8 text, sorted keys, indent 2, trailing newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_manifest(folder: str | Path, document: dict[str, Any]) -> Path:
    """Write `document` to `folder/manifest.json`; returns the path."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(manifest_to_json(document), encoding="utf-8")
    return path


# field name -> (JSON type(s), description for the error message)
_REQUIRED: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format_version": (int, "an integer"),
    "tool_version": (str, "a string"),
    "size": (int, "a positive integer"),
    "stored_size": (int, "a positive integer"),
    "channels": (int, "1 or 3"),
    "classes": (list, "a list of class names"),
    "counts": (dict, "an object {split: {class: n}}"),
    "shards": (list, "a list of shard entries"),
    "hdf5": (dict, "an object {path, sha256}"),
}


def rebuild_hint(folder: Location, size: Any = None) -> str:
    """The build command to (re)write `folder`: the manifest's size when it has one, else the
    folder's name when that is a plain size (shards/96), else N; with --out for a URL."""
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        name = str(folder).rstrip("/").rsplit("/", 1)[-1]
        size = name if name.isdigit() and name == str(int(name)) else "N"
    if is_url(folder) and not writable(folder):  # a read-only location: the set is built elsewhere
        return f"run 'ddpm-data build --size {size}' where {public(folder)} is served from"
    return f"run 'ddpm-data build --size {size}'" + (f" --out {public(folder)}" if is_url(folder) else "")


def _manifest_text(path: Location, data: bytes) -> str:
    """The manifest's text; ManifestError naming `path` when the server sent something else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{public(path)}: not UTF-8 text ({error.reason} at byte {error.start}), so not a "
                            f"manifest written by 'ddpm-data build'; check the URL") from None
    if text.lstrip()[:1] == "<":
        raise ManifestError(f"{public(path)}: an HTML page, not a manifest (an error or login page of the server?); "
                            f"check the URL and the credentials")
    return text


def _read_document(folder: Location) -> tuple[Location, Location, Any]:
    """(root, manifest location, parsed JSON) of a local folder or a URL."""
    if is_url(folder):
        try:
            root: Location = as_location(str(folder), "shard folder")  # refuses a URL with credentials
        except ValueError as error:
            raise ManifestError(str(error)) from None
        path: Location = join(root, MANIFEST_NAME)
        hint = rebuild_hint(root)
        try:
            text = _manifest_text(path, read_bytes(path))
        except RemoteError as error:
            if error.reason == "missing":
                raise ManifestError(f"{path}: missing: no shard set there, or its upload has not finished (the "
                                    f"manifest is written last); {hint} first") from None
            raise ManifestError(f"{error}") from None
    else:
        root, path = Path(folder).resolve(), Path(folder) / MANIFEST_NAME
        hint = rebuild_hint(root)
        if not path.is_file():
            what = "folder missing" if not Path(folder).exists() else "missing"
            raise ManifestError(f"{path}: {what}; {hint} first")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(f"{path}: unreadable ({error}); {hint} to rebuild it") from error
    try:
        return root, path, json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: unreadable ({error}); {hint} to rebuild it") from error


def load_manifest(folder: Location) -> Manifest:
    """Read and validate `folder/manifest.json`; `folder` is a local folder or a URL (remote.py).

    Raises ManifestError naming the path and the rebuild command when the file is missing,
    not JSON, of another format version, or lacks / mistypes a required field.
    """
    root, path, document = _read_document(folder)
    hint = rebuild_hint(root)
    if not isinstance(document, dict):
        raise ManifestError(f"{path}: not a JSON object; {hint} to rebuild it")
    hint = rebuild_hint(root, document.get("size"))
    for name, (kind, description) in _REQUIRED.items():
        value = document.get(name)
        if value is None:
            raise ManifestError(f"{path}: field {name!r} missing; {hint} to rebuild it")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ManifestError(f"{path}: field {name!r} must be {description}, got {value!r}; {hint} to rebuild it")
    if document["format_version"] != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {document['format_version']} is not supported (this tool reads "
            f"{FORMAT_VERSION}); {hint} with this version"
        )
    if document["channels"] not in (1, 3):
        raise ManifestError(f"{path}: field 'channels' must be 1 or 3, got {document['channels']!r}; {hint} to rebuild it")
    if document["size"] <= 0 or document["stored_size"] < document["size"]:
        raise ManifestError(
            f"{path}: need 0 < size <= stored_size, got size {document['size']} and stored_size "
            f"{document['stored_size']}; {hint} to rebuild it"
        )
    for shard in document["shards"]:
        if not isinstance(shard, dict) or not {"path", "split", "class", "count", "sha256"} <= shard.keys():
            raise ManifestError(f"{path}: shard entry {shard!r} lacks path/split/class/count/sha256; {hint} to rebuild it")
        if shard["split"] not in SPLITS or shard["class"] not in document["classes"]:
            raise ManifestError(f"{path}: shard entry {shard!r} has an unknown split or class; {hint} to rebuild it")
    if "path" not in document["hdf5"]:
        raise ManifestError(f"{path}: field 'hdf5' lacks 'path'; {hint} to rebuild it")
    problem = _nested_problem(document)
    if problem is not None:
        raise ManifestError(f"{path}: {problem}; {hint} to rebuild it")
    if not isinstance(document.get("intensity", {}), dict):
        raise ManifestError(f"{path}: field 'intensity' must be an object; {hint} to rebuild it")
    if not isinstance(document.get("sample_checksums", False), bool):
        raise ManifestError(f"{path}: field 'sample_checksums' must be true or false; {hint} to rebuild it")
    known = {f.name for f in fields(Manifest)} - {"root"}
    values = {key: value for key, value in document.items() if key in known}
    values["shards"] = [ShardEntry.from_json(shard) for shard in document["shards"]]
    return Manifest(root=root, **values)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nested_problem(document: dict[str, Any]) -> str | None:
    """What is wrong inside the fields whose top-level type is right (None when nothing): the
    values every reader computes with, so a bad one is named here instead of failing later."""
    classes = document["classes"]
    if not all(isinstance(name, str) and name for name in classes) or len(set(classes)) != len(classes):
        return f"field 'classes' must list distinct class names, got {classes!r}"
    for split in SPLITS:
        counts = document["counts"].get(split)
        if not isinstance(counts, dict) or not set(counts) <= set(classes):
            return f"field 'counts' must hold {{{split!r}: {{class: n}}}} for the listed classes, got {counts!r}"
        bad = {name: n for name, n in counts.items() if not _is_count(n)}
        if bad:
            return f"counts[{split!r}] must be integers >= 0, got {bad!r}"
    for shard in document["shards"]:
        if not _is_count(shard["count"]) or not all(isinstance(shard[k], str) for k in ("path", "sha256")):
            return f"shard entry {shard!r} needs a string path and sha256 and an integer count >= 0"
    if not isinstance(document["hdf5"]["path"], str):
        return f"field 'hdf5' needs a string path, got {document['hdf5']['path']!r}"
    for name in ("mean", "std"):
        values = document.get(name, [])
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            return f"field {name!r} must be a list of numbers, got {values!r}"
    if not _is_count(document.get("ignored", 0)):
        return f"field 'ignored' must be an integer >= 0, got {document['ignored']!r}"
    sizes = document.get("source_sizes", {})
    if not isinstance(sizes, dict) or not all(_is_count(n) for n in sizes.values()):
        return f"field 'source_sizes' must map 'WxH' to integers >= 0, got {sizes!r}"
    skipped = document.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(s, dict) and {"path", "reason"} <= s.keys() for s in skipped):
        return "field 'skipped' must be a list of {path, reason}"
    return None


SHA256 = re.compile(r"[0-9a-f]{64}")


def checksum_problem(value: object) -> str | None:
    """What is wrong with a recorded sha256 (empty, not 64 hex digits), or None."""
    if isinstance(value, str) and SHA256.fullmatch(value):
        return None
    return f"sha256 {value!r} is not a 64-digit hex checksum, so it verifies nothing"


def unchecked_shards_warning(manifest: Manifest) -> str | None:
    """One line naming the shards whose recorded sha256 verifies nothing (None when every one does)."""
    unchecked = [shard.path for shard in manifest.shards if checksum_problem(shard.sha256)]
    if not unchecked:
        return None
    shown = ", ".join(unchecked[:3]) + (f" and {len(unchecked) - 3} more" if len(unchecked) > 3 else "")
    return (f"{public(manifest.file(MANIFEST_NAME))}: {len(unchecked)} shard(s) without a valid sha256 ({shown}), so "
            f"their bytes are not checked as they are read; run 'ddpm-data verify {public(manifest.root)}', "
            f"or {rebuild_hint(manifest.root, manifest.size)} to record them")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks: the checksum the manifest records."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
