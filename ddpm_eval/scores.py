"""How well a classifier's outputs on labelled images match the labels: balanced accuracy, one class's
recall, and its AUROC.

Written with numpy, not scikit-learn: three short formulas do not justify a dependency.
"""
from __future__ import annotations

import numpy as np


def recall(predictions: np.ndarray, labels: np.ndarray, label: int) -> float:
    """Fraction of the images of class `label` predicted as `label` (its sensitivity); NaN if none.
    `predictions`, `labels`: (N,) int."""
    mask = labels == label
    return float(np.mean(predictions[mask] == label)) if mask.any() else float("nan")


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present in `labels` (N,), so a rare class counts as much as a
    common one; 1/classes for a constant guess, 1 when every image is right."""
    present = np.unique(labels)
    return float(np.mean([recall(predictions, labels, int(label)) for label in present])) if len(present) else float("nan")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (N,) float for boolean `positive` (N,): the probability
    that a random positive scores above a random negative, ties counting one half. Computed by the
    rank formula (Mann-Whitney U / (n_pos * n_neg), with average ranks for ties); NaN when either
    side is empty. 0.5 is chance, 1 a perfect ranking."""
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[positive].sum() - n_positive * (n_positive + 1) / 2
    return float(u / (n_positive * n_negative))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (N,), tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks
