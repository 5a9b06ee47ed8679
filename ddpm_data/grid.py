"""Contact sheets: a PNG grid of images, one labelled row per group.

Used by `synth`, `stats --grid`, `preview --grid`, sampling and evaluation reports, so every
picture the tool writes looks the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

LABEL_WIDTH = 110  # pixels reserved on the left of each row for its name
PAD = 2


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """Accept a PIL image, an (H, W), (H, W, C) or (C, H, W) uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        raise ValueError(f"grid images must be uint8, got {array.dtype}")
    return Image.fromarray(array).convert("RGB")


def make_grid(rows: Mapping[str, Sequence[Image.Image | np.ndarray]], tile: int | None = None) -> Image.Image:
    """Lay out `rows` ({row name: images}) as a labelled grid; tiles are resized to `tile` px."""
    if not rows or not any(len(images) for images in rows.values()):
        raise ValueError("make_grid: no images to lay out")
    pil_rows = {name: [_to_pil(image) for image in images] for name, images in rows.items()}
    tile = tile or max(image.width for images in pil_rows.values() for image in images)
    columns = max(len(images) for images in pil_rows.values())
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * (tile + PAD), len(pil_rows) * (tile + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (name, images) in enumerate(pil_rows.items()):
        top = row * (tile + PAD)
        draw.text((4, top + tile // 2 - 5), name[:16], fill="black")
        for column, image in enumerate(images):
            if image.size != (tile, tile):
                image = image.resize((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(image, (LABEL_WIDTH + column * (tile + PAD), top))
    return sheet


def save_grid(rows: Mapping[str, Sequence[Image.Image | np.ndarray]], path: str | Path, tile: int | None = None) -> Path:
    """Write the grid of `rows` to `path` (PNG), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(rows, tile).save(path, format="PNG")
    return path
