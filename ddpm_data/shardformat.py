"""The shard folder's on-disk format: tar shard keys and members, PNG pixels, and data.h5.

Every module that writes or reads a shard folder's data files goes through here (the manifest's
JSON lives in manifest.py); docs/data-format.md is the specification.

- Sample key `{class}-{sha256[:16]}` (no dots); members `{key}.cls`, `{key}.json`, `{key}.png`.
- Shards `{split}-{class}-{index:06d}.tar`, GNU tar with fixed header fields (byte-deterministic),
  listed in the manifest as `ShardEntry`s. They are read with webdataset's own tar iterator and
  key grouping, so this reader groups members exactly as any WebDataset pipeline does.
- data.h5: `/{split}/images` uint8 (N, C, S, S), `/{split}/labels` int64 (N,), `/{split}/keys`,
  `/{split}/pixel_sha256` uint8 (N, 32).
- Files are opened through `remote.open_input`, so a shard or data.h5 may sit at a URL.

Checksums are computed while the bytes pass (`_HashingFile`): once per write, once per read. Two
levels: the sha256 of every file (in the manifest) and, since per-sample checksums were added,
the sha256 of every sample's PNG (`png_sha256` in its .json sidecar) and of every HDF5 row's
pixels (`pixel_sha256`), so a reader can use a sample as soon as it has read it, without holding
the whole file until the file's checksum is known. Sets written before carry only the former
(`Manifest.sample_checksums` is False) and are read the old way.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from ddpm_data.redact import public, redact
from ddpm_data.remote import Location, RemoteError, join, open_input
from ddpm_data.transfer import Unreachable

KEY_HASH_HEX = 16                     # hex digits of the file's sha256 in its sample key
MEMBERS = ("cls", "json", "png")      # a sample's tar members, in the order they are written
HDF5_NAME = "data.h5"
HDF5_DATASETS = ("images", "labels", "keys")
HDF5_DIGESTS = "pixel_sha256"         # optional dataset: sha256 of each row's pixel bytes, uint8 (N, 32)
SAMPLE_CHECKSUM = "png_sha256"        # .json sidecar field: sha256 hex of the sample's .png bytes
HDF5_FLUSH_ROWS = 256                 # rows buffered per split before an HDF5 write (at most)
HDF5_BUFFER_BYTES = 64 << 20          # pixels buffered per file before an HDF5 write (at most)
TAR_RECORD_BYTES = tarfile.RECORDSIZE   # 10240: tarfile pads every archive to whole records
TAR_END_BYTES = 2 * tarfile.BLOCKSIZE    # the zero blocks that end an archive
CHECKSUM_REASON = "fails its sha256 checksum (truncated or modified)"
_READ_CHUNK = 1 << 20


class FormatError(ValueError):
    """A shard file, sample or PNG breaks the format. `reason` says what is wrong; the message
    is `{path}: {reason}` (callers add the fix, which depends on the command)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = public(path), redact(reason)  # a location's secrets never reach a message
        super().__init__(f"{self.path}: {self.reason}")


class ChecksumError(FormatError):
    """The file parsed completely but its bytes differ from the recorded sha256."""


# ---------------------------------------------------------------- names


def sample_key(class_name: str, sha256: str) -> str:
    """WebDataset key `{class}-{16 hex}`; dots in the class name become "_" (a dot splits a key)."""
    return f"{key_prefix(class_name)}{sha256[:KEY_HASH_HEX]}"


def key_prefix(class_name: str) -> str:
    """What every key of `class_name` starts with."""
    return class_name.replace(".", "_") + "-"


def member_name(key: str, extension: str) -> str:
    """Tar member name of one field of a sample: `{key}.{extension}`."""
    return f"{key}.{extension}"


def parse_member_name(name: str) -> tuple[str | None, str | None]:
    """(key, extension) of a tar member name, split as webdataset splits it (at the first dot)."""
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def shard_name(split: str, class_name: str, index: int) -> str:
    """File name of the `index`-th shard (from 0) of (split, class)."""
    return f"{split}-{class_name}-{index:06d}.tar"


@dataclass(frozen=True)
class ShardEntry:
    """One tar shard as the manifest lists it."""

    path: str          # file name, relative to the shard folder
    split: str         # "train" or "val"
    class_name: str    # every sample of the shard has this class
    count: int         # samples in the shard
    sha256: str        # hex digest of the file's bytes

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON object: {"path", "split", "class", "count", "sha256"}."""
        return {"path": self.path, "split": self.split, "class": self.class_name, "count": self.count,
                "sha256": self.sha256}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "ShardEntry":
        """Inverse of `to_json`; KeyError for a missing field (manifest.load_manifest checks first)."""
        return cls(document["path"], document["split"], document["class"], document["count"], document["sha256"])


# ---------------------------------------------------------------- hashing file


class _HashingFile:
    """A file opened for reading or writing that hashes (SHA-256) every byte passing through it.

    Named after its path, so webdataset's error messages ("... @ file") name the shard. Reading
    takes an open stream (`remote.open_input`: a local file, a URL, a pipe command's output).
    """

    def __init__(self, path: Location, mode: str, stream: BinaryIO | None = None) -> None:
        self.name = str(path)
        self._file: BinaryIO = stream if stream is not None else open(path, mode)
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._hash.update(data)
        return data

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def drain(self) -> None:
        """Read (and hash) the rest of the file: a tar reader stops at the end-of-archive blocks."""
        while self.read(_READ_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        try:
            self._file.close()
        except RemoteError as error:  # a pipe command reports its failure when it ends
            raise FormatError(self.name, error.reason) from None

    def __enter__(self) -> "_HashingFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
            return
        try:  # reading stopped early (an error, or the caller had enough): the first error counts
            self._file.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return self.name


# ---------------------------------------------------------------- tar shards: write


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed header fields: byte-identical tars for identical content (webdataset's TarWriter stamps the clock).
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Writes one tar shard of (split, class); `close()` returns its `ShardEntry` (sha256 hashed while writing)."""

    def __init__(self, folder: Path, split: str, class_name: str, index: int) -> None:
        self.split, self.class_name = split, class_name
        self.name = shard_name(split, class_name, index)
        self.count = 0
        self._file = _HashingFile(Path(folder) / self.name, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8")

    def add(self, key: str, label: int, sidecar: dict[str, Any], png: bytes) -> None:
        """Append one sample: its label, its JSON sidecar (sorted keys, with the PNG's sha256 added
        as `png_sha256`) and its PNG bytes."""
        sidecar = {**sidecar, SAMPLE_CHECKSUM: hashlib.sha256(png).hexdigest()}
        payloads = {"cls": str(label).encode("ascii"), "json": json.dumps(sidecar, sort_keys=True).encode("utf-8"),
                    "png": png}
        for extension in MEMBERS:
            payload = payloads[extension]
            self._tar.addfile(_tar_info(member_name(key, extension), len(payload)), io.BytesIO(payload))
        self.count += 1

    def close(self) -> ShardEntry:
        self._tar.close()
        self._file.close()
        return ShardEntry(self.name, self.split, self.class_name, self.count, self._file.hexdigest())

    def abort(self) -> None:
        """Close without producing an entry and without writing the tar's end (the build is
        failing, perhaps on a full disk): never raises, so the other files get closed too."""
        try:
            self._file.close()
        except OSError:
            pass


# ---------------------------------------------------------------- tar shards: read


def _message(error: Exception, path: Location) -> str:
    # webdataset appends " @ <file>" to the first of `args` and more context after it.
    message = str(error.args[0]) if error.args else type(error).__name__
    return message.removesuffix(f" @ {path}")


def _open_for_reading(path: Location) -> _HashingFile:
    try:
        return _HashingFile(path, "rb", open_input(path))
    except RemoteError as error:
        raise FormatError(path, error.reason) from None


def shard_file_problem(path: str | Path) -> str | None:
    """A look at a shard without reading it through: "missing", or "truncated ..." when its size is
    not whole tar records or it does not end in the end-of-archive blocks (every tar the build
    writes is padded to whole records); None otherwise. Its contents are checked when it is read."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, io.SEEK_END)
            if size < TAR_END_BYTES or size % TAR_RECORD_BYTES:
                return f"truncated ({size} bytes, not a whole number of {TAR_RECORD_BYTES}-byte tar records)"
            file.seek(size - TAR_END_BYTES)
            if file.read(TAR_END_BYTES).strip(b"\0"):
                return "truncated (no end-of-archive blocks)"
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    return None


def iter_shard(path: Location, sha256: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar shard (a local path or a URL), in file order,
    hashing while reading; one sample in memory at a time.

    With `sha256`, the digest is checked once the tar is exhausted, after the last sample was
    yielded: samples yielded before that are not yet verified by it (check each with
    `sample_problems(..., checksums=True)`, or use `read_shard` to get them only after the file's
    check). Raises FormatError naming `path`: "missing", "access denied ...", "download failed ...",
    "unreadable tar after n samples" (prefixed by the checksum reason when the bytes also differ),
    or ChecksumError.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    path = path if isinstance(path, str) else Path(path)
    with _open_for_reading(path) as file:
        count = 0
        try:
            files = ({**member, "__url__": str(path)} for member in tar_file_iterator(file))
            for sample in group_by_keys(files):
                count += 1
                yield sample["__key__"], {name: value for name, value in sample.items() if not name.startswith("__")}
        except RemoteError as error:  # the transfer broke: there is nothing more to read or hash
            raise FormatError(path, error.reason) from None
        except Unreachable:
            raise  # the server or the network failed, not the shard
        except Exception as error:  # tarfile and webdataset raise several types for a broken archive
            try:
                file.drain()
            except RemoteError as broken:
                raise FormatError(path, broken.reason) from None
            reason = f"unreadable tar after {count} samples ({_message(error, path)})"
            if sha256 and file.hexdigest() != sha256:
                reason = f"{CHECKSUM_REASON}; {reason}"
            raise FormatError(path, reason) from error
        try:
            file.drain()
        except RemoteError as broken:
            raise FormatError(path, broken.reason) from None
        if sha256 and file.hexdigest() != sha256:
            raise ChecksumError(path, CHECKSUM_REASON)


def read_shard(root: Location, entry: ShardEntry) -> list[tuple[str, dict[str, bytes]]]:
    """Every sample of `entry` (in the folder or URL `root`), returned only after its sha256
    (computed while reading: one pass over the file) and its sample count matched the manifest.
    FormatError otherwise."""
    path = join(root, entry.path)
    samples = list(iter_shard(path, entry.sha256))
    if len(samples) != entry.count:
        raise FormatError(path, f"holds {len(samples)} samples, the manifest says {entry.count}")
    return samples


def sample_problems(key: str, members: dict[str, bytes], class_name: str, label: int,
                    checksums: bool = False) -> list[str]:
    """What is wrong with one sample of a `class_name` shard, its pixels aside ([] when nothing).

    `checksums` (the manifest's `sample_checksums`): the .json must carry `png_sha256` and the
    .png bytes must match it, so the sample can be used before its file's checksum is known."""
    problems = []
    if "." in key or not key.startswith(key_prefix(class_name)):
        problems.append(f"key does not match its class {class_name!r}")
    missing = set(MEMBERS) - members.keys()
    if missing:
        return problems + [f"missing {', '.join(sorted(missing))}"]
    if members["cls"].strip() != str(label).encode():
        problems.append(f".cls {members['cls']!r} is not the label {label} of {class_name!r}")
    try:
        sidecar = json.loads(members["json"])
        if sidecar.get("class") != class_name or sidecar.get("label") != label:
            problems.append(f".json names class {sidecar.get('class')!r}")
        if checksums and sidecar.get(SAMPLE_CHECKSUM) != hashlib.sha256(members["png"]).hexdigest():
            problems.append(f".png {CHECKSUM_REASON}" if sidecar.get(SAMPLE_CHECKSUM)
                            else f".json lacks {SAMPLE_CHECKSUM}")
    except (ValueError, AttributeError) as error:
        problems.append(f".json unreadable ({error})")
    return problems


# ---------------------------------------------------------------- PNG pixels


def decode_png(data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """PNG bytes of an "L" or "RGB" image -> uint8 (C, H, W), C = 1 or 3.

    `shape`: the (C, S, S) the manifest promises. Raises FormatError whose `reason` reads after
    ".png ": "does not decode (...)", "is mode P, expected L or RGB", "is (3, 20, 20), expected ...".
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image)
    except Exception as error:  # PIL raises many types for damaged data
        raise FormatError("PNG", f"does not decode ({error})") from error
    if mode not in ("L", "RGB"):
        raise FormatError("PNG", f"is mode {mode}, expected L or RGB")
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if shape is not None and pixels.shape != tuple(shape):
        raise FormatError("PNG", f"is {pixels.shape} (C, H, W), expected {tuple(shape)}")
    return pixels


# ---------------------------------------------------------------- data.h5


def pixel_digest(pixels: np.ndarray) -> bytes:
    """sha256 (32 bytes) of an image's uint8 (C, S, S) pixels in C order: data.h5's `pixel_sha256`."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).digest()


@dataclass(frozen=True, eq=False)
class SplitArrays:
    """Rows of one split of data.h5."""

    images: np.ndarray     # (N, C, S, S) uint8
    labels: np.ndarray     # (N,) int64
    keys: tuple[str, ...]  # (N,) tar sample keys
    total: int             # rows the split holds in the file (N unless a slice was asked for)
    digests: np.ndarray | None = None  # (N, 32) uint8 pixel sha256 per row; None in files written before

    def bad_rows(self) -> list[str]:
        """Keys of the rows whose pixels differ from their recorded digest ([] without digests)."""
        if self.digests is None:
            return []
        return [key for pixels, digest, key in zip(self.images, self.digests, self.keys)
                if pixel_digest(pixels) != digest.tobytes()]


def read_hdf5_split(path: str | Path, split: str, item_shape: tuple[int, int, int],
                    rows: slice = slice(None)) -> SplitArrays:
    """Rows `rows` of `/{split}` of data.h5; `item_shape` = (C, S, S) from the manifest.

    Raises FormatError naming `path` when the file is missing or unreadable, a dataset is missing,
    or the images are not uint8 (N, *item_shape) with N labels and N keys.
    """
    return next(iter_hdf5_rows(path, split, item_shape, [rows]))


def iter_hdf5_rows(path: str | Path, split: str, item_shape: tuple[int, int, int],
                   blocks: list[slice]) -> Iterator[SplitArrays]:
    """`read_hdf5_split` for several row slices, one SplitArrays per slice, the file opened once."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "missing")
    try:
        with h5py.File(path, "r") as h5:
            images, labels, keys = _split_datasets(h5, path, split, tuple(item_shape))
            digests = h5[f"{split}/{HDF5_DIGESTS}"] if f"{split}/{HDF5_DIGESTS}" in h5 else None
            if digests is not None and digests.shape != (images.shape[0], 32):
                raise FormatError(path, f"/{split}/{HDF5_DIGESTS} is {digests.shape}, expected ({images.shape[0]}, 32)")
            for rows in blocks:
                yield SplitArrays(images[rows], labels[rows].astype(np.int64),
                                  tuple(str(key) for key in keys.asstr()[rows]), images.shape[0],
                                  None if digests is None else digests[rows])
    except FormatError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as error:  # h5py's errors for damaged files
        raise FormatError(path, f"unreadable HDF5 ({error})") from error


def _split_datasets(h5: Any, path: Path, split: str, item_shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    for name in HDF5_DATASETS:
        if f"{split}/{name}" not in h5:
            raise FormatError(path, f"no /{split}/{name} dataset")
    images, labels, keys = (h5[f"{split}/{name}"] for name in HDF5_DATASETS)
    if images.dtype != np.uint8 or images.shape[1:] != item_shape:
        raise FormatError(path, f"/{split}/images is {images.dtype} {images.shape}, expected uint8 (N, *{item_shape})")
    if labels.shape != (images.shape[0],) or keys.shape != (images.shape[0],):
        raise FormatError(path, f"/{split}/labels {labels.shape} or /{split}/keys {keys.shape} differ from "
                                f"the {images.shape[0]} images")
    return images, labels, keys


class Hdf5Writer:
    """Writes data.h5 row by row: both splits always present, ~1 MiB chunks, no timestamps, and
    the sha256 of every row's pixels (`pixel_sha256`).

    Rows are copied into one preallocated block per split and written when it is full: at most
    HDF5_FLUSH_ROWS rows and `buffer_bytes` of pixels for the whole file, whatever the image size."""

    def __init__(self, path: Path, size: int, stored_size: int, channels: int, classes: list[str],
                 splits: tuple[str, ...], buffer_bytes: int = HDF5_BUFFER_BYTES) -> None:
        import h5py

        self._path = path
        self._file = h5py.File(path, "w", libver="earliest", track_order=False)
        shape = (channels, stored_size, stored_size)
        block_rows = min(HDF5_FLUSH_ROWS, max(1, buffer_bytes // len(splits) // int(np.prod(shape))))
        self._blocks = {split: np.empty((block_rows, *shape), dtype=np.uint8) for split in splits}
        self._buffers: dict[str, list[tuple[int, str]]] = {split: [] for split in splits}  # (label, key) per row
        self._rows = {split: 0 for split in splits}
        rows_per_chunk = max(1, (1 << 20) // int(np.prod(shape)))
        # The datasets stay open for the writer's life: a dataset object freed after a failed write
        # (a full disk) would retry the write in its destructor, where h5py can only print the error.
        self._datasets: dict[str, dict[str, Any]] = {}
        for split in splits:
            group = self._file.create_group(split, track_order=False)
            group.create_dataset("images", shape=(0, *shape), maxshape=(None, *shape), dtype="uint8",
                                 chunks=(rows_per_chunk, *shape), track_times=False)
            group.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64", chunks=(1024,),
                                 track_times=False)
            group.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                 chunks=(1024,), track_times=False)
            group.create_dataset(HDF5_DIGESTS, shape=(0, 32), maxshape=(None, 32), dtype="uint8", chunks=(1024, 32),
                                 track_times=False)
            self._datasets[split] = {name: group[name] for name in (*HDF5_DATASETS, HDF5_DIGESTS)}
        self._file.attrs["size"] = size
        self._file.attrs["stored_size"] = stored_size
        self._file.attrs["channels"] = channels
        self._file.attrs["classes"] = json.dumps(classes)

    def add(self, split: str, pixels: np.ndarray, label: int, key: str) -> None:
        """Append one row: (C, S, S) uint8 pixels, its label and its tar key."""
        rows, block = self._buffers[split], self._blocks[split]
        block[len(rows)] = pixels
        rows.append((label, key))
        if len(rows) == len(block):
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self._buffers[split]
        if not rows:
            return
        start, stop = self._rows[split], self._rows[split] + len(rows)
        group = self._datasets[split]
        for name in (*HDF5_DATASETS, HDF5_DIGESTS):
            group[name].resize(stop, axis=0)
        pixels = self._blocks[split][:len(rows)]
        group["images"][start:stop] = pixels
        group[HDF5_DIGESTS][start:stop] = np.frombuffer(b"".join(pixel_digest(row) for row in pixels),
                                                        dtype=np.uint8).reshape(-1, 32)
        group["labels"][start:stop] = np.array([row[0] for row in rows], dtype=np.int64)
        group["keys"][start:stop] = [row[1] for row in rows]
        self._rows[split] = stop
        rows.clear()

    def close(self) -> None:
        for split in self._buffers:
            self._flush(split)
        self._datasets.clear()
        self._file.close()

    def abort(self) -> None:
        """Close without keeping anything (the build is failing, perhaps on a full disk); never raises.

        Closing flushes HDF5's cached chunks and metadata, and on a full disk a failed flush leaves
        the file open in the HDF5 library, which then crashes the interpreter at exit. So the
        file's descriptor is first pointed at an anonymous memory file (Linux `memfd_create`):
        the flush lands there and is dropped; elsewhere the file is emptied to make room."""
        try:
            descriptor = self._file.id.get_vfd_handle()
            if hasattr(os, "memfd_create"):
                discard = os.memfd_create("ddpm-discarded-hdf5")
                os.dup2(discard, descriptor)
                os.close(discard)
            else:
                os.truncate(self._path, 0)
        except (OSError, ValueError, TypeError):
            pass
        try:
            self._datasets.clear()
            self._file.close()
        except Exception:  # the build's own error is the one to report
            pass
