"""ddpm_data.shardformat: keys, ShardEntry JSON, tar and HDF5 round trips, PNG pixels, checksums while reading."""
from __future__ import annotations

import hashlib
import io
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from ddpm_data import shardformat
from ddpm_data.images import encode_png
from ddpm_data.manifest import manifest_to_json, sha256_file
from ddpm_data.shardformat import (
    ChecksumError, FormatError, Hdf5Writer, ShardEntry, ShardWriter, decode_png, iter_shard, member_name,
    parse_member_name, read_hdf5_split, read_shard, sample_key, sample_problems, shard_file_problem,
)
from helpers_data import count_hashing, flip_byte

DIGEST = hashlib.sha256(b"x").hexdigest()


def _png(pixels: np.ndarray) -> bytes:
    """(C, H, W) uint8 -> PNG bytes as the build writes them."""
    return encode_png(Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)))


def _samples(n: int, class_name: str = "normal", label: int = 1, channels: int = 3) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(n)
    return [(sample_key(class_name, hashlib.sha256(bytes([i])).hexdigest()),
             rng.integers(0, 256, (channels, 6, 6), dtype=np.uint8)) for i in range(n)]


def _write_shard(folder, samples, class_name: str = "normal", label: int = 1) -> ShardEntry:
    writer = ShardWriter(folder, "train", class_name, 0)
    for key, pixels in samples:
        writer.add(key, label, {"class": class_name, "label": label, "source": f"{key}.png"}, _png(pixels))
    return writer.close()


@pytest.mark.parametrize("class_name", ["normal", "v1.2", "ab-normal"])
def test_key_round_trips_through_member_names(class_name):
    key = sample_key(class_name, DIGEST)
    assert key == f"{class_name.replace('.', '_')}-{DIGEST[:16]}" and "." not in key
    for extension in shardformat.MEMBERS:
        assert parse_member_name(member_name(key, extension)) == (key, extension)


def test_shard_entry_json_round_trip_keeps_the_manifest_bytes():
    document = {"path": "train-normal-000000.tar", "split": "train", "class": "normal", "count": 4, "sha256": DIGEST}
    entry = ShardEntry.from_json(document)
    assert entry.class_name == "normal" and entry.count == 4
    assert entry.to_json() == document and ShardEntry.from_json(entry.to_json()) == entry
    assert manifest_to_json({"shards": [entry.to_json()]}) == manifest_to_json({"shards": [document]})
    with pytest.raises(AttributeError):
        entry.count = 5  # frozen


def test_tar_write_then_read_round_trip(tmp_path):
    samples = _samples(3)
    entry = _write_shard(tmp_path, samples)
    path = tmp_path / "train-normal-000000.tar"
    assert entry == ShardEntry(path.name, "train", "normal", 3, sha256_file(path))  # hashed while writing
    read = list(iter_shard(path, entry.sha256))
    assert [key for key, _ in read] == [key for key, _ in samples]
    for (key, members), (_, pixels) in zip(read, samples):
        assert set(members) == set(shardformat.MEMBERS) and members["cls"] == b"1"
        assert json.loads(members["json"])["class"] == "normal"
        assert np.array_equal(decode_png(members["png"], pixels.shape), pixels)
        assert sample_problems(key, members, "normal", 1) == []
    assert [key for key, _ in read_shard(tmp_path, entry)] == [key for key, _ in samples]
    again = tmp_path / "again"
    again.mkdir()
    assert _write_shard(again, samples).sha256 == entry.sha256  # byte-identical for identical content


def test_sample_problems_name_each_defect(tmp_path):
    (key, pixels), = _samples(1)
    entry = _write_shard(tmp_path, [(key, pixels)])
    (_, members), = read_shard(tmp_path, entry)
    assert sample_problems(key, members, "abnormal", 0) == [
        "key does not match its class 'abnormal'", ".cls b'1' is not the label 0 of 'abnormal'",
        ".json names class 'normal'"]
    assert sample_problems(key, {"png": members["png"]}, "normal", 1) == ["missing cls, json"]


@pytest.mark.parametrize("channels", [1, 3])
def test_png_decode_gives_channels_first_uint8(channels):
    pixels = np.random.default_rng(channels).integers(0, 256, (channels, 5, 7), dtype=np.uint8)
    decoded = decode_png(_png(pixels))
    assert decoded.dtype == np.uint8 and decoded.shape == (channels, 5, 7) and np.array_equal(decoded, pixels)
    with pytest.raises(FormatError, match=r"is \(%d, 5, 7\) \(C, H, W\), expected \(%d, 6, 6\)" % (channels, channels)):
        decode_png(_png(pixels), (channels, 6, 6))


def test_png_decode_refuses_other_modes_and_damage():
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, format="PNG")
    with pytest.raises(FormatError, match="is mode P, expected L or RGB"):
        decode_png(buffer.getvalue())
    with pytest.raises(FormatError, match="does not decode"):
        decode_png(b"\x89PNG not really")


def _write_hdf5(path, rows: dict[str, list[tuple[np.ndarray, int, str]]]) -> None:
    writer = Hdf5Writer(path, size=5, stored_size=6, channels=3, classes=["abnormal", "normal"], splits=("train", "val"))
    for split, split_rows in rows.items():
        for pixels, label, key in split_rows:
            writer.add(split, pixels, label, key)
    writer.close()


def test_hdf5_split_read(tmp_path):
    path = tmp_path / shardformat.HDF5_NAME
    rows = [(pixels, i % 2, key) for i, (key, pixels) in enumerate(_samples(5))]
    _write_hdf5(path, {"train": rows})
    train = read_hdf5_split(path, "train", (3, 6, 6))
    assert train.images.dtype == np.uint8 and train.images.shape == (5, 3, 6, 6) and train.total == 5
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 1, 0, 1, 0]
    assert train.keys == tuple(key for _, _, key in rows)
    assert all(np.array_equal(image, pixels) for image, (pixels, _, _) in zip(train.images, rows))
    part = read_hdf5_split(path, "train", (3, 6, 6), slice(3, 10))
    assert part.images.shape[0] == 2 and part.total == 5 and part.keys == train.keys[3:]
    assert read_hdf5_split(path, "val", (3, 6, 6)).images.shape == (0, 3, 6, 6)


def test_hdf5_errors_name_the_file(tmp_path):
    path = tmp_path / "data.h5"
    with pytest.raises(FormatError, match="data.h5: missing"):
        read_hdf5_split(path, "train", (3, 6, 6))
    _write_hdf5(path, {})
    with pytest.raises(FormatError, match=r"data.h5: /train/images is uint8 \(0, 3, 6, 6\), expected uint8"):
        read_hdf5_split(path, "train", (1, 6, 6))
    with h5py.File(path, "r+") as h5:
        del h5["val/keys"]
    with pytest.raises(FormatError, match="data.h5: no /val/keys dataset"):
        read_hdf5_split(path, "val", (3, 6, 6))
    path.write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match="data.h5: unreadable HDF5"):
        read_hdf5_split(path, "train", (3, 6, 6))


def test_a_corrupted_shard_is_detected_once_per_read(tmp_path, monkeypatch):
    entry = _write_shard(tmp_path, _samples(4))
    path = tmp_path / entry.path
    flip_byte(path, 600)  # padding after the first .cls payload: the tar still parses
    hashed = count_hashing(monkeypatch)
    keys = []
    with pytest.raises(ChecksumError, match=f"{entry.path}: fails its sha256 checksum") as raised:
        for key, _ in iter_shard(path, entry.sha256):
            keys.append(key)
    assert len(keys) == 4 and raised.value.reason == shardformat.CHECKSUM_REASON  # checked after the last sample
    assert [h.bytes for h in hashed] == [path.stat().st_size]  # every byte hashed, once
    hashed.clear()
    with pytest.raises(ChecksumError):
        read_shard(tmp_path, entry)  # no samples are released
    assert [h.bytes for h in hashed] == [path.stat().st_size]


def test_truncated_or_missing_shards_name_the_file(tmp_path):
    entry = _write_shard(tmp_path, _samples(4))
    path = tmp_path / entry.path
    assert shard_file_problem(path) is None
    whole = path.read_bytes()
    path.write_bytes(whole[:-10240])  # whole records, but the end-of-archive blocks are gone
    assert shard_file_problem(path) == "truncated (no end-of-archive blocks)"
    path.write_bytes(whole)
    path.write_bytes(path.read_bytes()[:2600])  # inside the first PNG payload
    assert shard_file_problem(path) == "truncated (2600 bytes, not a whole number of 10240-byte tar records)"
    with pytest.raises(FormatError, match=f"{entry.path}: fails its sha256 checksum.*unreadable tar after 0 samples"):
        read_shard(tmp_path, entry)
    path.unlink()
    assert shard_file_problem(path) == "missing"
    with pytest.raises(FormatError, match=f"{entry.path}: missing"):
        read_shard(tmp_path, entry)
    with pytest.raises(FormatError, match="holds 0 samples, the manifest says 4"):
        path.write_bytes(b"\0" * 1024)  # an empty archive
        read_shard(tmp_path, ShardEntry(entry.path, "train", "normal", 4, sha256_file(path)))
