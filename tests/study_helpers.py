"""Test doubles for ddpm_study: console scripts that act out their contract on disk in milliseconds.

`FakeTools` stands in for `ddpm_study.tools.Subprocesses`. ddpm-train writes a run folder
(config.json, a checkpoint, summary.json), ddpm-sample writes PNGs of the shards' size per class,
ddpm-data build copies a real shard folder, and ddpm-eval answers either with a fixed JSON
document or, for the first `real_evals` calls, in-process through `cli.eval_app`. Every call is recorded.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_study.tools import ToolRun

CLASSES = ("abnormal", "normal")


def option(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


@dataclass
class Call:
    argv: list[str]
    launcher: tuple[str, ...]
    time_limit: float | None

    @property
    def tool(self) -> str:
        return self.argv[0] + ("-dry-run" if "--dry-run" in self.argv else "")


@dataclass
class FakeTools:
    shard_source: Path | None = None  # a real shard folder that `ddpm-data build` copies for every size
    stop_first_training: bool = False  # the first ddpm-train launch ends early, as after a pre-emption
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # tool -> (exit status, stderr line)
    real_evals: int = 0  # ddpm-eval calls answered by the real evaluator (in-process), before the fixed answer
    seconds: float = 1.0
    calls: list[Call] = field(default_factory=list)

    def tools(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.tool == name]

    def __call__(self, argv, *, launcher=(), time_limit=None, capture=False, quiet=False) -> ToolRun:
        call = Call([str(word) for word in argv], tuple(launcher), time_limit)
        self.calls.append(call)
        if call.tool in self.fail:
            status, line = self.fail[call.tool]
            return ToolRun(status, 0.1, None, (line,))
        handler = {"ddpm-data": self._build, "ddpm-train": self._train, "ddpm-train-dry-run": lambda argv: "{}",
                   "ddpm-sample": self._sample, "ddpm-eval": self._eval}[call.tool]
        stdout = handler(call.argv)
        stopped = time_limit is not None
        return ToolRun(0, time_limit if stopped else self.seconds, stdout if capture else None, (), stopped)

    def _build(self, argv):
        for size in option(argv, "--size").split(","):
            target = Path(option(argv, "--out").replace("{size}", size))
            shutil.copytree(self.shard_source, target)

    def _train(self, argv):
        run = Path(option(argv, "--out"))
        if "--overwrite" in argv:
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        size = Path(option(argv, "--shards")).name
        (run / "config.json").write_text(json.dumps({"run": {"argv": argv}, "size": int(size) if size.isdigit() else 16}))
        budget = int(option(argv, "--max-images", 10**6))
        images = budget // 2 if self.stop_first_training else budget
        status = "interrupted" if self.stop_first_training else "finished"
        self.stop_first_training = False
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / f"step-{images:08d}.pt").write_bytes(b"")
        (run / "summary.json").write_text(json.dumps({"status": status, "images_seen": images, "step": images}))

    def _sample(self, argv):
        out, n, seed = Path(option(argv, "--out")), int(option(argv, "--n")), int(option(argv, "--seed"))
        checkpoint = Path(option(argv, "--checkpoint"))
        run = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent  # RUN or RUN/checkpoints/step-*.pt
        size = json.loads((run / "config.json").read_text()).get("size", 16)
        rng = np.random.default_rng(seed)
        for name in CLASSES:
            (out / name).mkdir(parents=True, exist_ok=True)
            for index in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(out / name / f"{index:04d}.png")

    def _eval(self, argv):
        if self.real_evals > 0:
            self.real_evals -= 1
            from typer.testing import CliRunner

            import cli

            result = CliRunner().invoke(cli.eval_app, argv[1:])
            assert result.exit_code == 0, result.output
            return result.stdout
        n = sum(1 for _ in Path(option(argv, "--samples")).glob("*/*.png"))
        metrics = {"swd": 1.0 + 0.01 * n, "swd_levels": [0.5, 1.5], "spectrum_hf_ratio": 1.2, "edge_roughness": 15.0,
                   "edge_orientation_distance": 0.2, "frechet_classifier_distance": 10.0, "class_accuracy": 0.8,
                   "nn_ratio": 1.1, "jaggedness": 2.5, "jaggedness_se": 0.4, "n": n}
        return json.dumps({**metrics, "edge_roughness_real": 17.0, "warnings": [],
                           "reference": {"val_vs_train": {**metrics, "swd": 0.1, "n": 7}}})
