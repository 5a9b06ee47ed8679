"""Sample quality while training: how far a model's samples are from the real validation images.

On a few hundred images the validation loss keeps falling while samples drift away from the data,
so the trainer also scores samples (`TrainConfig.quality_every`) and keeps the best-scoring
weights as checkpoints/best-quality.pt. Each class's distance is the evaluator's sliced
Wasserstein distance (`ddpm_eval.swd`, Karras et al. 2018) between a fixed-seed sample set of
that class and its real val images, averaged over pyramid levels; lower is better. The checkpoint
is chosen by the worst class's distance, not the mean: a mean can improve while a rare class gets
worse, and that class is often the one that matters. It is the cheap part of `ddpm-eval` (no
classifier): comparable between steps of one run, not a replacement for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

DESCRIPTORS = 2048   # 7x7 patches per pyramid level: enough for a stable score on ~10 val images
DIRECTIONS = 64      # random projections per repeat
MIN_LEVEL = 16       # px; the coarsest pyramid level, as ddpm-eval's default
REFERENCE_IMAGES = 512  # val images per class the score compares with, at most: DESCRIPTORS patches come from them


@dataclass(frozen=True)
class QualityScore:
    """Per-class SWD of samples to the val images (class name -> distance; lower is better)."""

    per_class: dict[str, float]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_class.values())))

    @property
    def worst(self) -> float:
        """What picks checkpoints/best-quality.pt: no class may get worse unnoticed."""
        return float(max(self.per_class.values()))

    def record(self) -> dict[str, object]:
        """The metrics.jsonl fields."""
        return {"quality_swd": self.mean, "quality_swd_worst": self.worst, "quality_swd_classes": dict(self.per_class)}


QUALITY_RULE = "worst_class_swd"  # stored beside best_quality: scores under another rule do not compare


def make_quality_scorer(val_images: torch.Tensor, val_labels: torch.Tensor, classes: list[str],
                        config: TrainConfig) -> Callable[[nn.Module], QualityScore] | None:
    """A function model -> QualityScore over the classes with two val images or more, or None when none has.

    val_images: float (N, C, S, S) in [-1, 1] at the training size; val_labels: (N,) int64 indices into `classes`.
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
        samples = model.sample(labels, steps=config.sample_steps, guidance=config.sample_guidance,
                               eta=config.sample_eta, generator=generator,
                               batch_size=max(config.batch_size or 1, 16)).float().cpu()
        return QualityScore({classes[label]: float(np.mean(references[label].distances(samples[labels == label])))
                             for label in references})

    return score
