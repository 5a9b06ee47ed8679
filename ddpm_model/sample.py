"""`ddpm-sample`: images of one or more classes from a training checkpoint, one PNG each.

The checkpoint carries the model config and the class names, so nothing else is needed. The
EMA weights are used unless asked otherwise (they sample better; Ho et al. 2020, appendix B).
Writes ``OUT/<class>/0000.png ...``; the CLI adds a contact sheet per class next to the folders.
A class folder's old images are removed only once its new ones are generated, so an interrupted
or failed run leaves every class either as it was or complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from . import checkpoint as ckpt
from .config import SampleConfig
from .diffusion import DDPM, Sampler
from .runtime import pick_device


def read_checkpoint(path: str | Path, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    """(state, file) of a checkpoint file, or of a run folder's newest loadable checkpoint (step
    files, then best.pt); each damaged file passed over is logged."""
    path = Path(path)
    if not path.is_dir():
        file = ckpt.resolve_checkpoint(path)
        return ckpt.load_checkpoint(file), file
    loaded = ckpt.load_latest(ckpt.run_folder_of(path))
    for reason in loaded.skipped:
        log(f"warning: skipped {reason}")
    return loaded.state, loaded.path


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu",
               log: Callable[[str], None] = print) -> tuple[DDPM, list[str], Path]:
    """(model in eval mode, class names, checkpoint file) from a checkpoint file or run folder."""
    state, file = read_checkpoint(path, log)
    try:
        model = DDPM.from_dict(state["model_config"])
        weights = state["ema"]["module"] if ema and state.get("ema") else state["model"]
        model.load_state_dict(weights)
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        raise ckpt.CheckpointError(f"{file}: model does not match its saved config: {error}") from error
    return model.to(device).eval(), list(state["classes"]), file


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W) on the CPU."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def save_png(image: torch.Tensor, path: Path) -> None:
    """uint8 (C, H, W) -> PNG (mode L for one channel, RGB for three)."""
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path, format="PNG")


def resolve_classes(requested: tuple[str, ...], classes: list[str], source: Path) -> list[str]:
    unknown = [name for name in requested if name not in classes]
    if unknown:
        raise ValueError(f"--class: {', '.join(map(repr, unknown))} not in {source}; valid: {', '.join(classes)}")
    return list(requested) or list(classes)


def check_out(config: SampleConfig, names: list[str]) -> None:
    """Refuse to mix new samples into class folders that already hold files, unless --overwrite
    (then `write_class` removes the old PNGs, so an evaluation never sees two runs at once)."""
    if config.out.exists() and not config.out.is_dir():
        raise ValueError(f"--out {config.out}: is a file; choose a folder")
    full = [config.out / name for name in names if (config.out / name).is_dir() and any((config.out / name).iterdir())]
    if full and not config.overwrite:
        raise ValueError(f"--out {config.out}: {', '.join(str(f) for f in full)} already hold files; "
                         "pass --overwrite to replace them or choose another --out")


def write_class(folder: Path, images: torch.Tensor) -> list[Path]:
    """OUT/<class>/NNNN.png for uint8 (n, C, H, W), after removing the PNGs already there."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file() and path.suffix.lower() == ".png":
            path.unlink()
    paths = [folder / f"{index:04d}.png" for index in range(images.shape[0])]
    for image, path in zip(images, paths):
        save_png(image, path)
    return paths


def generate(model: DDPM, label: int, config: SampleConfig) -> torch.Tensor:
    """`config.n` images of `label`: uint8 (n, C, H, W). Seeded per class so adding classes or
    changing --n keeps the first images of every class the same batch-for-batch."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(config.seed * 1_000_003 + label)
    labels = torch.full((config.n,), label, dtype=torch.long)
    images = model.sample(labels, sampler=config.sampler.value, steps=config.steps, eta=config.eta,
                          guidance=config.guidance, generator=generator, batch_size=config.batch_size)
    if not torch.isfinite(images).all():  # a NaN would be written as a black image that looks like a sample
        raise ValueError(f"--guidance {config.guidance:g}: the samples came out not finite (NaN or inf), so nothing "
                         f"was written; use a guidance scale such as 1 to 10 (at a usual scale, the checkpoint's "
                         f"weights are broken: sample from another checkpoint)")
    return to_uint8(images)


def sample_to_folder(config: SampleConfig, log: Callable[[str], None] = print) -> dict[str, tuple[list[Path], torch.Tensor]]:
    """Write OUT/<class>/NNNN.png for each class; {class: (paths, uint8 (n, C, H, W))}."""
    model, classes, file = load_model(config.checkpoint, config.ema, pick_device(config.device), log)
    names = resolve_classes(config.classes, classes, file)
    check_out(config, names)
    generated = {name: generate(model, classes.index(name), config) for name in names}  # all, before any is written
    return {name: (write_class(config.out / name, images), images) for name, images in generated.items()}
