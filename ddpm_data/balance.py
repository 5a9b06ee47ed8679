"""Class balance: how often each class is drawn, and what an epoch means under that choice.

A draw first picks a class c with probability p_c, then an image of that class (see stream.py).
- natural:  p_c proportional to n_c, the number of training images of the class (plain shuffling);
- balanced: p_c = 1 / K for K classes;
- sqrt:     p_c proportional to sqrt(n_c), halfway (on a log scale) between the two;
- custom:   `normal=1,abnormal=3`, p_c proportional to the given weight: a *class* probability, so
            here three abnormal draws for each normal one, whatever the class sizes.

An epoch is the number of draws after which every training image has been drawn at least once
in expectation: max_c n_c / p_c. That is N (all images) for natural, K * max_c n_c for balanced;
a class then has its images drawn p_c * epoch / n_c times each per epoch on average (>= 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Mapping


class BalanceMode(str, Enum):
    natural = "natural"
    balanced = "balanced"
    sqrt = "sqrt"
    custom = "custom"


@dataclass(frozen=True)
class Balance:
    """A balance mode; `weights` ((class, weight), ...) only for `custom`."""

    mode: BalanceMode = BalanceMode.natural
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", BalanceMode(self.mode))
        if (self.mode is BalanceMode.custom) != bool(self.weights):
            raise ValueError("--balance: class weights go with (and only with) the custom mode")
        weights = [weight for _, weight in self.weights]
        if weights and (any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0):
            raise ValueError(f"--balance {self}: weights must be finite, >= 0, and not all 0")

    def __str__(self) -> str:
        if self.mode is BalanceMode.custom:
            return ",".join(f"{name}={weight:g}" for name, weight in self.weights)
        return self.mode.value

    @classmethod
    def parse(cls, text: str) -> "Balance":
        """'natural' | 'balanced' | 'sqrt' | 'name=weight,name=weight,...'."""
        text = text.strip()
        if "=" not in text:
            valid = [mode.value for mode in BalanceMode if mode is not BalanceMode.custom]
            if text not in valid:
                raise ValueError(f"--balance {text!r}: unknown; valid: {', '.join(valid)} or class weights like normal=1,abnormal=3")
            return cls(BalanceMode(text))
        weights = []
        for item in text.split(","):
            name, sep, value = item.partition("=")
            try:
                weights.append((name.strip(), float(value)))
            except ValueError:
                raise ValueError(f"--balance {text!r}: {item!r} is not name=weight (e.g. normal=1,abnormal=3)") from None
            if not sep or not name.strip():
                raise ValueError(f"--balance {text!r}: {item!r} is not name=weight (e.g. normal=1,abnormal=3)")
        names = [name for name, _ in weights]
        if len(set(names)) != len(names):
            raise ValueError(f"--balance {text!r}: a class is named twice")
        return cls(BalanceMode.custom, tuple(weights))


def class_probabilities(balance: Balance, counts: Mapping[str, int]) -> dict[str, float]:
    """{class: p_c} summing to 1, for classes in the order of `counts` ({class: n_train})."""
    if balance.mode is BalanceMode.custom:
        given = dict(balance.weights)
        unknown, missing = sorted(set(given) - set(counts)), sorted(set(counts) - set(given))
        if unknown or missing:
            raise ValueError(
                f"--balance {balance}: classes must match the data's {', '.join(counts)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        raw = {name: given[name] for name in counts}
    else:
        rule = _RULES[balance.mode]
        raw = {name: rule(n) for name, n in counts.items()}
    empty = [name for name, weight in raw.items() if weight > 0 and counts[name] == 0]
    if empty:
        raise ValueError(f"--balance {balance}: class {', '.join(empty)} has no training images but a non-zero weight")
    if balance.mode is not BalanceMode.custom and 0 in counts.values():  # weight 0 by a rule (natural, sqrt), not by choice
        unseen = ", ".join(name for name, n in counts.items() if n == 0)
        raise ValueError(f"--balance {balance}: class {unseen} has no training images, so the model would be conditioned "
                         f"on a class it never sees; rebuild the shards with training images of it (a lower "
                         f"--val-fraction), or leave it out on purpose with --balance NAME=WEIGHT,... giving it 0")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"--balance {balance}: no training images to draw from")
    return {name: weight / total for name, weight in raw.items()}


_RULES = {
    BalanceMode.natural: lambda n: float(n),
    BalanceMode.balanced: lambda n: 1.0,  # a class without images is an error, not dropped
    BalanceMode.sqrt: lambda n: math.sqrt(n),
}


def epoch_samples(probabilities: Mapping[str, float], counts: Mapping[str, int]) -> int:
    """Draws per epoch: max over drawn classes of n_c / p_c (see the module docstring)."""
    return math.ceil(max(counts[name] / p for name, p in probabilities.items() if p > 0) - 1e-9)


def draws_per_image(probabilities: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
    """{class: expected draws of each of its images per epoch}."""
    epoch = epoch_samples(probabilities, counts)
    return {name: (p * epoch / counts[name] if counts[name] else 0.0) for name, p in probabilities.items()}
