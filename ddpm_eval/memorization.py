"""Memorisation: how close each sample is to its nearest training image.

Distances are RMS pixel differences in [0, 1] units at the training size; horizontally flipped
training images count as the same training image, since training augments with flips.

Two numbers come out:
- near-copies: a sample whose nearest training image is more than 1 / `copy_ratio` times closer than
  its second-nearest is flagged (the relative criterion of Yoon et al. 2023, "Diffusion Probabilistic
  Models Generalize when They Fail to Memorize", with ratio 1/3). It needs no absolute scale, and
  real held-out images practically never meet it, which the val reference shows.
- `nn_ratio`: median nearest-training distance of the samples over that of real val images.
  About 1 is healthy; well below 1 means samples sit closer to the training set than new real
  images do (memorising); well above 1 means they resemble nothing real.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm_eval.images import ImageSet


@dataclass(frozen=True, eq=False)
class Neighbours:
    distance: np.ndarray  # (N,) RMS pixel distance in [0, 1] units to the nearest training image
    second: np.ndarray  # (N,) the same to the second-nearest (a different training image)
    index: np.ndarray  # (N,) index of the nearest training image
    flipped: np.ndarray  # (N,) bool, whether the match was its mirror image

    def copies(self, copy_ratio: float) -> np.ndarray:
        """(N,) bool: nearest at most `copy_ratio` times the second-nearest distance (exact duplicates count)."""
        return self.distance <= copy_ratio * self.second


def nearest_training_images(queries: np.ndarray, train: np.ndarray, device: torch.device, chunk: int = 256) -> Neighbours:
    """Two nearest distinct training images of each uint8 (N, C, S, S) query among uint8 (M, C, S, S) `train` (M >= 2)."""
    reference = torch.from_numpy(np.concatenate([train, train[..., ::-1]])).to(device).flatten(1).float() / 255
    reference_norm = reference.square().sum(dim=1)
    dimensions, count = reference.shape[1], len(train)
    best, runner_up, indices, flips = [], [], [], []
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[start : start + chunk]).to(device).flatten(1).float() / 255
        squared = (q.square().sum(dim=1, keepdim=True) + reference_norm[None, :] - 2 * q @ reference.T).clamp_min(0)
        plain, mirrored = squared[:, :count], squared[:, count:]
        per_image = torch.minimum(plain, mirrored)
        top = per_image.topk(2, dim=1, largest=False)
        nearest = top.indices[:, 0]
        best.append(top.values[:, 0])
        runner_up.append(top.values[:, 1])
        indices.append(nearest)
        flips.append(mirrored.gather(1, nearest[:, None])[:, 0] < plain.gather(1, nearest[:, None])[:, 0])

    def rms(parts: list[torch.Tensor]) -> np.ndarray:
        return (torch.cat(parts).double() / dimensions).sqrt().cpu().numpy()

    return Neighbours(rms(best), rms(runner_up), torch.cat(indices).cpu().numpy(), torch.cat(flips).cpu().numpy())


@dataclass(frozen=True)
class MemorizationSummary:
    copies: int  # flagged near-copies
    copy_fraction: float
    nn_ratio: float  # median sample distance / median val distance; ~1 healthy, << 1 copying
    nn_distance_median: float


def summarize(neighbours: Neighbours, mask: np.ndarray, val_distance: np.ndarray, copy_ratio: float) -> MemorizationSummary:
    """Copy count and distance ratio of the queries selected by boolean `mask` (N,)."""
    distance = neighbours.distance[mask]
    copies = int(neighbours.copies(copy_ratio)[mask].sum())
    median = float(np.median(distance))
    return MemorizationSummary(copies, copies / len(distance), median / max(float(np.median(val_distance)), 1e-12), median)


def flagged_copies(samples: ImageSet, neighbours: Neighbours, train: ImageSet, copy_ratio: float) -> list[dict]:
    """The flagged samples, closest first: {sample, train_key, distance, second_distance, flipped}."""
    flagged = neighbours.copies(copy_ratio)
    return [
        {"sample": samples.names[i], "train_key": train.names[neighbours.index[i]], "distance": float(neighbours.distance[i]),
         "second_distance": float(neighbours.second[i]), "flipped": bool(neighbours.flipped[i])}
        for i in np.argsort(neighbours.distance, kind="stable") if flagged[i]
    ]
