"""The shard reader: class shares, rank/worker splitting, determinism, resume, bad shards."""
from __future__ import annotations

import io
import math

import pytest
import torch

from ddpm_data import rows, stream
from ddpm_data.balance import Balance
from ddpm_data.manifest import ManifestError, load_manifest
from ddpm_data.shardformat import decode_png, iter_shard
from ddpm_data.stream import OnError, ReaderConfig, ReaderMode, ShardError, load_split, open_reader, split_units
from helpers_data import count_hashing


def identities(shard_dir) -> dict[bytes, int]:
    """{pixel bytes: row} of every training image (the noise images are all distinct)."""
    images, _ = load_split(shard_dir, "train")
    table = {image.numpy().tobytes(): row for row, image in enumerate(images)}
    assert len(table) == len(images)
    return table


def take(reader, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(reader) for _ in range(batches)]


@pytest.mark.parametrize("mode", ["memory", "stream"])
@pytest.mark.parametrize("balance", ["natural", "balanced", "sqrt", "normal=1,abnormal=3"])
def test_class_shares_follow_the_balance(tiny_shards, mode, balance):
    reader = open_reader(tiny_shards, ReaderConfig(batch_size=16, balance=balance, mode=mode, seed=3))
    assert reader.mode is ReaderMode(mode)
    labels = torch.cat([labels for _, labels in take(reader, 200 if mode == "memory" else 100)])
    n = len(labels)
    expected = {"natural": 15 / 49, "balanced": 0.5, "sqrt": math.sqrt(15) / (math.sqrt(15) + math.sqrt(34)),
                "normal=1,abnormal=3": 0.75}[balance]
    assert reader.probabilities["abnormal"] == pytest.approx(expected)
    share = float((labels == 0).float().mean())
    assert share == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))
    assert reader.epoch_length == math.ceil(max(15 / expected, 34 / (1 - expected)) / 16 - 1e-9)


def test_batches_are_stored_size_uint8_with_matching_labels(tiny_shards):
    table = identities(tiny_shards)
    _, all_labels = load_split(tiny_shards, "train")
    for mode in ("memory", "stream"):
        images, labels = next(open_reader(tiny_shards, ReaderConfig(batch_size=8, mode=mode)))
        assert images.shape == (8, 3, 18, 18) and images.dtype == torch.uint8 and labels.dtype == torch.int64
        rows = [table[image.numpy().tobytes()] for image in images]
        assert torch.equal(all_labels[rows], labels)


def collect_parts(shard_dir, world_size: int, workers: int, mode: str, batches: int) -> dict[int, set[int]]:
    """{part: rows drawn} where part = rank * workers + worker; batch i comes from worker i % workers."""
    table, parts = identities(shard_dir), {}
    for rank in range(world_size):
        config = ReaderConfig(batch_size=8, balance="balanced", mode=mode, workers=workers, seed=1)
        reader = open_reader(shard_dir, config, rank=rank, world_size=world_size)
        for i, (images, _) in enumerate(take(reader, batches)):
            part = rank * max(workers, 1) + i % max(workers, 1)
            parts.setdefault(part, set()).update(table[image.numpy().tobytes()] for image in images)
        reader.close()
    return parts


@pytest.mark.parametrize("world_size, workers, mode", [(2, 2, "stream"), (3, 2, "stream"), (3, 0, "memory")])
def test_ranks_and_workers_get_disjoint_non_empty_parts(tiny_shards, world_size, workers, mode):
    """(3, 2): 6 parts but only 4 abnormal shards, so that class is split by sample, not by shard."""
    parts = collect_parts(tiny_shards, world_size, workers, mode, batches=24 * max(workers, 1))
    _, labels = load_split(tiny_shards, "train")
    assert len(parts) == world_size * max(workers, 1)
    seen: set[int] = set()
    for rows in parts.values():
        assert not rows & seen, "a sample was drawn by two parts"
        seen |= rows
        assert {int(labels[row]) for row in rows} == {0, 1}, "a part lacks a class"
    assert seen == set(range(len(labels))), "some samples were never drawn"


def test_split_units_by_shard_and_by_sample():
    assert [list(items) for items in split_units([4, 4, 3], part=1, parts=2)] == [[], [0, 1, 2, 3], []]
    owned = [[list(items) for items in split_units([4, 4, 3], part, parts=5)] for part in range(5)]
    assert owned[0] == [[0], [1], [2]] and owned[4] == [[], [0], [1]]
    flat = sorted((u, i) for part in owned for u, items in enumerate(part) for i in items)
    assert flat == [(u, i) for u, n in enumerate([4, 4, 3]) for i in range(n)]


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_seeded_and_reproducible(tiny_shards, mode):
    def batches(seed):
        return take(open_reader(tiny_shards, ReaderConfig(batch_size=8, mode=mode, seed=seed)), 12)

    a, b, c = batches(0), batches(0), batches(1)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))


@pytest.mark.parametrize("mode, workers", [("memory", 0), ("stream", 0), ("stream", 2)])
def test_resume_gives_the_batches_of_an_uninterrupted_run(tiny_shards, mode, workers):
    config = ReaderConfig(batch_size=8, balance="sqrt", mode=mode, workers=workers, seed=5)
    reader = open_reader(tiny_shards, config)
    take(reader, 7)  # odd, and long enough to cross a pass of the abnormal class
    buffer = io.BytesIO()
    torch.save({"data": reader.state_dict()}, buffer)
    expected = take(reader, 9)
    reader.close()
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["data"]
    resumed = open_reader(tiny_shards, config)
    resumed.load_state_dict(state)
    got = take(resumed, 9)
    resumed.close()
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(expected, got))
    other = open_reader(tiny_shards, ReaderConfig(batch_size=8, balance="sqrt", mode=mode, workers=workers, seed=6))
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_auto_picks_memory_when_the_split_fits(tiny_shards):
    assert open_reader(tiny_shards, ReaderConfig(memory_budget_mb=1)).mode is ReaderMode.memory
    assert open_reader(tiny_shards, ReaderConfig(memory_budget_mb=0.01)).mode is ReaderMode.stream


def test_too_many_parts_for_a_class_is_an_error(tiny_shards):
    with pytest.raises(ValueError, match="fewer --workers"):
        open_reader(tiny_shards, ReaderConfig(mode="stream", workers=4), rank=0, world_size=4)


def test_missing_manifest_says_to_build(tmp_path):
    with pytest.raises(ManifestError, match="ddpm-data build"):
        open_reader(tmp_path, ReaderConfig())


def damage(path, how: str) -> None:
    if how == "missing":
        path.unlink()
        return
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:600] + bytes([data[600] ^ 0xFF]) + data[601:])


def pixels_of(shard) -> set[bytes]:
    return {decode_png(members["png"]).tobytes() for _, members in iter_shard(shard)}


@pytest.mark.parametrize("how", ["truncate", "missing"])
def test_truncated_or_missing_shard_is_named_or_skipped_and_counted_at_open(copy_shards, how):
    shard_dir = copy_shards()
    bad = shard_dir / "train-abnormal-000001.tar"
    damage(bad, how)
    with pytest.raises(ShardError, match="train-abnormal-000001.tar.*--skip-bad-shards"):
        open_reader(shard_dir, ReaderConfig(mode="stream"))
    with pytest.warns(UserWarning, match="train-abnormal-000001.tar"):
        reader = open_reader(shard_dir, ReaderConfig(mode="stream", on_error=OnError.skip, balance="balanced"))
    assert [entry["path"] for entry in reader.skipped] == [str(bad)]
    assert reader.counts == {"abnormal": 11, "normal": 34}
    labels = torch.cat([labels for _, labels in take(reader, 10)])
    assert set(labels.tolist()) == {0, 1}


def pixels_of(shard) -> set[bytes]:
    return {decode_png(members["png"]).tobytes() for _, members in iter_shard(shard)}


def test_modified_shard_is_named_or_skipped_when_read(tiny_shards, copy_shards):
    """A flipped byte shows only in the checksum, computed as the shard is read: it surfaces with the
    batch that reads it, and none of its samples is used."""
    shard_dir = copy_shards()
    bad = shard_dir / "train-abnormal-000001.tar"
    damage(bad, "flip")
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", balance="balanced"))
    with pytest.raises(ShardError, match="train-abnormal-000001.tar: fails its sha256.*--skip-bad-shards"):
        take(reader, 20)  # 80 abnormal draws: more than a pass over the class's 15 samples
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", on_error=OnError.skip, balance="balanced"))
    with pytest.warns(UserWarning, match="train-abnormal-000001.tar"):
        batches = take(reader, 20)
    assert [entry["path"] for entry in reader.skipped] == [str(bad)]
    assert reader.counts == {"abnormal": 15, "normal": 34}  # as opened: the probabilities do not move
    delivered = {image.numpy().tobytes() for images, _ in batches for image in images}
    assert not delivered & pixels_of(tiny_shards / bad.name)
    assert set(torch.cat([labels for _, labels in batches]).tolist()) == {0, 1}


@pytest.mark.filterwarnings("ignore:.*skipped \\(--skip-bad-shards\\)")
def test_a_class_whose_every_shard_is_bad_does_not_advise_fewer_workers_to_a_single_reader(copy_shards):
    shard_dir = copy_shards()
    for shard in shard_dir.glob("train-abnormal-*.tar"):
        damage(shard, "flip")
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", workers=0, on_error=OnError.skip, balance="balanced"))
    with pytest.raises(ShardError, match="every shard this reader part reads is bad") as raised:
        take(reader, 20)
    assert "--workers" not in str(raised.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_passes_over_a_skipped_shard_as_an_uninterrupted_run(copy_shards, workers):
    shard_dir = copy_shards()
    damage(shard_dir / "train-abnormal-000002.tar", "flip")
    config = ReaderConfig(batch_size=8, balance="balanced", mode="stream", workers=workers, seed=2, on_error="skip")
    reader = open_reader(shard_dir, config)
    with pytest.warns(UserWarning, match="train-abnormal-000002.tar"):
        take(reader, 9)
    state = reader.state_dict()
    expected = take(reader, 9)
    reader.close()
    resumed = open_reader(shard_dir, config)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match="train-abnormal-000002.tar"):  # passed over again after the resume
        got = take(resumed, 9)
    resumed.close()
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(expected, got))


def test_stream_mode_hashes_each_shard_once_per_read(copy_shards, monkeypatch):
    """No checksum pass at open; each read hashes the shard's bytes exactly once, a bad shard included."""
    shard_dir = copy_shards()
    damage(shard_dir / "train-abnormal-000001.tar", "flip")
    monkeypatch.setattr(rows, "sha256_file", lambda path: pytest.fail(f"{path} hashed outside a read"))
    reads, real_read_shard = [], stream.read_shard
    hashed = count_hashing(monkeypatch)

    def spy(root, entry):
        reads.append(root / entry.path)
        return real_read_shard(root, entry)

    monkeypatch.setattr(stream, "read_shard", spy)
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", on_error="skip", balance="balanced"))
    assert hashed == [] and reads == []
    with pytest.warns(UserWarning, match="train-abnormal-000001.tar"):
        take(reader, 20)
    assert reads.count(shard_dir / "train-abnormal-000001.tar") == 1  # a bad shard is not read again
    assert [h.bytes for h in hashed] == [path.stat().st_size for path in reads]


def test_shard_damaged_after_opening_is_named(copy_shards):
    shard_dir = copy_shards()
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", balance="balanced"))
    for shard in load_manifest(shard_dir).shard_paths("train"):
        damage(shard, "flip")
    with pytest.raises(ShardError, match=r"train-\w+-\d{6}\.tar: fails its sha256"):
        next(reader)


def test_bad_hdf5_is_named(copy_shards):
    shard_dir = copy_shards()
    damage(shard_dir / "data.h5", "truncate")
    with pytest.raises(ShardError, match="data.h5"):
        open_reader(shard_dir, ReaderConfig(mode="memory"))
    assert open_reader(shard_dir, ReaderConfig(mode="stream")).mode is ReaderMode.stream


def test_load_split_and_config_errors(tiny_shards):
    images, labels = load_split(tiny_shards, "val")
    assert images.shape == (7, 3, 18, 18) and labels.tolist() == sorted(labels.tolist())
    with pytest.raises(ValueError, match="--batch-size"):
        ReaderConfig(batch_size=0)
    with pytest.raises(ValueError, match="--mode 'fast': unknown; valid: auto, stream, memory"):
        ReaderConfig(mode="fast")
    assert ReaderConfig(balance="sqrt").balance == Balance.parse("sqrt")


# ---------------------------------------------------------------- windows, rank blocks, old sets


@pytest.mark.parametrize("window", [None, 3])
def test_class_sequence_visits_every_item_once_per_pass_in_windows(window):
    units = [range(5), range(0), range(1, 9, 2), range(7)]
    sequence = stream.ClassSequence(units, seed=1, part=0, label=0, window=window)
    owned = sorted((u, i) for u, items in enumerate(units) for i in items)
    for pass_index in range(2):
        positions = range(pass_index * sequence.length, (pass_index + 1) * sequence.length)
        drawn = [(sequence.locate(t)[1], sequence.item(t)) for t in positions]
        assert sorted(drawn) == owned
        for unit, items in enumerate(units):  # a unit is visited in one go, window after window
            offsets = [items.index(item) for u, item in drawn if u == unit]
            assert [offset // (window or len(items)) for offset in offsets] == sorted(
                offset // (window or len(items)) for offset in offsets)
    assert sequence.take(7, 5) == [sequence.item(t) for t in range(7, 12)]
    walked = stream.ClassSequence(units, seed=1, part=0, label=0, window=window).walk(6)
    assert next(walked) == sequence.locate(6)


def test_stream_windows_give_the_same_samples_and_resume_exactly(tiny_shards, monkeypatch):
    """Windows of 3 samples in 4-sample shards: two windows per shard, the first released on the
    samples' own checksums. Every sample still comes once per pass, and resume stays exact."""
    monkeypatch.setattr(stream, "SHUFFLE_WINDOW", 3)
    table = identities(tiny_shards)
    config = ReaderConfig(batch_size=8, balance="balanced", mode="stream", seed=7)
    reader = open_reader(tiny_shards, config)
    drawn = [table[image.numpy().tobytes()] for images, _ in take(reader, 8) for image in images]
    _, labels = load_split(tiny_shards, "train")
    abnormal = [row for row in drawn if labels[row] == 0]
    assert len(set(abnormal[:15])) == len(abnormal[:15])  # one pass over the 15 abnormal images: no repeats
    state = reader.state_dict()
    expected = take(reader, 5)
    resumed = open_reader(tiny_shards, config)
    resumed.load_state_dict(state)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(expected, take(resumed, 5)))


def test_memory_mode_holds_only_the_ranks_block(tiny_shards):
    readers = [open_reader(tiny_shards, ReaderConfig(mode="memory"), rank=rank, world_size=3) for rank in range(3)]
    assert sum(reader.images.shape[0] for reader in readers) == 49  # one copy between the ranks
    assert stream.rank_block(34, 2, 3) == (22, 34)
    sequence = readers[0].sequences[1]
    assert sequence.take(0, 3) == [sequence.item(t) for t in range(3)]  # O(log units) per draw, no copy


def test_a_set_without_per_sample_checksums_is_read_whole_shard_first(copy_shards, monkeypatch):
    """Sets built before per-sample checksums: no png_sha256 to check, so a shard's samples are used
    only after its file checksum (read_shard), as before, whatever the window."""
    import json

    monkeypatch.setattr(stream, "SHUFFLE_WINDOW", 2)
    shard_dir = copy_shards()
    document = json.loads((shard_dir / "manifest.json").read_text())
    del document["sample_checksums"]
    (shard_dir / "manifest.json").write_text(json.dumps(document))
    reads, real_read_shard = [], stream.read_shard
    monkeypatch.setattr(stream, "read_shard", lambda root, entry: reads.append(entry.path) or real_read_shard(root, entry))
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", balance="balanced", seed=7))
    assert reader.window is None
    take(reader, 4)
    assert reads  # whole shards, checked first
    images, _ = load_split(shard_dir, "val")
    assert images.shape[0] == 7


def test_each_rank_looks_only_at_its_own_shards_at_open(copy_shards):
    shard_dir = copy_shards()
    (shard_dir / "train-normal-000001.tar").unlink()  # 9 normal shards, 2 parts: shard 1 is rank 1's
    open_reader(shard_dir, ReaderConfig(mode="stream"), rank=0, world_size=2)  # not its shard: not looked at
    with pytest.raises(ShardError, match="train-normal-000001.tar: missing"):
        open_reader(shard_dir, ReaderConfig(mode="stream"), rank=1, world_size=2)
    with pytest.warns(UserWarning, match="train-normal-000001.tar"):
        reader = open_reader(shard_dir, ReaderConfig(mode="stream", on_error="skip"), rank=1, world_size=2)
    assert reader.counts == {"abnormal": 15, "normal": 34}  # several ranks agree: counts as the manifest says
    labels = torch.cat([labels for _, labels in take(reader, 12)])
    assert set(labels.tolist()) == {0, 1}


def test_load_split_per_class_reads_at_most_that_many_rows_of_each_class_spread_evenly(tiny_shards):
    images, labels = load_split(tiny_shards, "train")
    capped, capped_labels = load_split(tiny_shards, "train", per_class=3)
    counts = torch.bincount(labels)
    assert torch.equal(torch.bincount(capped_labels), counts.clamp(max=3))
    first = int(counts[0])  # class 0's rows come first: its first and last row are both kept
    assert torch.equal(capped[0], images[0]) and torch.equal(capped[2], images[first - 1])
    assert torch.equal(load_split(tiny_shards, "train", per_class=10**6)[0], images)


def test_a_shard_without_a_recorded_checksum_is_named_when_a_reader_opens(copy_shards):
    import json
    import warnings

    from ddpm_data.config import ReaderConfig
    from ddpm_data.manifest import manifest_to_json
    from ddpm_data.stream import open_reader

    folder = copy_shards()
    document = json.loads((folder / "manifest.json").read_text())
    document["shards"][0]["sha256"] = ""
    (folder / "manifest.json").write_text(manifest_to_json(document))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = open_reader(folder, ReaderConfig(batch_size=2, mode="stream"))
        reader.close()
    lines = [str(w.message) for w in caught]
    assert any("1 shard(s) without a valid sha256" in line and document["shards"][0]["path"] in line
               and "ddpm-data verify" in line for line in lines), lines
