"""The arms of the utility test: k folds of the real images, each arm's training set, and one small
classifier per arm, fold and seed, scored on the held-out real fold.

An arm is a rule that turns the real training fold into a training set: the fold itself (real
only), the fold plus synthetic images (`with_synthetic`), or a fixed set (synthetic only). Every
arm trains the same classifier for the same number of steps with the same seed, so a difference
between arms comes from what they train on, not from more training or a luckier start.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable, Union

import numpy as np
import torch

from ddpm_eval.classifier import ClassifierConfig, SmallClassifier, class_probabilities, train_classifier
from ddpm_eval.images import ImageSet
from ddpm_eval.scores import auroc, balanced_accuracy, recall

METRICS = ("balanced_accuracy", "rare_recall", "rare_auroc")

# (real training fold, fold index, seed) -> the arm's training set; an ImageSet is the same set for every fold.
TrainingSet = Union[Callable[[ImageSet, int, int], ImageSet], ImageSet]


def joined(*sets: ImageSet) -> ImageSet:
    """The images of `sets` one after the other."""
    return ImageSet(np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets]),
                    tuple(name for s in sets for name in s.names))


def content_folds(images: ImageSet, k: int) -> np.ndarray:
    """Fold index (N,) int in [0, k) of each image, fixed by content: within each class the images
    are ordered by the SHA-256 of their pixels and dealt out in turn, so every fold holds a k-th of
    every class (stratified) and the same images give the same folds in any order, under any names."""
    digests = [hashlib.sha256(image.tobytes()).hexdigest() for image in images.images]
    folds = np.empty(len(images), dtype=np.int64)
    dealt = 0  # each class starts where the last stopped, so fold sizes differ by at most one overall
    for label in np.unique(images.labels):
        members = sorted(np.flatnonzero(images.labels == label), key=lambda i: (digests[i], images.names[i]))
        folds[members] = (np.arange(len(members)) + dealt) % k
        dealt += len(members)
    return folds


def synthetic_wanted(train_labels: np.ndarray, num_classes: int, ratio: float | None) -> np.ndarray:
    """Synthetic images to add per class (num_classes,) int: with `ratio` None, each class topped up
    to the largest class's count (balance); else `ratio` times the class's real training images."""
    counts = np.bincount(train_labels, minlength=num_classes)
    if ratio is None:
        return counts.max() - counts
    return np.round(ratio * counts).astype(np.int64)


def draw_synthetic(pool: ImageSet, wanted: np.ndarray, rng: np.random.Generator) -> ImageSet:
    """Up to `wanted[c]` images of each class c drawn from `pool` without repeats (all of them when
    the pool has fewer)."""
    chosen = [rng.choice(np.flatnonzero(pool.labels == label), min(int(count), int((pool.labels == label).sum())),
                         replace=False) for label, count in enumerate(wanted)]
    mask = np.zeros(len(pool), dtype=bool)
    mask[np.concatenate(chosen).astype(np.int64)] = True
    return pool.select(mask)


def with_synthetic(pool: ImageSet, num_classes: int, ratio: float | None,
                   record: list[tuple[np.ndarray, np.ndarray]] | None = None) -> Callable[[ImageSet, int, int], ImageSet]:
    """The real + synthetic arm's rule: the training fold plus images drawn from `pool` per
    `synthetic_wanted`, a fresh draw for each (fold, seed). Appends (wanted, added) per class
    (num_classes,) of each draw to `record` when given."""
    def training_set(train: ImageSet, fold: int, seed: int) -> ImageSet:
        wanted = synthetic_wanted(train.labels, num_classes, ratio)
        extra = draw_synthetic(pool, wanted, np.random.default_rng([seed, fold]))
        if record is not None:
            record.append((wanted, np.bincount(extra.labels, minlength=num_classes)))
        return joined(train, extra)

    return training_set


@dataclass(frozen=True)
class Trainer:
    """One classifier per arm, fold and seed: the same architecture and number of steps everywhere."""

    classifier: ClassifierConfig  # its seed is replaced by each run's
    steps: int  # optimiser steps per classifier, whatever the size of its training set
    num_classes: int
    device: torch.device

    def fit(self, train: ImageSet, seed: int) -> SmallClassifier:
        return train_classifier(train, self.num_classes, replace(self.classifier, seed=seed), self.device, steps=self.steps)


def score(model: SmallClassifier, test: ImageSet, rare: int, device: torch.device) -> dict[str, float]:
    """METRICS of `model` on `test`: balanced accuracy, recall and AUROC (its probability as the score)
    of class `rare`."""
    probabilities = class_probabilities(model, test.images, device)
    predictions = probabilities.argmax(axis=1)
    return {"balanced_accuracy": balanced_accuracy(predictions, test.labels),
            "rare_recall": recall(predictions, test.labels, rare),
            "rare_auroc": auroc(probabilities[:, rare], test.labels == rare)}


def cross_validate(real: ImageSet, folds: np.ndarray, training_set: TrainingSet, seeds: list[int], rare: int,
                   trainer: Trainer) -> dict[str, np.ndarray]:
    """Each metric as a (folds, seeds) array: for fold f and seed s, a classifier trained on
    `training_set(real outside f, f, s)` and tested on the real images in f. A fixed ImageSet as
    `training_set` is trained once per seed and tested on every fold."""
    k = int(folds.max()) + 1
    results = {metric: np.full((k, len(seeds)), np.nan) for metric in METRICS}
    fixed = {seed: trainer.fit(training_set, seed) for seed in seeds} if isinstance(training_set, ImageSet) else {}
    for fold in range(k):
        test = real.select(folds == fold)
        for column, seed in enumerate(seeds):
            model = fixed[seed] if fixed else trainer.fit(training_set(real.select(folds != fold), fold, seed), seed)
            for metric, value in score(model, test, rare, trainer.device).items():
                results[metric][fold, column] = value
    return results
