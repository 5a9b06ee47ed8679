"""Sample quality while training: how far a model's samples are from the real validation images.

On a few hundred images the validation loss keeps falling while samples drift away from the data,
so the trainer also scores samples (`TrainConfig.quality_every`) and keeps the best-scoring
weights as checkpoints/best-quality.pt. The score is the evaluator's sliced Wasserstein distance
(`ddpm_eval.swd`, Karras et al. 2018) between a fixed-seed sample set and the real val images,
per class, averaged over classes and pyramid levels; lower is better. It is the cheap part of
`ddpm-eval` (no classifier): comparable between steps of one run, not a replacement for it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

DESCRIPTORS = 2048   # 7x7 patches per pyramid level: enough for a stable score on ~10 val images
DIRECTIONS = 64      # random projections per repeat
MIN_LEVEL = 16       # px; the coarsest pyramid level, as ddpm-eval's default


def make_quality_scorer(val_images: torch.Tensor, val_labels: torch.Tensor, num_classes: int,
                        config: TrainConfig) -> Callable[[nn.Module], float] | None:
    """A function model -> score, or None when no class has two val images.

    val_images: float (N, C, S, S) in [-1, 1] at the training size; val_labels: (N,) int64.
    """
    from ddpm_eval.swd import PyramidSWD

    references = {}
    for label in range(num_classes):
        images = val_images[val_labels == label]
        if images.shape[0] >= 2:
            references[label] = PyramidSWD(images.float(), DESCRIPTORS, DIRECTIONS,
                                           min(MIN_LEVEL, images.shape[-1]), config.seed)
    if not references:
        return None

    def score(model: nn.Module) -> float:
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(config.seed + 1)
        labels = torch.tensor(sorted(references)).repeat_interleave(config.quality_samples)
        samples = model.sample(labels, steps=config.sample_steps, guidance=config.sample_guidance,
                               eta=config.sample_eta, generator=generator,
                               batch_size=max(config.batch_size or 1, 16)).float().cpu()
        per_class = [np.mean(references[label].distances(samples[labels == label])) for label in references]
        return float(np.mean(per_class))

    return score
