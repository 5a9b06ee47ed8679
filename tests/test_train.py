"""The training loop on an in-memory batch source: loss falls, stop/resume is exact, NaN stops
cleanly, a signal saves a checkpoint, validation is comparable, config errors name the flag."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import pytest
import numpy as np
import torch

from ddpm_model import checkpoint as ckpt
from ddpm_model.diffusion import DDPM, DiffusionConfig
from ddpm_model.ema import EMA
from ddpm_model.presets import PRESETS
from ddpm_model.train import (
    Distributed, LossModule, RunIO, TrainConfig, TrainingDiverged, TrainParts, TrainState,
    make_val_set, resume_from, train, validation_loss,
)

SIZE = 16


class TensorBatches:
    """Resumable batch source: batch k is a seeded draw of indices, so state = the counter."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0):
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.position = 0

    def __next__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.position)
        index = torch.randint(self.images.shape[0], (self.batch_size,), generator=generator)
        self.position += 1
        return self.images[index], self.labels[index]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])


def dataset(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two easy classes: dark and bright flat squares with a little texture (uint8)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 0, 60.0, 190.0)
    images = base + 20 * torch.rand((n, 3, SIZE, SIZE), generator=generator)
    return images.round().to(torch.uint8), labels


def centre(images: torch.Tensor, generator: torch.Generator):
    return images.float() / 127.5 - 1, torch.zeros(images.shape[0], 9)


def build(tmp_path, config: TrainConfig, augment=centre, with_val: bool = True, samples=None):
    torch.manual_seed(config.seed)
    model = DDPM(dataclasses.replace(PRESETS["tiny"], image_size=SIZE, model_channels=16),
                 DiffusionConfig(num_timesteps=100, prediction="eps"))  # thresholds calibrated on eps
    images, labels = dataset()
    val = None
    if with_val:
        val = make_val_set(images.float() / 127.5 - 1, labels, 100, seed=0, batch_size=8, limit=8)
    parts = TrainParts(
        model=model, step_model=LossModule(model), ema=EMA(model, config.ema_decay),
        optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        batches=TensorBatches(images, labels, config.batch_size, config.seed), augment=augment,
        generator=torch.Generator().manual_seed(config.seed), val=val,
        autocast=lambda: torch.autocast("cpu", enabled=False), use_aug_params=False)
    io = RunIO(tmp_path, {"model_config": {}, "classes": ["a", "b"], "run_config": {}}, write_samples=samples)
    return parts, io


def quick(**changes) -> TrainConfig:
    base = dict(batch_size=8, lr=2e-3, warmup_steps=2, ema_decay=0.9, log_every=2, val_every=4,
                checkpoint_every=4, sample_every=0, keep=2, seed=0)
    return TrainConfig(**{**base, **changes})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loss_falls_and_run_folder_is_complete(tmp_path):
    config = quick(max_steps=16)
    written = []
    parts, io = build(tmp_path, config, samples=lambda model, step, scored: written.append(step))
    result = train(parts, io, config, 16, Distributed())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert result.status == "finished" and result.step == 16 and result.images_seen == 16 * 8
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:2]) / 2, losses
    assert {"step", "images", "loss", "lr", "img_per_s", "data_wait"} <= set(records[0])
    assert any("val_loss_ema" in r for r in records)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-00000012.pt", "step-00000016.pt"]
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "loss.png").is_file()
    assert written == [16]  # sample_every=0: only at the end
    state = torch.load(ckpt.latest_checkpoint(tmp_path), weights_only=True)
    assert state["step"] == 16 and state["reader"] == [{"position": 16}]


def test_stop_and_resume_reaches_the_same_weights(tmp_path):
    config = quick(max_steps=6, checkpoint_every=100, val_every=3)
    parts, io = build(tmp_path / "straight", config)
    train(parts, io, config, 6, Distributed())
    straight = weights(parts.model)
    straight_ema = weights(parts.ema.module)

    half, io = build(tmp_path / "split", config)
    train(half, io, config, 3, Distributed())  # stops at 3 and checkpoints
    resumed, io = build(tmp_path / "split", config)
    state = TrainState()
    resume_from(ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "split")), resumed, state, Distributed())
    assert state.step == 3
    train(resumed, io, config, 6, Distributed(), state)
    for name, value in weights(resumed.model).items():
        assert torch.equal(value, straight[name]), name
    for name, value in weights(resumed.ema.module).items():
        assert torch.equal(value, straight_ema[name]), name


def test_nan_loss_stops_without_overwriting_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(images, generator):
        calls["n"] += 1
        x, params = centre(images, generator)
        return (x * math.nan if calls["n"] == 6 else x), params

    config = quick(max_steps=10, checkpoint_every=4)
    parts, io = build(tmp_path, config, augment=poisoned)
    with pytest.raises(TrainingDiverged, match=r"nan at step 6.*step-00000004\.pt.*--lr"):
        train(parts, io, config, 10, Distributed())
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-00000004.pt"]
    kept = torch.load(ckpt.latest_checkpoint(tmp_path), weights_only=True)
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
    assert not (tmp_path / "checkpoints" / "best.pt").exists() or all(
        torch.isfinite(v).all() for v in torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["model"].values())


def test_nan_before_the_first_checkpoint_does_not_advise_resume(tmp_path):
    def poisoned(images, generator):
        x, params = centre(images, generator)
        return x * math.nan, params

    config = quick(max_steps=10, checkpoint_every=4)
    parts, io = build(tmp_path, config, augment=poisoned)
    with pytest.raises(TrainingDiverged, match=r"nan at step 1.*nothing to resume") as raised:
        train(parts, io, config, 10, Distributed())
    assert "then --resume" not in str(raised.value)


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    calls = {"n": 0}

    def signalling(images, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return centre(images, generator)

    config = quick(max_steps=50, checkpoint_every=100)
    parts, io = build(tmp_path, config, augment=signalling)
    previous = signal.getsignal(signal.SIGTERM)
    result = train(parts, io, config, 50, Distributed())
    assert result.status == "interrupted" and result.step == 3
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003.pt"
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored


def test_validation_loss_is_fixed_for_fixed_weights(tmp_path):
    parts, _ = build(tmp_path, quick())
    first = validation_loss(parts.model, parts.val, parts.autocast)
    assert first == validation_loss(parts.model, parts.val, parts.autocast)
    assert parts.model.training  # restored


def test_val_set_has_stratified_timesteps():
    images = torch.zeros(10, 3, 4, 4)
    val = make_val_set(images, torch.zeros(10, dtype=torch.long), 1000, seed=1, batch_size=4, limit=10)
    assert sorted(val.t.tolist()) == list(range(0, 1000, 100))


def test_gradient_accumulation_matches_a_big_batch(tmp_path):
    """Each optimizer step draws grad_accum micro-batches and counts all their images."""
    config = quick(batch_size=4, grad_accum=2, max_steps=2, checkpoint_every=100, val_every=100)
    parts, io = build(tmp_path, config, with_val=False)
    result = train(parts, io, config, 2, Distributed())
    assert result.images_seen == 16 and parts.batches.position == 4


@pytest.mark.parametrize("changes, flag", [
    ({"batch_size": 0}, "--batch-size"),
    ({"max_steps": 0}, "--max-steps"),
    ({"ema_decay": 1.0}, "--ema-decay"),
    ({"keep": 0}, "--keep"),
])
def test_config_errors_name_the_flag(changes, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**changes)


def test_duration_units():
    config = TrainConfig(epochs=2.5)
    assert config.total_steps(steps_per_epoch=10, images_per_step=6) == 25
    assert TrainConfig(max_images=100).total_steps(10, 6) == 17
    assert TrainConfig(max_steps=7, epochs=3).total_steps(10, 6) == 7
    assert TrainConfig(lr=1.0, warmup_steps=4).lr_at(0) == 0.25


def test_sample_quality_is_scored_logged_and_the_best_kept(tmp_path):
    from ddpm_model.quality import QualityScore

    scores = iter([QualityScore({"normal": 0.5, "abnormal": 0.5}), QualityScore({"normal": 0.3, "abnormal": 0.3}),
                   QualityScore({"normal": 0.4, "abnormal": 0.4})])
    config = quick(max_steps=6, quality_every=2, checkpoint_every=100)
    parts, io = build(tmp_path, config)
    io.score_quality = lambda model: next(scores)
    train(parts, io, config, 6, Distributed())
    records = [r for r in io.metrics.read() if "quality_swd" in r]
    assert [(r["step"], r["quality_swd"], r["quality_swd_worst"]) for r in records] == [(2, 0.5, 0.5), (4, 0.3, 0.3), (6, 0.4, 0.4)]
    assert records[0]["quality_swd_classes"] == {"normal": 0.5, "abnormal": 0.5}
    best = ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.BEST_QUALITY_NAME)
    assert best["step"] == 4 and best["best_quality"] == 0.3


def test_the_best_quality_checkpoint_does_not_trade_a_class_for_the_mean(tmp_path):
    from ddpm_model.quality import QualityScore

    scores = iter([QualityScore({"normal": 0.5, "abnormal": 0.5}),
                   QualityScore({"normal": 0.1, "abnormal": 0.6}),    # best mean (0.35), abnormal worse
                   QualityScore({"normal": 0.4, "abnormal": 0.45})])  # every class better than step 2
    config = quick(max_steps=6, quality_every=2, checkpoint_every=100)
    parts, io = build(tmp_path, config)
    io.score_quality = lambda model: next(scores)
    train(parts, io, config, 6, Distributed())
    best = ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.BEST_QUALITY_NAME)
    assert best["step"] == 6 and best["best_quality"] == 0.45
    for rule, expected in (("worst_class_swd_over_accuracy", 0.45), ("worst_class_swd", math.inf)):  # an older rule's score is dropped
        state = TrainState()
        resume_from({**best, "best_quality_rule": rule}, parts, state, Distributed())
        assert state.best_quality == expected


def test_a_class_sampled_as_another_is_not_kept_for_its_distance(tmp_path):
    from ddpm_model.quality import QualityScore

    scores = iter([QualityScore({"normal": 0.30, "abnormal": 0.20}, {"normal": 1.0, "abnormal": 0.9}),
                   QualityScore({"normal": 0.25, "abnormal": 0.15}, {"normal": 1.0, "abnormal": 0.5}),  # closer, half recognised
                   QualityScore({"normal": 0.28, "abnormal": 0.18}, {"normal": 1.0, "abnormal": 1.0})])
    config = quick(max_steps=6, quality_every=2, checkpoint_every=100)
    parts, io = build(tmp_path, config)
    io.score_quality = lambda model: next(scores)
    train(parts, io, config, 6, Distributed())
    records = [r for r in io.metrics.read() if "quality_swd" in r]
    assert [round(r["quality_score"], 4) for r in records] == [0.3, 0.3, 0.28]  # abnormal at step 4: 0.15 / 0.5
    assert records[1]["quality_accuracy_classes"] == {"normal": 1.0, "abnormal": 0.5}
    best = ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.BEST_QUALITY_NAME)
    assert best["step"] == 6 and best["best_quality"] == pytest.approx(0.28)


def test_quality_score_is_the_worst_class_distance_over_its_accuracy():
    from ddpm_model.quality import MIN_ACCURACY, QualityScore

    assert QualityScore({"a": 0.2, "b": 0.1}).value == 0.2  # no classifier: the worst distance
    score = QualityScore({"a": 0.2, "b": 0.1}, {"a": 1.0, "b": 0.25})
    assert score.weighted == pytest.approx({"a": 0.2, "b": 0.4}) and score.value == pytest.approx(0.4)
    assert QualityScore({"a": 0.2}, {"a": 0.0}).value == pytest.approx(0.2 / MIN_ACCURACY)  # finite when none is recognised


def test_quality_scorer_ranks_real_images_above_noise():
    from ddpm_model.quality import make_quality_scorer

    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(24, 3, 20, 20, generator=generator), 5, 1)  # (24, 3, 16, 16)
    val, labels = smooth * 2 - 1, torch.arange(24) % 2
    scorer = make_quality_scorer(val, labels, ["a", "b"], quick(quality_samples=4))

    class Fixed(torch.nn.Module):
        def __init__(self, images):
            super().__init__()
            self.images, self.weight = images, torch.nn.Parameter(torch.zeros(1))

        def sample(self, labels, **kwargs):
            return self.images[: len(labels)]

    real, noise = scorer(Fixed(val)), scorer(Fixed(torch.rand(24, 3, 16, 16, generator=generator) * 2 - 1))
    assert set(real.per_class) == {"a", "b"} and real.worst < noise.worst and real.mean < noise.mean


def test_quality_scorer_counts_each_class_recognised_by_the_classifier():
    from ddpm_model.quality import make_quality_scorer

    generator = torch.Generator().manual_seed(0)
    val, labels = torch.rand(8, 3, 16, 16, generator=generator) * 2 - 1, torch.arange(8) % 2

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def sample(self, labels, **kwargs):
            return val[: len(labels)]

    seen = []

    def classify(images):  # class "a" samples (the first four) recognised 3 of 4 times, "b" never
        seen.append(images.shape)
        return torch.tensor([0, 0, 0, 1, 0, 0, 0, 0])

    score = make_quality_scorer(val, labels, ["a", "b"], quick(quality_samples=4), classify=classify)(Fixed())
    assert seen == [(8, 3, 16, 16)] and score.accuracy == {"a": 0.75, "b": 0.0}


def test_a_grid_due_at_a_scored_step_is_drawn_from_the_scores_samples(tmp_path):
    from PIL import Image

    from ddpm_model.quality import QualityScore
    from ddpm_model.run import make_sample_writer

    config = quick(max_steps=4, quality_every=2, sample_every=4, samples_per_class=2, checkpoint_every=100)
    drawn = torch.linspace(-1, 1, 3 * SIZE * SIZE).reshape(1, 3, SIZE, SIZE).repeat(6, 1, 1, 1)
    drawn[3:] = -drawn[3:]  # class 1's samples are the negative of class 0's
    scored_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    parts, io = build(tmp_path, config)
    io.write_samples = make_sample_writer(tmp_path, ["a", "b"], config)
    io.score_quality = lambda model: QualityScore({"a": 0.5, "b": 0.5}, samples=drawn, labels=scored_labels)
    calls = []
    real_sample = parts.ema.module.sample
    parts.ema.module.sample = lambda *args, **kwargs: calls.append(1) or real_sample(*args, **kwargs)
    train(parts, io, config, 4, Distributed())
    assert calls == []  # the grid at step 4 sampled nothing of its own
    grid = np.asarray(Image.open(tmp_path / "samples" / "step-00000004.png").convert("L"), dtype=np.float64)
    assert grid.std() > 10  # the ramps, not a blank sheet
    assert io.write_samples(parts.ema.module, 5, QualityScore({"a": 0.5}, samples=drawn[:1],
                                                                labels=torch.tensor([0]))).is_file()
    assert calls == [1]  # too few scored samples of a class: the grid samples its own


def test_the_device_is_read_only_where_a_number_is_needed_and_the_logged_loss_is_the_mean(tmp_path, monkeypatch):
    from ddpm_model import train as train_module

    reads, losses = [], []
    original_read, original_add = train_module.StepTally.read, train_module.StepTally.add

    def read(self, dist, stop_requested):
        reads.append(int(self.step))
        return original_read(self, dist, stop_requested)

    def add(self, loss, grad_norm, bad):
        losses.append(float(loss))
        return original_add(self, loss, grad_norm, bad)

    monkeypatch.setattr(train_module.StepTally, "read", read)
    monkeypatch.setattr(train_module.StepTally, "add", add)
    config = quick(max_steps=10, log_every=5, val_every=100, checkpoint_every=100)
    parts, io = build(tmp_path, config)
    train(parts, io, config, 10, Distributed())
    assert reads == [5, 10]  # the two metrics lines (10 is also the end); no read in between
    logged = [row for row in io.metrics.read() if "loss" in row]
    assert [row["step"] for row in logged] == [5, 10]
    assert logged[0]["loss"] == pytest.approx(np.mean(losses[:5])) and logged[1]["loss"] == pytest.approx(np.mean(losses[5:]))
