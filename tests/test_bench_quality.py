"""The pure helpers of bench/quality.py (the bench itself trains for minutes; it is not run here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
spec = importlib.util.spec_from_file_location("bench_quality", PATH)
quality = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = quality  # dataclasses look their module up while the file runs
spec.loader.exec_module(quality)


@pytest.mark.parametrize("total, points, every", [(1000, 4, 250), (500, 4, 125), (1001, 4, 250), (3, 4, 1)])
def test_checkpoint_every_spreads_points_over_the_run(total, points, every):
    assert quality.checkpoint_every(total, points) == every
    saved = set(range(every, total + 1, every)) | {total}  # the trainer also saves the last step
    assert len(saved) >= min(points, total)


def test_checkpoint_every_rejects_nonsense():
    with pytest.raises(ValueError, match="--checkpoints 0"):
        quality.checkpoint_every(1000, 0)


def test_class_mean_colour_is_unweighted_over_classes():
    images = np.zeros((4, 3, 2, 2), dtype=np.uint8)
    images[:3] = 255  # three white images of class 0, one black image of class 1
    labels = np.array([0, 0, 0, 1])
    assert quality.class_mean_colour(images, labels) == [0.5, 0.5, 0.5]


def test_class_mean_colour_per_channel():
    images = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    images[:, 0] = 255
    images[:, 2] = 51
    assert quality.class_mean_colour(images, np.array([1, 1])) == [1.0, 0.0, 0.2]


def test_class_mean_colour_checks_shapes():
    with pytest.raises(ValueError, match="need"):
        quality.class_mean_colour(np.zeros((2, 3, 4), dtype=np.uint8), np.array([0, 1]))


def test_excess_ratio_measures_distance_above_the_floor():
    assert quality.excess_ratio(baseline=2.1, ours=0.6, floor=0.1) == pytest.approx(4.0)
    assert quality.excess_ratio(baseline=0.6, ours=0.6, floor=0.1) == pytest.approx(1.0)
    assert quality.excess_ratio(baseline=1.0, ours=0.1, floor=0.1) > 1e6  # ours at the floor


def test_headline_reads_the_eval_json():
    result = {"swd": 1.5, "frechet_classifier_distance": 30.0, "class_accuracy": 0.75, "spectrum_hf_ratio": 0.5,
              "copies": 0, "nn_ratio": 1.1, "swd_levels": [1.0, 2.0],
              "reference": {"val_vs_train": {"swd": 0.08, "frechet_classifier_distance": 1.0}}}
    figures = quality.headline(result)
    assert figures["swd"] == 1.5 and figures["swd_floor"] == 0.08 and figures["fcd_floor"] == 1.0
    assert set(quality.METRICS) <= set(figures)


def test_settings_key_is_stable_and_sensitive():
    assert quality.settings_key(16000, ("--lr", "1e-3")) == quality.settings_key(16000, ("--lr", "1e-3"))
    assert quality.settings_key(16000, ("--lr", "1e-3")) != quality.settings_key(16000, ("--lr", "2e-3"))


def test_min_snr_weight_closed_forms():
    alpha_bar = torch.tensor([0.99, 0.5, 0.01], dtype=torch.float64)
    snr = alpha_bar / (1 - alpha_bar)  # 99, 1, 1/99
    eps = quality.min_snr_weight(alpha_bar, 5.0, "eps")
    torch.testing.assert_close(eps, torch.stack([5 / snr[0], torch.tensor(1.0, dtype=torch.float64),
                                                 torch.tensor(1.0, dtype=torch.float64)]))
    v = quality.min_snr_weight(alpha_bar, 5.0, "v")
    torch.testing.assert_close(v, torch.stack([5 / (snr[0] + 1), snr[1] / (snr[1] + 1), snr[2] / (snr[2] + 1)]))


def test_curve_points_pick_evenly_spaced_checkpoints():
    files = [Path(f"step-{step:08d}.pt") for step in (125, 250, 375, 500)]
    assert [p.name for p in quality.curve_points(files, 500, 4)] == [f.name for f in files]
    assert [p.name for p in quality.curve_points(files, 500, 2)] == ["step-00000250.pt", "step-00000500.pt"]
    assert [p.name for p in quality.curve_points(files, 500, 1)] == ["step-00000500.pt"]


def figures(swd: float, fcd: float, floor: float = 0.1) -> dict:
    return {"swd": swd, "frechet_classifier_distance": fcd, "swd_floor": floor, "fcd_floor": 1.0,
            "class_accuracy": 0.9, "spectrum_hf_ratio": 1.0, "copies": 0, "nn_ratio": 1.0, "mean_colour": [0.5] * 3}


def test_the_tuned_baseline_is_the_best_of_its_sweep():
    sweep = [{**figures(0.9, 5.0), "lr": 5e-4}, {**figures(0.7, 6.0), "lr": 1e-3}, {**figures(1.2, 4.0), "lr": 2e-3}]
    assert quality.best_run(sweep)["lr"] == 1e-3
    with pytest.raises(ValueError, match="no runs"):
        quality.best_run([])


def test_ours_is_compared_with_the_better_baseline():
    ours = figures(0.3, 2.0)
    example, tuned = figures(2.1, 40.0), figures(0.9, 5.0)
    assert quality.compare(ours, {"example recipe": example, "tuned": tuned}) == {
        "against": "tuned", "ratio": 4.0, "frechet_ratio": 2.5}  # (0.9 - 0.1) / (0.3 - 0.1); 5 / 2
    assert quality.compare(ours, {"example recipe": example})["ratio"] == pytest.approx(10.0)


def test_each_twin_is_compared_with_ours_separately():
    ours = figures(0.3, 2.0)
    baselines = {"tuned": figures(0.9, 5.0), "monai tuned": figures(0.5, 8.0)}
    assert quality.compare_each(ours, baselines) == {"tuned": {"ratio": 4.0, "frechet_ratio": 2.5},
                                                     "monai tuned": {"ratio": 2.0, "frechet_ratio": 4.0}}
    assert quality.compare(ours, baselines)["against"] == "monai tuned"  # the better of all twins (lower SWD)


def test_tuned_recipe_takes_our_learning_rate_warmup_and_ema():
    from ddpm_model.config import TrainConfig

    recipe = quality.tuned_recipe(TrainConfig(lr=1e-3, warmup_steps=50, ema_decay=0.999), 2.0)
    assert recipe["lr"] == 2e-3 and recipe["warmup_steps"] == 50 and recipe["ema_max_decay"] == 0.999
    assert recipe["prediction_type"] == "v_prediction" and recipe["ema_warmup"] is False
    assert recipe["lr_schedule"] == "constant_with_warmup"
    assert "prediction_type" not in quality.BASELINE_RECIPE  # the example recipe (and its cached runs) unchanged


def test_report_prints_both_baselines_and_the_ratio_against_the_better(capsys):
    ours = figures(0.3, 2.0)
    tuned = {**figures(0.9, 5.0), "sweep": [{"lr": 5e-4, "swd": 0.9, "frechet_classifier_distance": 5.0},
                                            {"lr": 1e-3, "swd": 1.1, "frechet_classifier_distance": 6.0}]}
    baselines = {"example recipe": figures(2.1, 40.0), "tuned": tuned}
    curve = [{"step": 1000, "images": 16000, "swd": 0.3, "n": 64}]
    quality.print_table(ours, baselines, [0.5] * 3, curve)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "ours" in line)
    assert "example recipe" in header and "tuned" in header
    assert "lr 5.0e-04 swd 0.900, lr 1.0e-03 swd 1.100" in out
    assert "against the better baseline (tuned): excess SWD ratio 4.00" in out and "Fréchet ratio 2.50" in out
    config = quality.QualityConfig()
    result = quality.result_json(config, [0.5] * 3, ours, curve, baselines, {"start": [1.0], "end": [1.0]})
    assert result["baseline"]["swd"] == 2.1 and result["baseline_tuned"]["swd"] == 0.9
    assert (result["against"], result["ratio"], result["frechet_ratio"]) == ("tuned", 4.0, 2.5)
    assert result["baseline_monai"] is None and set(result["ratios"]) == {"example recipe", "tuned"}
    assert "ratio" not in quality.result_json(config, [0.5] * 3, ours, curve, {}, {})  # --no-baseline
    quality.print_table(ours, {}, [0.5] * 3, curve)
    assert "against" not in capsys.readouterr().out


def test_samplers_parse_as_sampler_and_steps():
    assert quality.parse_samplers("ddim:50, dpmpp-2m:25") == (("ddim", 50), ("dpmpp-2m", 25))
    assert quality.parse_samplers("") == ()
    for bad in ("ddim", "ddim:0", "ddpm:50", "heun:10", "ddim:x"):
        with pytest.raises(ValueError, match="sampler:steps"):
            quality.parse_samplers(bad)


def test_samplers_are_compared_with_the_first(capsys):
    rows = [{"sampler": "ddim", "steps": 50, "nfe": 50, **figures(0.3, 2.0)},
            {"sampler": "dpmpp-2m", "steps": 25, "nfe": 25, **figures(0.2, 1.5), "sample_seconds": 12.0}]
    compared = quality.compare_samplers(rows)
    assert [row["nfe_ratio"] for row in compared] == [1.0, 0.5]
    assert [row["excess_ratio"] for row in compared] == [1.0, 2.0]  # (0.3 - 0.1) / (0.2 - 0.1)
    assert quality.compare_samplers([]) == []
    quality.print_samplers(compared)
    out = capsys.readouterr().out
    assert "against ddim 50 steps" in out and "dpmpp-2m" in out


def test_the_baseline_samples_with_diffusers_scheduler_for_our_sampler():
    pytest.importorskip("diffusers")
    from ddpm_model.config import TrainConfig

    recipe = quality.tuned_recipe(TrainConfig(lr=1e-3), 1.0)
    ddim = quality.baseline_scheduler(recipe, "ddim", 50)
    solver = quality.baseline_scheduler(recipe, "dpmpp-2m", 25)
    assert type(ddim).__name__ == "DDIMScheduler" and len(ddim.timesteps) == 50
    assert type(solver).__name__ == "DPMSolverMultistepScheduler" and len(solver.timesteps) == 25
    assert solver.config.algorithm_type == "dpmsolver++" and solver.config.solver_order == 2
    assert solver.config.prediction_type == "v_prediction"
    assert ddim.config.clip_sample and solver.config.thresholding and solver.config.sample_max_value == 1.0  # x_0 clipped as ours
    x0 = torch.tensor([[[[3.0, -2.0], [0.5, -0.25]]]])
    torch.testing.assert_close(solver._threshold_sample(x0), x0.clamp(-1, 1))  # thresholding at 1 is the clip
    with pytest.raises(ValueError, match="ddim or dpmpp-2m"):
        quality.baseline_scheduler(recipe, "ddpm", 10)


def test_the_monai_twin_has_a_side_of_its_own(capsys):
    ours, tuned = figures(0.3, 2.0), figures(0.9, 5.0)
    monai = {**figures(0.5, 8.0), "sweep": [{"lr": 1e-3, "swd": 0.5, "frechet_classifier_distance": 8.0}]}
    baselines = {"tuned": tuned, "monai tuned": monai}
    quality.print_table(ours, baselines, [0.5] * 3, [{"step": 4, "images": 64, "swd": 0.3, "n": 4}])
    out = capsys.readouterr().out
    assert "monai tuned" in next(line for line in out.splitlines() if "ours" in line)
    assert "monai tuned baseline's lr sweep: lr 1.0e-03 swd 0.500" in out
    assert "against tuned: excess SWD ratio 4.00, Fréchet ratio 2.50" in out
    assert "against monai tuned: excess SWD ratio 2.00, Fréchet ratio 4.00" in out
    assert "against the better baseline (monai tuned)" in out
    result = quality.result_json(quality.QualityConfig(), [0.5] * 3, ours, [], baselines, {})
    assert result["baseline_monai"]["swd"] == 0.5 and result["baseline_tuned"]["swd"] == 0.9
    assert result["ratios"]["monai tuned"] == {"ratio": 2.0, "frechet_ratio": 4.0}


def test_twins_parse_as_a_subset_of_the_libraries():
    assert quality.QualityConfig().twins == ("diffusers", "monai")
    assert quality.parse_twins("monai") == ("monai",)
    assert quality.parse_twins(" monai, diffusers,monai ") == ("monai", "diffusers")
    for bad in ("", "monai,torch", "MONAI", "diffusers;monai"):
        with pytest.raises(ValueError, match="--twins .*diffusers, monai"):
            quality.parse_twins(bad)


def test_a_missing_twin_library_names_the_flag_and_the_fix(monkeypatch):
    absent = {"monai", "einops"}  # and diffusers installed, whatever this machine has
    monkeypatch.setattr(quality.importlib.util, "find_spec", lambda name: None if name in absent else object())
    config = quality.QualityConfig(twins=("diffusers", "monai"))
    message = quality.missing_libraries(config)
    assert message == "monai and einops not installed (needed by --twins monai): pip install -e '.[bench]'"
    assert quality.missing_libraries(quality.QualityConfig(twins=("diffusers",))) is None
    assert quality.missing_libraries(quality.QualityConfig(tuned_lr_factors=())) is None  # no tuned twin
    assert quality.missing_libraries(quality.QualityConfig(baseline=False)) is None


def small_model_config() -> dict:
    """Our UNetConfig as the bench reads it (the resolved plan's model.unet), small enough for a test."""
    from ddpm_model.unet import UNetConfig

    return UNetConfig(image_size=16, model_channels=16, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                      use_attention=(False, True, True), norm_groups=8, attention_head_channels=16,
                      aug_dim=9).to_dict()


def test_the_monai_twin_is_built_in_our_layout():
    pytest.importorskip("monai")
    pytest.importorskip("einops")
    from ddpm_model.unet import UNet, UNetConfig

    model_config = small_model_config()
    torch.manual_seed(0)
    twin = quality.MonaiTwin(model_config)
    kinds = [type(block).__name__ for block in twin.net.down_blocks]
    assert kinds == ["DownBlock", "AttnDownBlock", "AttnDownBlock"]  # attention where use_attention is true
    assert [type(block).__name__ for block in twin.net.up_blocks] == ["AttnUpBlock", "AttnUpBlock", "UpBlock"]
    assert tuple(twin.net.block_out_channels) == (16, 32, 32)
    assert [len(block.resnets) for block in twin.net.up_blocks] == [2, 2, 2]  # one more per up stage, as ours
    assert twin.net.class_embedding.num_embeddings == model_config["num_classes"] + 1  # the null class
    ours = sum(p.numel() for p in UNet(UNetConfig(**model_config)).parameters())
    params = sum(p.numel() for p in twin.parameters())
    assert abs(params - ours) / ours <= quality.MAX_PARAMETERS_APART


@pytest.mark.parametrize("library", ["diffusers", "monai"])
@pytest.mark.parametrize("timesteps", ["per image", "one for the batch"])
def test_a_twin_maps_x_t_labels_to_a_prediction_of_x_shape(library, timesteps):
    for module in quality.TWINS[library].requires:
        pytest.importorskip(module)
    model_config = small_model_config()
    torch.manual_seed(0)
    twin = quality.TWINS[library](model_config).eval()
    x = torch.randn(3, model_config["in_channels"], 16, 16)
    t = torch.tensor([10, 500, 999]) if timesteps == "per image" else torch.tensor(500)  # sampling passes one
    null = model_config["num_classes"]
    with torch.no_grad():
        out = twin(x, t, torch.tensor([0, 1, null]))
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and torch.isfinite(out).all()
