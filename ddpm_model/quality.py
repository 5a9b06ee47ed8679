"""Sample quality while training: how far a model's samples are from the real validation images,
and whether each class's samples are recognised as that class.

On a few hundred images the validation loss keeps falling while samples drift away from the data,
so the trainer also scores samples (`TrainConfig.quality_every`) and keeps the best-scoring
weights as checkpoints/best-quality.pt. Each class's distance is the evaluator's sliced
Wasserstein distance (`ddpm_eval.swd`, Karras et al. 2018) between a fixed-seed sample set of
that class and its real val images, averaged over pyramid levels; lower is better. SWD compares
image patches, so a class's samples can score well while looking like another class; with
`quality_classifier` each class's distance is divided by the fraction of its samples that
ddpm-eval's classifier assigns to it (a class recognised in half of its samples counts double).
The checkpoint is chosen by the worst class, not the mean: a mean can improve while a rare class
gets worse, and that class is often the one that matters. Comparable between steps of one run,
not a replacement for `ddpm-eval`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

DESCRIPTORS = 2048   # 7x7 patches per pyramid level: enough for a stable score on ~10 val images
DIRECTIONS = 64      # random projections per repeat
MIN_LEVEL = 16       # px; the coarsest pyramid level, as ddpm-eval's default
REFERENCE_IMAGES = 512  # val images per class the score compares with, at most: DESCRIPTORS patches come from them


MIN_ACCURACY = 0.1  # a class recognised in fewer of its samples counts as 10x its distance, not infinity


@dataclass(frozen=True)
class QualityScore:
    """Per-class SWD of samples to the val images (class name -> distance; lower is better) and,
    when a classifier scored them, the fraction of each class's samples recognised as that class."""

    per_class: dict[str, float]
    accuracy: dict[str, float] | None = None
    samples: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (N, C, S, S) in [-1, 1], as scored
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)   # (N,) int64, their classes

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_class.values())))

    @property
    def worst(self) -> float:
        """The worst class's distance (quality_swd_worst)."""
        return float(max(self.per_class.values()))

    @property
    def weighted(self) -> dict[str, float]:
        """Each class's distance over its accuracy (at least MIN_ACCURACY); the distance alone
        without a classifier."""
        accuracy = self.accuracy or {}
        return {name: swd / max(accuracy.get(name, 1.0), MIN_ACCURACY) for name, swd in self.per_class.items()}

    @property
    def value(self) -> float:
        """What picks checkpoints/best-quality.pt (quality_score): the worst class's weighted
        distance, so no class may get worse, or be sampled as another, unnoticed."""
        return float(max(self.weighted.values()))

    def record(self) -> dict[str, object]:
        """The metrics.jsonl fields."""
        record: dict[str, object] = {"quality_swd": self.mean, "quality_swd_worst": self.worst,
                                     "quality_swd_classes": dict(self.per_class), "quality_score": self.value}
        if self.accuracy is not None:
            record["quality_accuracy_classes"] = dict(self.accuracy)
        return record


# Stored beside best_quality: scores under another rule do not compare. Without a classifier every
# class's accuracy counts as 1, which is the same rule.
QUALITY_RULE = "worst_class_swd_over_accuracy"
Classify = Callable[[torch.Tensor], "torch.Tensor | None"]  # (N, C, S, S) in [-1, 1] -> (N,) class indices; None: none


def make_quality_scorer(val_images: torch.Tensor, val_labels: torch.Tensor, classes: list[str],
                        config: TrainConfig, classify: Classify | None = None) -> Callable[[nn.Module], QualityScore] | None:
    """A function model -> QualityScore over the classes with two val images or more, or None when none has.

    val_images: float (N, C, S, S) in [-1, 1] at the training size; val_labels: (N,) int64 indices into
    `classes`; `classify`, when given, also scores each class's accuracy.
    """
    from ddpm_eval.swd import PyramidSWD

    references = {}
    for label in range(len(classes)):
        images = val_images[val_labels == label]
        if images.shape[0] >= 2:
            references[label] = PyramidSWD(images.float(), DESCRIPTORS, DIRECTIONS,
                                           min(MIN_LEVEL, images.shape[-1]), config.seed)
    if not references:
        return None

    def score(model: nn.Module) -> QualityScore:
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(config.seed + 1)
        labels = torch.tensor(sorted(references)).repeat_interleave(config.quality_samples)
        samples = model.sample(labels, sampler=config.sample_sampler.value, steps=config.sample_steps, guidance=config.sample_guidance,
                               eta=config.sample_eta, generator=generator,
                               batch_size=max(config.batch_size or 1, 16)).float().cpu()
        distances = {classes[label]: float(np.mean(references[label].distances(samples[labels == label])))
                     for label in references}
        predicted = None if classify is None else classify(samples)
        if predicted is None:  # no classifier, or it could not be made (said once, where it failed)
            return QualityScore(distances, samples=samples, labels=labels)
        correct = (predicted.cpu() == labels).float()
        return QualityScore(distances, {classes[label]: float(correct[labels == label].mean()) for label in references},
                            samples, labels)

    return score
