"""Class probabilities and epoch lengths for each balance mode."""
from __future__ import annotations

import math

import pytest

from ddpm_data.balance import Balance, BalanceMode, class_probabilities, draws_per_image, epoch_samples

COUNTS = {"abnormal": 85, "normal": 437}  # the reference dataset (docs/design.md)


def test_parse_modes_and_custom_weights():
    assert Balance.parse("natural") == Balance()
    assert Balance.parse(" sqrt ").mode is BalanceMode.sqrt
    custom = Balance.parse("normal=1,abnormal=3")
    assert custom.mode is BalanceMode.custom and custom.weights == (("normal", 1.0), ("abnormal", 3.0))
    assert str(custom) == "normal=1,abnormal=3" and Balance.parse(str(custom)) == custom


@pytest.mark.parametrize("text", ["uniform", "normal=1,abnormal", "normal=x", "normal=1,normal=2", "=1", "normal=-1", "normal=0"])
def test_parse_rejects_bad_text_naming_the_flag(text):
    with pytest.raises(ValueError, match="--balance"):
        Balance.parse(text)


def test_probabilities_per_mode():
    natural = class_probabilities(Balance(BalanceMode.natural), COUNTS)
    assert natural["abnormal"] == pytest.approx(85 / 522)
    assert class_probabilities(Balance(BalanceMode.balanced), COUNTS) == {"abnormal": 0.5, "normal": 0.5}
    sqrt = class_probabilities(Balance(BalanceMode.sqrt), COUNTS)
    assert sqrt["abnormal"] == pytest.approx(math.sqrt(85) / (math.sqrt(85) + math.sqrt(437)))
    custom = class_probabilities(Balance.parse("normal=1,abnormal=3"), COUNTS)
    assert custom == {"abnormal": 0.75, "normal": 0.25}
    assert list(custom) == list(COUNTS)


def test_custom_weights_must_name_the_data_classes():
    with pytest.raises(ValueError, match="missing: normal"):
        class_probabilities(Balance.parse("abnormal=1"), COUNTS)
    with pytest.raises(ValueError, match="unknown: tumour"):
        class_probabilities(Balance.parse("abnormal=1,normal=1,tumour=2"), COUNTS)
    with pytest.raises(ValueError, match="no training images"):
        class_probabilities(Balance(BalanceMode.balanced), {"abnormal": 0, "normal": 3})


def test_epoch_is_every_image_once_in_expectation():
    def epoch(text):
        probabilities = class_probabilities(Balance.parse(text), COUNTS)
        return epoch_samples(probabilities, COUNTS), draws_per_image(probabilities, COUNTS)

    samples, per_image = epoch("natural")
    assert samples == 522 and per_image == pytest.approx({"abnormal": 1.0, "normal": 1.0})
    samples, per_image = epoch("balanced")
    assert samples == 874 and per_image["normal"] == pytest.approx(1.0) and per_image["abnormal"] == pytest.approx(437 / 85)
    samples, per_image = epoch("sqrt")
    assert samples == math.ceil(437 + math.sqrt(437 * 85))
    samples, per_image = epoch("normal=1,abnormal=3")
    assert samples == 437 * 4 and min(per_image.values()) == pytest.approx(1.0)
    # a class with weight 0 is never drawn and does not stretch the epoch
    probabilities = class_probabilities(Balance.parse("normal=1,abnormal=0"), COUNTS)
    assert epoch_samples(probabilities, COUNTS) == 437


def test_a_class_without_training_images_is_named_under_every_rule_but_an_explicit_zero():
    counts = {"abnormal": 0, "normal": 3}
    for mode in BalanceMode:
        if mode is BalanceMode.custom:
            continue
        with pytest.raises(ValueError, match=f"--balance {mode.value}: class abnormal has no training images"):
            class_probabilities(Balance(mode), counts)
    assert class_probabilities(Balance.parse("abnormal=0,normal=1"), counts) == {"abnormal": 0.0, "normal": 1.0}
