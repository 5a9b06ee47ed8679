"""The image sets an evaluation compares: real images from a shard folder, samples from a folder.

Everything comes back as uint8 arrays (N, C, size, size) at the shards' training size, so every
metric sees the same preprocessing: real images are centre-cropped from `stored_size` to `size`
(the same crop validation and sampling use), samples are read as written by `ddpm-sample`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
MIN_IMAGES_PER_CLASS = 2  # a Fréchet distance needs a covariance, i.e. at least two images


class EvalInputError(ValueError):
    """Unusable evaluation input; the message names the path or flag and what is expected."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with labels and a name per image (sample path relative to its folder, or shard key)."""

    images: np.ndarray  # (N, C, S, S) uint8
    labels: np.ndarray  # (N,) int64, index into the shards' classes
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, mask: np.ndarray) -> "ImageSet":
        """The images where boolean `mask` (N,) is true, in order."""
        indices = np.flatnonzero(mask)
        return ImageSet(self.images[indices], self.labels[indices], tuple(self.names[i] for i in indices))

    def of_class(self, label: int) -> "ImageSet":
        return self.select(self.labels == label)

    def of_classes(self, labels: list[int]) -> "ImageSet":
        return self.select(np.isin(self.labels, labels))


@dataclass(frozen=True, eq=False)
class RealData:
    """Both splits of a shard folder (or URL), centre-cropped to the training size."""

    root: Path | str  # the shard folder, or its URL
    classes: tuple[str, ...]
    size: int
    channels: int
    manifest_sha256: str  # of manifest.json's bytes; keys the cached classifier
    train: ImageSet
    val: ImageSet

    @property
    def cache_dir(self) -> Path:
        """Where the eval classifier is cached: next to the shards, or for a URL in the user's cache
        folder ($XDG_CACHE_HOME or ~/.cache, under ddpm-pipeline/eval)."""
        if isinstance(self.root, Path):
            return self.root
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "ddpm-pipeline" / "eval"

    def source(self, split: str) -> str:
        """Where a split's images come from, for messages."""
        from ddpm_data.redact import public

        return f"{self.root}/data.h5 /{split}" if isinstance(self.root, Path) else f"{public(self.root)} {split} tar shards"


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, S, S) -> (N, C, size, size), the central window (offset (S - size) // 2)."""
    stored = images.shape[-1]
    if stored < size:
        raise ValueError(f"cannot crop {stored} px images to {size} px")
    offset = (stored - size) // 2
    return np.ascontiguousarray(images[..., offset : offset + size, offset : offset + size])


SPLITS = ("train", "val")


def load_real(shard_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> RealData:
    """Read /train and /val of `shard_dir`/data.h5 per its manifest (contract in docs/data-format.md);
    for a URL, the same rows decoded from its tar shards (`ddpm_data.rows`), each sample checked.
    A split left out of `splits` is not read and comes back empty (the manifest and its digest,
    e.g. to find a cached classifier, need none)."""
    from ddpm_data.manifest import MANIFEST_NAME, load_manifest
    from ddpm_data.remote import RemoteError, read_bytes
    from ddpm_data.rows import read_rows
    from ddpm_data.shardformat import FormatError, read_hdf5_split

    manifest = load_manifest(shard_dir)
    shape = (manifest.channels, manifest.stored_size, manifest.stored_size)
    read = {split: ImageSet(np.zeros((0, manifest.channels, manifest.size, manifest.size), np.uint8),
                            np.zeros(0, np.int64), ()) for split in SPLITS}
    for split in splits:
        try:
            if manifest.is_remote:
                arrays = read_rows(manifest, split, [(0, manifest.num_samples(split))])
            else:
                arrays = read_hdf5_split(manifest.hdf5_path, split, shape)
        except FormatError as error:
            raise EvalInputError(f"{error}; run 'ddpm-data build --size {manifest.size}' first") from error
        read[split] = ImageSet(center_crop(arrays.images, manifest.size), arrays.labels, arrays.keys)
    try:
        digest = hashlib.sha256(read_bytes(manifest.file(MANIFEST_NAME))).hexdigest()
    except RemoteError as error:
        raise EvalInputError(str(error)) from error
    return RealData(manifest.root, tuple(manifest.classes), manifest.size, manifest.channels, digest,
                    read["train"], read["val"])


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def load_samples(folder: str | Path, classes: tuple[str, ...], size: int, channels: int, only: str | None = None) -> ImageSet:
    """Read `folder`/<class>/*.png (any ImageFolder) as uint8 (N, channels, size, size).

    Class folders must be among `classes` (the shards'); `only` restricts to one class. Files beside
    the class folders (ddpm-sample's contact sheets) and hidden entries are ignored. Images of another
    size are an error, not resized: a resize would hide exactly the artefacts being measured.
    """
    folder = Path(folder)
    layout = f"expected class subfolders as 'ddpm-sample' writes them ({folder}/<class>/*.png)"
    if not folder.is_dir():
        raise EvalInputError(f"--samples {folder}: no such folder; {layout}")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose and not class_dirs:  # beside class folders they are ignored (ddpm-sample puts <class>-grid.png there)
        raise EvalInputError(f"--samples {folder}: images directly in the folder (e.g. {loose[0]}); {layout}")
    known = ", ".join(classes)
    unknown = [p.name for p in class_dirs if p.name not in classes]
    if unknown:
        raise EvalInputError(
            f"--samples {folder}: class folder(s) {', '.join(unknown)} unknown to the shards (classes: {known}); "
            "rename them or pass the --real shards they were trained on"
        )
    if only is not None:
        if only not in classes:
            raise EvalInputError(f"--class {only}: not a class of the shards (classes: {known})")
        class_dirs = [p for p in class_dirs if p.name == only]
        if not class_dirs:
            raise EvalInputError(f"--class {only}: {folder}/{only} does not exist; {layout}")
    if not class_dirs:
        raise EvalInputError(f"--samples {folder}: empty; {layout}")
    mode = "RGB" if channels == 3 else "L"
    images, labels, names = [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EvalInputError(f"{class_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}); remove the folder or sample into it")
        for path in files:
            images.append(_read_image(path, size, mode))
            labels.append(classes.index(class_dir.name))
            names.append(f"{class_dir.name}/{path.name}")
    array = np.stack(images)
    if array.ndim == 3:
        array = array[:, None]
    else:
        array = array.transpose(0, 3, 1, 2)
    return ImageSet(np.ascontiguousarray(array), np.asarray(labels, dtype=np.int64), tuple(names))


def _read_image(path: Path, size: int, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.size != (size, size):
                raise EvalInputError(
                    f"{path}: {image.width}x{image.height} px, expected {size}x{size} (the shards' size); "
                    f"sample from a model trained at {size} px (ddpm-train --img-size {size}) or pass --real "
                    f"shards built at {image.width} px"
                )
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise EvalInputError(f"{path}: not a readable image ({error}); delete or replace it") from error


def require_counts(samples: ImageSet, real: RealData, labels: list[int], samples_dir: Path) -> None:
    """Every evaluated class needs MIN_IMAGES_PER_CLASS samples, train and val images."""
    for label in labels:
        name = real.classes[label]
        for what, image_set, where in (
            ("samples", samples, f"{samples_dir}/{name}"),
            ("real train images", real.train, real.source("train")),
            ("real val images", real.val, real.source("val")),
        ):
            count = int((image_set.labels == label).sum())
            if count < MIN_IMAGES_PER_CLASS:
                raise EvalInputError(
                    f"{where}: {count} {what} of class '{name}', need at least {MIN_IMAGES_PER_CLASS} "
                    "(the Fréchet distance needs a covariance; the reference needs val images); "
                    + ("sample more images" if what == "samples" else "rebuild the shards with more data or a larger val split")
                )


def blurred(image_set: ImageSet, sigma: float) -> ImageSet:
    """A Gaussian-blurred copy (sigma in pixels), rounded back to uint8: the smoothness ceiling."""
    import torch

    from ddpm_eval.filters import gaussian_blur

    smooth = gaussian_blur(torch.from_numpy(image_set.images).float(), sigma)
    return ImageSet(smooth.round().clamp(0, 255).to(torch.uint8).numpy(), image_set.labels, image_set.names)


def to_float(images: np.ndarray, device=None):
    """uint8 (N, C, S, S) array -> torch float32 in [-1, 1] on `device`."""
    import torch

    return torch.from_numpy(images).to(device).float().div(127.5).sub(1.0)

