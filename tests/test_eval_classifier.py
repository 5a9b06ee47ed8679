"""ddpm_eval.classifier: the eval classifier learns the real classes and is cached by manifest checksum."""
import dataclasses

import numpy as np
import pytest
import torch
from eval_helpers import FAST, shared_shards

from ddpm_eval.classifier import (
    ClassifierConfig, SmallClassifier, cache_path, cached_classifier, class_accuracy, load_or_train, predict, train_and_cache,
)
from ddpm_eval.images import load_real

CPU = torch.device("cpu")
CONFIG = ClassifierConfig(epochs=FAST["classifier_epochs"], batch_size=FAST["classifier_batch_size"])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return load_real(shared_shards(tmp_path_factory))


def test_learns_the_real_classes_and_reuses_the_cache(real):
    model, path, _ = load_or_train(real, CONFIG, CPU)
    assert path == cache_path(real, CONFIG) and path.is_file() and path.parent == real.root
    assert real.manifest_sha256[:16] in path.name
    predictions, features = predict(model, real.val.images, CPU)
    assert class_accuracy(predictions, real.val.labels) >= 0.9
    assert features.shape == (len(real.val), 4 * CONFIG.width)
    cached, same_path, trained_now = load_or_train(real, CONFIG, CPU)
    assert same_path == path and not trained_now
    assert np.array_equal(predict(cached, real.val.images, CPU)[0], predictions)
    assert torch.load(path, weights_only=True)["classes"] == list(real.classes)


def test_another_manifest_or_config_gets_another_cache(real):
    other = dataclasses.replace(real, manifest_sha256="f" * 64)
    assert cache_path(other, CONFIG) != cache_path(real, CONFIG)
    assert cache_path(real, dataclasses.replace(CONFIG, epochs=3)) != cache_path(real, CONFIG)


def test_images_above_the_input_size_are_area_downscaled_first():
    model = SmallClassifier(3, 2, width=4, input_size=16).eval()
    big = torch.rand(2, 3, 32, 32)
    small = torch.nn.functional.avg_pool2d(big, 2)
    assert torch.allclose(model.embed(big), model.embed(small), atol=1e-6)
    assert model(big).shape == (2, 2)


def test_loading_or_training_the_classifier_leaves_the_global_random_state_alone(real):
    config = dataclasses.replace(CONFIG, epochs=1, seed=5)  # a cache of its own: trained here first
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for trained in (True, False):  # trained, then loaded from the cache
        assert load_or_train(real, config, CPU)[2] is trained
        assert torch.equal(torch.get_rng_state(), before)


def test_a_cached_classifier_is_found_without_reading_images(real):
    config = dataclasses.replace(CONFIG, epochs=1, seed=6)
    header = load_real(real.root, splits=())  # manifest and digest only
    assert cached_classifier(header, config, CPU) is None
    trained, path = train_and_cache(real, config, CPU)
    cached = cached_classifier(header, config, CPU)
    assert path == cache_path(header, config) and not cached.training
    assert np.array_equal(predict(cached, real.val.images, CPU)[0], predict(trained, real.val.images, CPU)[0])
