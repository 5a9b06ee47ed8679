"""Shared fixtures: a tiny ImageFolder source and shard folders built from it once per session.

`tiny_source`: `normal/` 40 and `abnormal/` 16 random-noise RGB PNGs of 20 x 16 px (seeded).
`tiny_shards`: that source built at size 16 (stored 18 px, margin 12) with 4 samples per shard,
so each class spans several shards (train: normal 34 in 9 shards, abnormal 15 in 4; val: 6 + 1).
Tests that damage files must copy the folder first (`copy_shards`).
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_COUNTS = {"abnormal": 16, "normal": 40}


def write_noise_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (20, 16), seed: int = 0) -> Path:
    """ImageFolder `root/{class}/{i:03d}.png` of seeded random RGB noise, distinct per file."""
    rng = np.random.default_rng(seed)
    for class_name, n in sorted(counts.items()):
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"{i:03d}.png")
    return root


def build_shards(src: Path, out: Path, size: int = 16, shard_size: int = 4) -> Path:
    """Run `ddpm-data build` in-process on `src`; returns the shard folder."""
    from ddpm_data.shards import BuildConfig, build

    build(BuildConfig(src=src, size=(size,), out=str(out), shard_size=shard_size, workers=0, val_fraction=0.1))
    return out


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path_factory, monkeypatch):
    """Each test its own $XDG_CACHE_HOME: eval classifiers cached for shards at a URL land there,
    not in the user's home, and no test finds another's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    return write_noise_folder(tmp_path_factory.mktemp("tiny_source") / "data", TINY_COUNTS)


@pytest.fixture(scope="session")
def tiny_shards(tiny_source: Path, tmp_path_factory) -> Path:
    return build_shards(tiny_source, tmp_path_factory.mktemp("tiny_shards") / "16")


@pytest.fixture
def copy_shards(tiny_shards: Path, tmp_path: Path):
    """A function returning a private copy of `tiny_shards` (to damage)."""

    def copy() -> Path:
        target = tmp_path / "shards" / tiny_shards.name
        shutil.copytree(tiny_shards, target)
        return target

    return copy


def send_signal(number: int = signal.SIGINT) -> None:
    """Send `number` to this process; its handler runs in the main thread at the next bytecode."""
    os.kill(os.getpid(), number)
    time.sleep(0.05)


@pytest.fixture
def default_ctrl_c():
    """Python's own Ctrl-C handler (KeyboardInterrupt), whatever the test runner installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
