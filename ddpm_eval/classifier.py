"""A small CNN trained on the real train split, used to judge class fidelity and as a feature space.

Its val accuracy is reported beside `class_accuracy` so the number can be trusted: a classifier that
cannot tell the real classes apart says nothing about the samples. Trained weights are cached next
to the shards, keyed by the manifest's SHA-256 and this config, so a second evaluation reuses them.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import pickle
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_eval.images import ImageSet, RealData, to_float


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = 16  # channels of the first conv; doubled twice; features are 4 * width wide
    epochs: int = 30  # passes over the train split; ~1 s each for 450 images at 32 px on one core
    batch_size: int = 32
    learning_rate: float = 1e-2  # Adam peak rate of a one-cycle schedule
    seed: int = 0
    # Larger images are area-downscaled to `input_size` px first: recognising the class needs no finer
    # detail (SWD, spectrum and edges judge the pixels), and training gets 4x cheaper at 96 px.
    input_size: int = 48

    def cache_key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())


class SmallClassifier(nn.Module):
    """(N, C, S, S) float in [-1, 1] -> logits (N, classes); `embed` gives the (N, 4 * width) features."""

    def __init__(self, in_channels: int, num_classes: int, width: int, input_size: int):
        super().__init__()
        self.input_size = input_size
        self.features = nn.Sequential(
            _block(in_channels, width), nn.MaxPool2d(2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.MaxPool2d(2),
            _block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="area")
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def cache_path(real: RealData, config: ClassifierConfig) -> Path:
    """`<shards>/eval-classifier-<manifest sha256[:16]>-<config hash>.pt` (for shards at a URL, in
    the user's cache folder: `RealData.cache_dir`)."""
    return real.cache_dir / f"eval-classifier-{real.manifest_sha256[:16]}-{config.cache_key()}.pt"


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and a shift of up to size/16 px (reflected borders)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, x.shape[-1] // 16)
    dy, dx = torch.randint(2 * pad + 1, (2,), generator=generator).tolist()
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def new_classifier(channels: int, num_classes: int, config: ClassifierConfig) -> SmallClassifier:
    """Freshly initialised from `config.seed`, leaving torch's global random state as it was (a
    training run that loads the classifier must not change its own random stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SmallClassifier(channels, num_classes, config.width, config.input_size)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of passes over `count` items, each pass in a new random order, without end."""
    while True:
        order = torch.randperm(count, generator=generator)
        yield from (order[start : start + batch_size] for start in range(0, count, batch_size))


def train_classifier(train: ImageSet, num_classes: int, config: ClassifierConfig, device: torch.device,
                     steps: int | None = None) -> SmallClassifier:
    """Fit on `train` with class-balanced cross-entropy (rare classes weigh as much as common ones),
    for `config.epochs` passes or, if given, `steps` batches whatever the set's size (the same
    training budget for sets of different sizes)."""
    model = new_classifier(train.images.shape[1], num_classes, config).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    images = to_float(train.images)
    labels = torch.from_numpy(train.labels)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).float()
    weight = (len(labels) / (num_classes * counts)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    if steps is None:
        steps = config.epochs * -(-len(labels) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=max(steps, 1))
    model.train()
    for batch in itertools.islice(_batches(len(labels), config.batch_size, generator), steps):
        if len(batch) < 2:  # BatchNorm needs two images
            continue
        x = _augment(images[batch], generator).to(device)
        loss = F.cross_entropy(model(x), labels[batch].to(device), weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def load_or_train(
    real: RealData, config: ClassifierConfig, device: torch.device, log: Callable[[str], None] = lambda message: None
) -> tuple[SmallClassifier, Path, bool]:
    """The cached classifier for `real`, training and caching it first if needed.

    Returns (model in eval mode, cache path, whether it was trained now). The cache only saves
    time: one that cannot be read (truncated, corrupt, from another model) is retrained and
    replaced, and one that cannot be written (read-only shards, full disk) is skipped, each with a
    warning through `log`.
    """
    model = cached_classifier(real, config, device, log)
    if model is not None:
        return model, cache_path(real, config), False
    return (*train_and_cache(real, config, device, log), True)


def cached_classifier(real: RealData, config: ClassifierConfig, device: torch.device,
                      log: Callable[[str], None] = lambda message: None) -> SmallClassifier | None:
    """The classifier cached for `real` in eval mode, or None when there is none or it cannot be
    read (with a warning through `log`). Reads no images: `real` may hold empty splits."""
    path = cache_path(real, config)
    model = _load_cached(path, real, config, log) if path.is_file() else None
    return None if model is None else model.to(device).eval()


def train_and_cache(real: RealData, config: ClassifierConfig, device: torch.device,
                    log: Callable[[str], None] = lambda message: None) -> tuple[SmallClassifier, Path]:
    """Train on `real.train` and cache the weights (a cache that cannot be written is skipped with a
    warning); (model in eval mode, cache path)."""
    path = cache_path(real, config)
    log(f"training the eval classifier on {len(real.train)} real train images ({config.epochs} epochs)")
    model = train_classifier(real.train, len(real.classes), config, device)
    state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "classes": list(real.classes),
             "size": real.size, "channels": real.channels, "config": asdict(config)}
    _save_cache(state, path, log)
    return model, path


# torch.load raises RuntimeError (damaged zip), pickle.UnpicklingError, EOFError; load_state_dict raises
# RuntimeError/KeyError for other weights; a cache path that is not a file raises OSError.
_CACHE_ERRORS = (RuntimeError, OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError)


def _load_cached(path: Path, real: RealData, config: ClassifierConfig,
                 log: Callable[[str], None]) -> SmallClassifier | None:
    """The classifier cached at `path`, or None (with a warning) when the file cannot be used."""
    model = new_classifier(real.channels, len(real.classes), config)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
    except _CACHE_ERRORS as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if reason.startswith("Weights only load failed"):  # not torch's advice to load it unrestricted
            reason = "corrupt, or a pickle of more than tensors and plain data: refused unread"
        log(f"warning: {path}: unreadable eval classifier cache ({reason}); retraining the eval classifier")
        return None
    return model


def _save_cache(state: dict, path: Path, log: Callable[[str], None]) -> None:
    """Write `state` to `path` whole (a temporary file renamed over it), or warn and go on."""
    partial = path.with_suffix(".pt.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # the cache folder, for shards at a URL
        torch.save(state, partial)
        partial.replace(path)
    except (OSError, RuntimeError) as error:  # torch's own file writer raises RuntimeError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        log(f"warning: could not cache the eval classifier at {path} ({reason}); going on without a cache, "
            f"it will be retrained next time")
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


@torch.no_grad()
def predict(model: SmallClassifier, images: np.ndarray, device: torch.device, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, S, S) -> (predicted labels (N,), features (N, D) float64)."""
    predictions, features = [], []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        embedding = model.embed(x)
        predictions.append(model.head(embedding).argmax(dim=1).cpu())
        features.append(embedding.double().cpu())
    return torch.cat(predictions).numpy(), torch.cat(features).numpy()


@torch.no_grad()
def class_probabilities(model: SmallClassifier, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """uint8 (N, C, S, S) -> softmax probabilities (N, classes) float64, rows summing to 1."""
    chunks = [model(to_float(images[start : start + batch_size], device)).softmax(dim=1).double().cpu()
              for start in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.head.out_features))


def class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose predicted class is their label."""
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")
