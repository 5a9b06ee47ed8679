"""The side-by-side picture: one row per configuration (and the real images), samples at the display
size, then enlarged crops of their strongest edges, where staircases show.

Drawn with matplotlib on a Figure with its own Agg canvas (no pyplot state). Tiles are shown at
their pixel size, roughly 1:1 at 100 dpi. The crops are enlarged with nearest-neighbour
interpolation so that every pixel is visible, and a box on the tile marks where each crop is from.
A row may also carry its first image as a plain viewer shows a small image enlarged (nearest
neighbour from the trained size): the last column crops the same window of that view, so the
model's own staircases (in both) can be told from the display's (in the last column only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

ZOOM_CROPS = 2  # enlarged crops per row, from the row's first images
DPI = 100


def strongest_window(image: np.ndarray, side: int) -> tuple[int, int]:
    """(top, left) of the side x side window of (H, W, C) uint8 `image` with the most gradient energy."""
    luminance = image.astype(np.float64).mean(axis=-1)
    energy = np.zeros_like(luminance)
    energy[:, 1:] += np.diff(luminance, axis=1) ** 2
    energy[1:, :] += np.diff(luminance, axis=0) ** 2
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left)


def samples_figure(rows: Sequence[tuple[str, Sequence[np.ndarray], np.ndarray | None]], path: Path, title: str) -> Path:
    """Write `rows` ([(label, [(H, W, C) uint8 images], nearest view of the first image or None)]) as a PNG grid
    with zoomed edge crops; returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows = [(label, list(images), nearest) for label, images, nearest in rows if len(images)]
    if not rows:
        raise ValueError("samples_figure: no images")
    size = rows[0][1][0].shape[0]
    side = max(8, size // 4)
    shown = max(len(images) for _, images, _ in rows)
    columns = shown + ZOOM_CROPS + 1
    tile = max(1.0, size / DPI)
    figure = Figure(figsize=(columns * tile + 1.6, len(rows) * tile + 0.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize="medium")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, (label, images, nearest) in enumerate(rows):
        for column in range(columns):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
        for column, image in enumerate(images):
            axes[row][column].imshow(_rgb(image), interpolation="nearest")
        for crop, image in enumerate(images[:ZOOM_CROPS]):
            top, left = strongest_window(_rgb(image), side)
            axes[row][crop].add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="yellow", linewidth=1))
            zoom = axes[row][shown + crop]
            zoom.imshow(_rgb(image)[top : top + side, left : left + side], interpolation="nearest")
            if row == 0:
                zoom.set_title(f"crop {crop + 1} (x{size // side})", fontsize="small")
            if crop == 0 and nearest is not None:
                plain = axes[row][shown + ZOOM_CROPS]
                plain.imshow(_rgb(nearest)[top : top + side, left : left + side], interpolation="nearest")
                if row == 0:
                    plain.set_title("nearest view", fontsize="small")
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, C) or (C, H, W) or (H, W) uint8 -> (H, W, 3)."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
