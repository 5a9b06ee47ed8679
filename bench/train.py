"""Training throughput of `ddpm-train` against the bare training step of its U-Net and of
diffusers' `UNet2DModel` twin, side by side in one run, at each size.

    python bench/train.py                            # 32 and 96 px, tiny preset, one thread (~4 min)
    python bench/train.py --sizes 32 --steps 3       # a quick look
    python bench/train.py --preset 96 --sizes 96 --batch-size 2

Per size, on the bundled sample data (`ddpm-data synth`, then `ddpm-data build` at every size,
both cached in `--work`):
- trainer: the real `ddpm-train` (cli.py's app, in a subprocess) on the CPU with `--preset`, the
  default recipe and the trainer's default batch size for the preset (or `--batch-size`), for
  1 + `--warmup` + `--steps` optimizer steps. Its metrics line every step (`--log-every 1`) holds
  `img_per_s`: the images of that step over the wall time since the previous line
  (ddpm_model.train.maybe_log), i.e. everything the loop does per step: batch read, augmentation,
  forward, loss, backward, clipping, AdamW, EMA, the line itself. The first 1 + `--warmup` lines
  are dropped (the first also holds the start-up); steady img/s = 1 / median of the others'
  seconds per image. Validation, checkpoints, quality score and sample grids are pushed past the
  last step; the validation, checkpoint and grid the run still does once at the end come after
  its last metrics line (and are made small), so only steps count.
- ours: our U-Net built from the trainer's own resolved model (config.json of its run folder:
  preset, size, dropout, upsampling, augmentation input; the input is built but not fed) and the
  trainer's batch size, doing forward + MSE loss + backward + AdamW on a fixed batch: bench/unet.py's
  step (`make_step`), in each memory format. This process keeps freed host memory for reuse as
  ddpm-train does on the CPU (ddpm_model/host_memory.py), so the two sides allocate alike.
- twin: diffusers' `UNet2DModel` in the same layout (bench/unet.py's `diffusers_unet`), same step.
The two bare steps take turns, one step each, after a warm-up, and the median per (model, memory
format) counts, each model in its faster format, as bench/unet.py does; the trainer runs before
them (it cannot be interleaved with them), so the load average is printed at the start and the end.

Ratios: ours_over_twin = ours / twin, each in its faster format (goal >= 1.0), trainer_over_ours =
trainer / our bare step in the format the trainer trains in (contiguous on the CPU; goal >= 0.95:
the loop costs at most 5 % over the bare step). `--threads` (default 1) is the
torch thread count of this process and OMP_NUM_THREADS of the trainer, so a second core busy
with something else does not distort a ratio. The last line is JSON: every figure per size, the
torch version, the thread count and the load averages at start and end.

Fixed costs (`--fixed-cost-steps`, default 100; 0 = skip): `ddpm-train` with every default
(validation, checkpoints, quality score, grids, the preset's batch size) for that many steps at
the largest size; its wall time, start-up to exit, over its steps' time (from its metrics lines),
goal <= 1.25: what a short run pays beyond its steps.

Expected time with the defaults, one thread of the 2-core development machine: about 4 min for
the throughputs, most of it the 96 px bare steps (4 model/format pairs x 7 steps x ~4.5 s at batch
16), plus about 6 min for the fixed-cost run at 96 px, plus about half a minute the first time for
the sample data. CPU only. diffusers is a benchmark-only
dependency (`pip install -e .[bench]`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import cli, run  # noqa: E402
from bench.unet import (  # noqa: E402
    FORMATS, NUM_CLASSES, BenchConfig, best_formats, count_parameters, diffusers_unet, median_step_seconds, ours,
)
from ddpm_model.host_memory import keep_freed_host_memory  # noqa: E402
from ddpm_model.presets import PRESETS  # noqa: E402
from ddpm_model.unet import UNetConfig  # noqa: E402

GOALS = {"ours_over_twin": 1.0, "trainer_over_ours": 0.95}  # ratio -> the least it should be
FIXED_COST_GOAL = 1.25  # a default run's wall time over its steps' time: the most it should be
END_VAL_IMAGES = 4  # the one validation the trainer runs after its last step, kept small
LAYOUT_FIELDS = ("model_channels", "channel_multipliers", "num_res_blocks", "use_attention", "norm_groups",
                 "attention_head_channels", "in_channels")
DEVICE = torch.device("cpu")
TRAINER_FORMAT = "contiguous"  # the memory format ddpm-train trains in on the CPU (channels_last on CUDA; run.py)


@dataclass(frozen=True)
class TrainBenchConfig:
    work: Path = ROOT / "runs" / "bench-train"  # sample data, shards, the trainer's run folders
    sizes: tuple[int, ...] = (32, 96)           # px; shards are built at each
    preset: str = "tiny"                        # the trainer's --preset; the twin takes its layout
    batch_size: int | None = None               # None: the trainer's default for the preset and size
    steps: int = 5                              # timed steps per side (trainer: logged steps)
    warmup: int = 1                             # untimed steps per side after the first
    threads: int = 1                            # torch threads here, OMP_NUM_THREADS of the trainer
    seed: int = 0
    fixed_cost_steps: int = 100                 # a run with every default for this many steps, at the largest size; 0 = none

    def trainer_steps(self) -> int:
        """The trainer's --max-steps: the first step, the warm-up, the timed steps."""
        return 1 + self.warmup + self.steps


# ---------------------------------------------------------------- pure helpers


def parse_sizes(text: str, preset: str) -> tuple[int, ...]:
    """`--sizes` "32,96" -> (32, 96); each a positive multiple of the preset's 2^(stages-1)."""
    halvings = 2 ** (len(PRESETS[preset].channel_multipliers) - 1)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--sizes {text!r}: give positive sizes in px, comma-separated, e.g. 32,96")
    sizes = tuple(int(part) for part in parts)
    bad = [size for size in sizes if size % halvings]
    if bad:
        raise ValueError(f"--sizes {text!r}: {', '.join(map(str, bad))} not a multiple of {halvings} "
                         f"(the {preset} preset's stages); use multiples of {halvings}, e.g. 32,96")
    return sizes


def trainer_args(config: TrainBenchConfig, shards: Path, run_dir: Path) -> list[str]:
    """`ddpm-train` flags: the default recipe on the CPU for `trainer_steps()` steps, a metrics line
    every step, everything else pushed past the run or made small (it runs once after the last line)."""
    total = config.trainer_steps()
    past = str(total + 1)
    args = ["--shards", str(shards), "--out", str(run_dir), "--overwrite", "--no-progress", "--device", "cpu",
            "--preset", config.preset, "--seed", str(config.seed), "--max-steps", str(total), "--log-every", "1",
            "--val-every", past, "--checkpoint-every", past, "--quality-every", "0",
            "--sample-every", "0", "--samples-per-class", "1", "--sample-steps", "1",
            "--val-images", str(END_VAL_IMAGES)]
    if config.batch_size is not None:
        args += ["--batch-size", str(config.batch_size)]
    return args


def steady_figures(records: Sequence[dict[str, Any]], skip: int) -> dict[str, Any]:
    """The trainer's steady state from its metrics.jsonl records: training lines (those with
    `img_per_s`) past step `skip`; img_s = 1 / median seconds per image, data_wait its median."""
    lines = [record for record in records if "img_per_s" in record and record["step"] > skip]
    if not lines:
        logged = max((record["step"] for record in records if "img_per_s" in record), default=0)
        raise ValueError(f"the trainer logged no step after step {skip} (last logged: {logged}); "
                         f"raise --steps or check the trainer's log")
    seconds_per_image = statistics.median(1 / record["img_per_s"] for record in lines)
    return {"img_s": 1 / seconds_per_image, "steps": len(lines),
            "data_wait": statistics.median(record["data_wait"] for record in lines)}


def fixed_cost_args(config: TrainBenchConfig, shards: Path, run_dir: Path) -> list[str]:
    """`ddpm-train` with every default (validation, checkpoints, quality score, grids, batch size) but
    the device, the preset, the seed and `fixed_cost_steps` steps."""
    return ["--shards", str(shards), "--out", str(run_dir), "--overwrite", "--no-progress", "--device", "cpu",
            "--preset", config.preset, "--seed", str(config.seed), "--max-steps", str(config.fixed_cost_steps)]


def steps_seconds(records: Sequence[dict[str, Any]]) -> float:
    """The trainer's time in its steps, from its metrics lines: each line's images since the one
    before over its `img_per_s` (the line's interval holds the steps, the read-back and the line)."""
    total, before = 0.0, 0
    for record in (record for record in records if "img_per_s" in record):
        total += (record["images"] - before) / record["img_per_s"]
        before = record["images"]
    if total <= 0:
        raise ValueError("the trainer logged no step; check its log")
    return total


def ratios(trainer_img_s: float, ours_img_s: float, twin_img_s: float, ours_trainer_format_img_s: float) -> dict[str, float]:
    """The bench's two ratios (names as in GOALS): ours against the twin, each in its faster memory
    format; the trainer against our bare step in the format the trainer itself uses."""
    if min(trainer_img_s, ours_img_s, twin_img_s, ours_trainer_format_img_s) <= 0:
        raise ValueError(f"throughputs must be > 0: trainer {trainer_img_s}, ours {ours_img_s}, twin {twin_img_s}")
    return {"ours_over_twin": ours_img_s / twin_img_s, "trainer_over_ours": trainer_img_s / ours_trainer_format_img_s}


def verdicts(values: dict[str, float]) -> dict[str, bool]:
    """Whether each ratio meets its goal."""
    return {name: values[name] >= goal for name, goal in GOALS.items()}


def layout_mismatch(resolved: UNetConfig, preset: UNetConfig) -> list[str]:
    """The layout fields where the trainer's resolved U-Net differs from the preset the twin is
    built from (empty: the twin matches)."""
    differ = [name for name in LAYOUT_FIELDS if getattr(resolved, name) != getattr(preset, name)]
    if resolved.num_classes != NUM_CLASSES:
        differ.append("num_classes")
    return differ


def format_table(row: dict[str, Any]) -> str:
    """One size's three throughputs and two ratios, as printed."""
    def verdict(name: str) -> str:
        return f"(goal >= {GOALS[name]:g}: {'met' if row['meets'][name] else 'not met'})"

    return "\n".join([
        f"{row['size']} px, preset {row['preset']}, batch {row['batch_size']}:",
        f"  ddpm-train, steady      {row['trainer_img_s']:9.2f} img/s  (median of {row['trainer_steps']} logged steps, "
        f"data wait {row['trainer_data_wait']:.1%})",
        f"  ours, bare step         {row['ours_img_s']:9.2f} img/s  ({row['ours_format']})",
        f"  diffusers twin, bare    {row['twin_img_s']:9.2f} img/s  ({row['twin_format']})",
        f"  ours_step / twin_step   {row['ours_over_twin']:9.3f}        {verdict('ours_over_twin')}",
        f"  trainer / ours_step     {row['trainer_over_ours']:9.3f}        {verdict('trainer_over_ours')} "
        f"(our step in the trainer's {TRAINER_FORMAT} format)",
    ])


# ---------------------------------------------------------------- the three sides


def prepare_shards(config: TrainBenchConfig) -> dict[int, Path]:
    """{size: shard folder}: the sample data built at every size, reused when present."""
    data, shards = config.work / "data", config.work / "shards"
    if not (data / "normal").is_dir():
        print(f"sample data -> {data}", flush=True)
        run(cli("data", "synth", str(data), "--overwrite", "--no-masks"), config.threads)
    missing = [size for size in config.sizes if not (shards / str(size) / "manifest.json").is_file()]
    if missing:
        print(f"shards at {', '.join(map(str, missing))} px -> {shards}", flush=True)
        workers = 0 if config.threads == 1 else config.threads  # 0: decode in-process, one core
        run(cli("data", "build", "--src", str(data), "--size", ",".join(map(str, missing)),
                "--out", str(shards / "{size}"), "--workers", str(workers), "--overwrite"), config.threads)
    return {size: shards / str(size) for size in config.sizes}


def run_trainer(config: TrainBenchConfig, size: int, shards: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(steady figures, the run's config.json) of one `ddpm-train` run."""
    from ddpm_model.metrics import MetricsLog

    run_dir = config.work / "runs" / f"train-{size}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{size} px: ddpm-train, {config.trainer_steps()} steps -> {run_dir}", flush=True)
    run(cli("train", *trainer_args(config, shards, run_dir)), config.threads, log=run_dir.with_suffix(".log"))
    document = json.loads((run_dir / "config.json").read_text())
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    try:
        return steady_figures(records, skip=1 + config.warmup), document
    except ValueError as error:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: {error}") from None


def bare_steps(config: TrainBenchConfig, size: int, unet: UNetConfig, batch_size: int) -> dict[str, Any]:
    """Ours (the trainer's resolved U-Net) and the twin, interleaved, as bench/unet.py measures them."""
    bench = BenchConfig(size=size, batch_size=batch_size, steps=config.steps, warmup=config.warmup,
                        device=DEVICE.type, dtype="float32", dropout=unet.dropout, upsample=unet.upsample.value,
                        preset=config.preset, seed=config.seed)
    builders = {"ours": functools.partial(ours, unet_config=unet), "diffusers": diffusers_unet}
    print(f"{size} px: bare steps, {len(builders) * len(FORMATS)} model/format pairs, "
          f"{1 + config.warmup + config.steps} steps each", flush=True)
    medians = median_step_seconds(builders, bench, DEVICE)
    best = best_formats(medians, batch_size)
    return {
        "ours_img_s": best["ours"][0], "ours_format": best["ours"][1],
        "twin_img_s": best["diffusers"][0], "twin_format": best["diffusers"][1],
        "ours_img_s_by_format": {fmt: round(batch_size / medians["ours", fmt], 3) for fmt in FORMATS},
        "twin_img_s_by_format": {fmt: round(batch_size / medians["diffusers", fmt], 3) for fmt in FORMATS},
        "params_ours": count_parameters(ours(bench, unet)), "params_twin": count_parameters(diffusers_unet(bench)),
    }


def fixed_cost(config: TrainBenchConfig, size: int, shards: Path) -> dict[str, Any]:
    """A default run of `fixed_cost_steps` steps: its wall time (the process, start-up to exit) over its
    steps' time; start-up, validation, the end's grid and checkpoint are the rest."""
    from ddpm_model.metrics import MetricsLog

    run_dir = config.work / "runs" / f"defaults-{size}"
    print(f"{size} px: ddpm-train with its defaults, {config.fixed_cost_steps} steps -> {run_dir}", flush=True)
    started = time.perf_counter()
    run(cli("train", *fixed_cost_args(config, shards, run_dir)), config.threads, log=run_dir.with_suffix(".log"))
    wall = time.perf_counter() - started
    steps = steps_seconds(MetricsLog(run_dir / "metrics.jsonl").read())
    return {"size": size, "steps": config.fixed_cost_steps, "wall_s": wall, "steps_s": steps,
            "wall_over_steps": wall / steps, "meets": wall / steps <= FIXED_COST_GOAL}


def bench_size(config: TrainBenchConfig, size: int, shards: Path) -> dict[str, Any]:
    """Every figure of one size."""
    from ddpm_model.diffusion import configs_from_dict

    steady, document = run_trainer(config, size, shards)
    unet = configs_from_dict(document["model"])[0]
    differ = layout_mismatch(unet, PRESETS[config.preset])
    if differ:
        raise SystemExit(f"--preset {config.preset}: the trainer's model differs from the preset's layout in "
                         f"{', '.join(differ)}, so the twin would not match; use shards of {NUM_CLASSES} "
                         f"classes and 3 channels (the bundled sample data)")
    batch_size = document["run"]["train"]["batch_size"]
    bare = bare_steps(config, size, unet, batch_size)
    values = ratios(steady["img_s"], bare["ours_img_s"], bare["twin_img_s"],
                    bare["ours_img_s_by_format"][TRAINER_FORMAT])
    return {"size": size, "preset": config.preset, "batch_size": batch_size,
            "trainer_img_s": steady["img_s"], "trainer_steps": steady["steps"],
            "trainer_data_wait": steady["data_wait"], "params_trainer": document["parameters"],
            **bare, **values, "meets": verdicts(values)}


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> TrainBenchConfig:
    defaults = TrainBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, defaults.sizes)), help="image sizes, px, e.g. 32,96")
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS),
                        help="the trainer's --preset; ours is what it resolves, the twin takes its layout")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="images per step on every side [default: the trainer's for the preset and size]")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="timed steps per side (the trainer's logged steps; per model and format)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps per side after the first")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch threads here and OMP_NUM_THREADS of the trainer")
    parser.add_argument("--work", type=Path, default=defaults.work,
                        help="folder for the sample data, shards (reused) and the trainer's runs")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fixed-cost-steps", type=int, default=defaults.fixed_cost_steps,
                        help="also run ddpm-train with every default for this many steps at the largest size and "
                             "print its wall time over its steps' time (0 = skip)")
    args = parser.parse_args(argv)
    minimums = {"--steps": (args.steps, 1), "--warmup": (args.warmup, 0), "--threads": (args.threads, 1),
                "--fixed-cost-steps": (args.fixed_cost_steps, 0)}
    for flag, (value, least) in minimums.items():
        if value < least:
            parser.error(f"{flag} {value}: must be >= {least}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be >= 1, or leave it out for the trainer's default")
    try:
        sizes = parse_sizes(args.sizes, args.preset)
    except ValueError as error:
        parser.error(str(error))
    return TrainBenchConfig(work=args.work.resolve(), sizes=sizes, preset=args.preset, batch_size=args.batch_size,
                            steps=args.steps, warmup=args.warmup, threads=args.threads, seed=args.seed,
                            fixed_cost_steps=args.fixed_cost_steps)


def main() -> None:
    config = parse_args()
    torch.set_num_threads(config.threads)
    host_memory = keep_freed_host_memory()  # as ddpm-train does on the CPU, so both bare steps match it
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {config.threads} thread(s) per side, load average "
          f"{load_start[0]:.2f} at start; {host_memory}", flush=True)
    shards = prepare_shards(config)
    rows = []
    for size in config.sizes:
        row = bench_size(config, size, shards[size])
        print(format_table(row), flush=True)
        rows.append(row)
    fixed = None
    if config.fixed_cost_steps:
        size = max(config.sizes)
        fixed = fixed_cost(config, size, shards[size])
        print(f"{size} px, {config.fixed_cost_steps} steps with every default: {fixed['wall_s']:.1f} s in all, "
              f"{fixed['steps_s']:.1f} s of steps, ratio {fixed['wall_over_steps']:.3f} "
              f"(goal <= {FIXED_COST_GOAL:g}: {'met' if fixed['meets'] else 'not met'})", flush=True)
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    print(json.dumps({
        "torch": torch.__version__, "threads": config.threads, "device": DEVICE.type,
        "steps": config.steps, "warmup": config.warmup, "goals": GOALS,
        "load_start": [round(value, 2) for value in load_start], "load_end": [round(value, 2) for value in load_end],
        "sizes": [rounded(row) for row in rows], "fixed_cost": rounded(fixed) if fixed else None,
        "config": {key: str(value) if isinstance(value, Path) else value
                   for key, value in dataclasses.asdict(config).items()},
    }))


if __name__ == "__main__":
    main()
