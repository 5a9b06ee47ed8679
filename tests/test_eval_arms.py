"""ddpm_eval.arms: folds fixed by content, the synthetic top-up, and paired arms on one budget."""
import numpy as np
import pytest
import torch

from ddpm_eval.arms import (
    Trainer, content_folds, cross_validate, draw_synthetic, joined, synthetic_wanted, with_synthetic,
)
from ddpm_eval.classifier import ClassifierConfig
from ddpm_eval.images import ImageSet


def image_set(labels: list[int], seed: int = 0, size: int = 8) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 256, (len(labels), 3, size, size), dtype=np.uint8), np.asarray(labels, dtype=np.int64),
                    tuple(f"img{seed}-{i}" for i in range(len(labels))))


def test_folds_are_stratified_and_fixed_by_content_not_order_or_names():
    images = image_set([0] * 17 + [1] * 88)
    folds = content_folds(images, 5)
    assert set(folds.tolist()) == set(range(5))
    for label in (0, 1):
        counts = np.bincount(folds[images.labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    order = np.random.default_rng(1).permutation(len(images))
    shuffled = ImageSet(images.images[order], images.labels[order], tuple(f"renamed-{i}" for i in range(len(images))))
    assert np.array_equal(content_folds(shuffled, 5), folds[order])


def test_balance_tops_every_class_up_to_the_largest_and_a_ratio_scales_each_class():
    labels = np.array([0] * 20 + [1] * 100 + [2] * 60)
    assert synthetic_wanted(labels, 3, None).tolist() == [80, 0, 40]
    assert synthetic_wanted(labels, 3, 0.5).tolist() == [10, 50, 30]


def test_draws_never_repeat_an_image_and_stop_at_what_the_pool_has():
    pool = image_set([0] * 10 + [1] * 4)
    drawn = draw_synthetic(pool, np.array([6, 9]), np.random.default_rng(0))
    assert np.bincount(drawn.labels).tolist() == [6, 4]
    assert len(set(drawn.names)) == len(drawn)
    record = []
    train = image_set([0] * 3 + [1] * 12, seed=1)
    mixed = with_synthetic(pool, 2, None, record)(train, 0, 0)
    assert len(mixed) == len(train) + 9 and mixed.names[: len(train)] == train.names
    assert [wanted.tolist() for wanted, _ in record] == [[9, 0]] and record[0][1].tolist() == [9, 0]


@pytest.fixture(scope="module")
def separable() -> ImageSet:
    """Two classes a classifier learns in a few steps: dark and bright noise."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 12 + [1] * 24)
    images = np.where(labels[:, None, None, None] == 0, rng.integers(0, 100, (36, 3, 8, 8)), rng.integers(156, 256, (36, 3, 8, 8)))
    return ImageSet(images.astype(np.uint8), labels, tuple(map(str, range(36))))


def test_arms_on_the_same_training_set_score_identically_fold_by_fold(separable):
    trainer = Trainer(ClassifierConfig(width=4, batch_size=8), steps=20, num_classes=2, device=torch.device("cpu"))
    folds = content_folds(separable, 3)
    same = cross_validate(separable, folds, lambda train, fold, seed: train, [0, 1], 0, trainer)
    again = cross_validate(separable, folds, lambda train, fold, seed: joined(train), [0, 1], 0, trainer)
    for metric, values in same.items():
        assert values.shape == (3, 2) and np.array_equal(values, again[metric])  # paired: same seed, same start
    assert same["balanced_accuracy"].mean() > 0.9 and same["rare_auroc"].mean() > 0.9


def test_a_fixed_training_set_is_trained_once_per_seed_and_tested_on_every_fold(separable):
    fits = []

    class Counting(Trainer):
        def fit(self, train, seed):
            fits.append(seed)
            return super().fit(train, seed)

    counted = Counting(ClassifierConfig(width=4, batch_size=8), steps=20, num_classes=2, device=torch.device("cpu"))
    scores = cross_validate(separable, content_folds(separable, 3), separable, [0, 1], 0, counted)
    assert fits == [0, 1] and not np.isnan(scores["balanced_accuracy"]).any()
