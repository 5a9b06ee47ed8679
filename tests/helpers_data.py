"""Tiny ImageFolder sources and damaged files for the build/stats/verify tests (seeded, in tmp_path)."""
from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB", fmt: str = "PNG") -> Path:
    """A random-noise image of `size` (W, H) in `mode`, saved as `fmt`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def make_folder(root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (40, 32)) -> Path:
    """ImageFolder `root/{class}/{i}.png` with `counts` random images per class (distinct bytes)."""
    counts = counts or {"normal": 12, "abnormal": 5}
    for c, (class_name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            write_image(root / class_name / f"img_{i:03d}.png", seed=1000 * c + i, size=size)
    return root


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with (almost) no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def sha256_tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `folder`."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of `path` in place (offset from the start; negative from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def count_hashing(monkeypatch) -> list:
    """Replace hashlib.sha256 for this test; returns the list of hashers made, each with `.bytes` hashed."""
    real, made = hashlib.sha256, []

    class CountingHash:
        def __init__(self):
            self.inner, self.bytes = real(), 0
            made.append(self)

        def update(self, data):
            self.bytes += len(data)
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", CountingHash)
    return made
