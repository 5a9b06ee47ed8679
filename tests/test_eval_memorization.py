"""ddpm_eval.memorization: nearest training images and near-copy flags."""
import numpy as np
import torch
from eval_helpers import fresh_real

from ddpm_eval.images import ImageSet
from ddpm_eval.memorization import flagged_copies, nearest_training_images, summarize

CPU = torch.device("cpu")


def test_injected_training_images_are_flagged_and_fresh_images_are_not():
    train, train_labels = fresh_real(counts=(10, 20), seed=1)
    fresh, fresh_labels = fresh_real(counts=(4, 6), seed=2)
    copied = train[3].copy()
    mirrored = train[7][..., ::-1].copy()
    queries = np.concatenate([fresh, copied[None], mirrored[None]])
    neighbours = nearest_training_images(queries, train, CPU)
    flags = neighbours.copies(1 / 3)
    assert not flags[:10].any()
    assert flags[10] and flags[11]
    assert neighbours.index[10] == 3 and not neighbours.flipped[10]
    assert neighbours.index[11] == 7 and neighbours.flipped[11]
    assert neighbours.distance[10] < 1e-3

    names = tuple(f"s{i}" for i in range(len(queries)))
    samples = ImageSet(queries, np.zeros(len(queries), dtype=np.int64), names)
    train_set = ImageSet(train, train_labels, tuple(f"t{i}" for i in range(len(train))))
    flagged = flagged_copies(samples, neighbours, train_set, 1 / 3)
    assert [item["sample"] for item in flagged] == ["s10", "s11"] or [item["sample"] for item in flagged] == ["s11", "s10"]
    assert {item["train_key"] for item in flagged} == {"t3", "t7"}


def test_summary_compares_with_val_distances():
    train, _ = fresh_real(counts=(10, 20), seed=1)
    val, _ = fresh_real(counts=(3, 3), seed=3)
    val_neighbours = nearest_training_images(val, train, CPU)
    copies = nearest_training_images(train[:6].copy(), train, CPU)
    everything = np.ones(6, dtype=bool)
    summary = summarize(copies, everything, val_neighbours.distance, 1 / 3)
    assert summary.copies == 6 and summary.copy_fraction == 1.0
    assert summary.nn_ratio < 0.01
    assert summarize(val_neighbours, everything, val_neighbours.distance, 1 / 3).nn_ratio == 1.0
