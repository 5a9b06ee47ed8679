"""Command-line entry points: parse options, build a frozen config, call one function.

Four Typer apps back the console scripts ``ddpm-data``, ``ddpm-train``, ``ddpm-sample`` and
``ddpm-eval``. Heavy imports (torch, h5py, webdataset) happen inside the commands so that
``--help`` answers instantly. Every command is also a plain Python call in its module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

data_app = typer.Typer(
    help="Prepare image folders: synthesise sample data, build shards, inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
sample_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
eval_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@data_app.callback()
def data_main() -> None:
    """Prepare image folders: synthesise sample data, build shards, inspect them."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit with `code` (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------- ddpm-data synth (issue 2)


@data_app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create in ImageFolder layout (OUT/normal, OUT/abnormal).")],
    normal: Annotated[int, typer.Option(help="Number of normal images.")] = 437,
    abnormal: Annotated[int, typer.Option(help="Number of abnormal images (with lesions).")] = 85,
    size: Annotated[int, typer.Option(help="Image side in pixels (at least 16).")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it is not empty.")] = False,
    masks: Annotated[bool, typer.Option(help="Also write lesion masks under OUT/.masks/ (ignored by build).")] = True,
    sheet: Annotated[Optional[Path], typer.Option(help="Also write a contact sheet PNG of a few images per class.")] = None,
) -> None:
    """Write the bundled sample dataset: histology-like tiles, abnormal ones with soft-edged lesions."""
    from ddpm_data.synth import SynthConfig, SynthError, contact_sheet, synthesize

    config = SynthConfig(out=out, normal=normal, abnormal=abnormal, size=size, seed=seed, overwrite=overwrite, masks=masks)
    try:
        root = synthesize(config)
    except SynthError as error:
        fail(str(error))
    typer.echo(f"wrote {normal} normal + {abnormal} abnormal images ({size} px, seed {seed}) to {root}")
    if sheet is not None:
        typer.echo(f"contact sheet: {contact_sheet(root, sheet)}")


# ---------------------------------------------------------------- ddpm-data build/stats/verify (issue 3)


# ---------------------------------------------------------------- ddpm-data preview (issue 4)


# ---------------------------------------------------------------- ddpm-train / ddpm-sample (issue 6)


# ---------------------------------------------------------------- ddpm-eval (issue 7)


if __name__ == "__main__":  # pragma: no cover
    data_app()
