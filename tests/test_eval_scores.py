"""ddpm_eval.scores: balanced accuracy, recall and AUROC against brute force and reference numbers."""
import math

import numpy as np

from ddpm_eval.scores import auroc, balanced_accuracy, recall


def brute_force_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    return float(np.mean(pairs))


def test_auroc_is_the_fraction_of_correctly_ordered_pairs_ties_counting_half():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        positive = rng.random(40) < 0.3
        assert math.isclose(auroc(scores, positive), brute_force_auroc(scores, positive))


def test_auroc_reference_points():
    positive = np.array([True, True, False, False])
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), positive) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 0.0
    assert auroc(np.full(4, 0.5), positive) == 0.5
    assert math.isclose(auroc(np.array([0.9, 0.3, 0.5, 0.1]), positive), 0.75)
    assert math.isnan(auroc(np.array([0.1, 0.2]), np.array([True, True])))


def test_balanced_accuracy_gives_a_rare_class_the_weight_of_a_common_one():
    labels = np.array([0] * 10 + [1] * 90)
    assert balanced_accuracy(np.ones(100, dtype=int), labels) == 0.5  # 90 % accurate by always saying "1"
    predictions = labels.copy()
    predictions[:5] = 1  # half the rare class missed
    assert balanced_accuracy(predictions, labels) == 0.75
    assert recall(predictions, labels, 0) == 0.5 and recall(predictions, labels, 1) == 1.0
    assert math.isnan(recall(predictions, labels, 2))
