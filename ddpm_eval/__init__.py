"""Offline sample-quality measurement: SWD, spectrum and edge smoothness, class fidelity, memorisation.

`evaluate(EvalConfig(real=shard_dir, samples=sample_dir)) -> dict`; see docs/evaluation.md.
"""
from ddpm_eval.evaluate import EvalConfig, evaluate

__all__ = ["EvalConfig", "evaluate"]
