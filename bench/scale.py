"""How the data pipeline scales with the number of images, at N = 2k and 20k (more on request).

For each N, on N generated distinct PNGs (a cheap procedural pattern, not the slow synth):
- build: `ddpm-data build --size 32` wall seconds per image, and peak memory: PSS summed over the
  process tree (the CLI process and its pool workers), sampled from /proc/*/smaps_rollup;
- stream: peak PSS of a process drawing `--batches` batches of 32 in stream mode with 2 workers;
- first step: seconds from starting `ddpm-train --mode stream` (tiny model) to its first metrics line;
- draw: microseconds per memory-mode batch (`MemoryReader.__next__`), and per `ClassSequence.take`
  of 8 draws against the baseline, the previous `take` that copied the rest of the class's order
  on every call, at N and at 400k / 2M rows of one class.
Goals (largest N against the smallest, 10x the images): build and stream peak memory < 1.2x,
time to first step < 1.2x, draw cost flat. Prints the load average; the last line is JSON.

    python bench/scale.py [--sizes 2000,20000] [--workers 2] [--batches 300] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_FLAGS = ["--preset", "tiny", "--model-channels", "8", "--channel-multipliers", "1,2", "--use-attention", "0,0",
               "--num-timesteps", "100", "--batch-size", "8", "--max-steps", "100000", "--log-every", "1",
               "--val-every", "100000", "--checkpoint-every", "100000", "--sample-every", "0", "--no-progress",
               "--device", "cpu", "--mode", "stream", "--workers", "0"]


# ---------------------------------------------------------------- source images


def _write_image(job: tuple[Path, int]) -> None:
    """A 40 x 40 PNG: a smooth pattern set by the index, and the index itself in the first pixels
    (so every file is distinct)."""
    folder, index = job
    y, x = np.mgrid[0:40, 0:40]
    pixels = np.stack([(x * (3 + index % 7) + y * (index % 5)) % 256, (x + y + index) % 256,
                       (x * y + index // 7) % 256], axis=-1).astype(np.uint8)
    pixels[0, :8] = np.frombuffer(int(index).to_bytes(24, "little"), dtype=np.uint8).reshape(8, 3)
    class_name = "rare" if index % 4 == 0 else "common"
    Image.fromarray(pixels).save(folder / class_name / f"{index:07d}.png", compress_level=1)


def make_source(folder: Path, images: int, workers: int) -> Path:
    for name in ("common", "rare"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    with multiprocessing.Pool(max(workers, 1)) as pool:
        pool.map(_write_image, [(folder, i) for i in range(images)], chunksize=256)
    return folder


# ---------------------------------------------------------------- memory of a process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_pss_mib(pid: int) -> float:
    """PSS (MiB) of `pid` and all its descendants (shared pages divided among their users)."""
    tree, stack, total = _children(), [pid], 0
    while stack:
        current = stack.pop()
        stack.extend(tree.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass  # the process ended between the listing and the read
    return total / 1024


class PeakMemory:
    """Samples `tree_pss_mib(pid)` every `interval` seconds in a thread; `.peak` after the block."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak tree PSS MiB) of a command run to completion."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakMemory(process.pid) as memory:
        _, error = process.communicate()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{error}")
    return time.perf_counter() - start, memory.peak


# ---------------------------------------------------------------- the measurements


def measure_build(src: Path, out: Path, workers: int) -> tuple[float, float]:
    return run_measured(_python(str(ROOT / "cli.py"), "build", "--src", str(src), "--size", "32", "--out", str(out),
                                "--workers", str(workers)))


STREAM_SCRIPT = """
import os, sys
sys.path.insert(0, os.path.join(sys.argv[3], "bench"))
from scale import tree_pss_mib
from ddpm_data.stream import ReaderConfig, open_reader
reader = open_reader(sys.argv[1], ReaderConfig(mode="stream", workers=2, batch_size=32, balance="sqrt"))
peak = 0.0
for batch in range(int(sys.argv[2])):
    next(reader)
    if batch % 10 == 0:
        peak = max(peak, tree_pss_mib(os.getpid()))
print(peak)
"""


def measure_stream(shards: Path, batches: int) -> float:
    """Peak PSS (MiB) of the reader's process and its 2 workers, sampled every 10 batches while
    drawing (the start-up and shutdown of the worker processes are left out)."""
    done = subprocess.run(_python("-c", STREAM_SCRIPT, str(shards), str(batches), str(ROOT)), env=_env(),
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"stream reader failed:\n{done.stderr}")
    return float(done.stdout.split()[-1])


def measure_first_step(shards: Path, run: Path) -> float:
    """Seconds from launching ddpm-train to its first metrics line (then it is stopped by SIGTERM)."""
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    process = subprocess.Popen(_python("-c", "import cli; cli.train_app()", "--shards", str(shards), "--out", str(run),
                                       *TRAIN_FLAGS), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    while process.poll() is None and not (metrics.is_file() and metrics.stat().st_size):
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if process.poll() is not None:
        raise SystemExit(f"ddpm-train exited early:\n{process.stderr.read().decode()}")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=300)
    return seconds


def baseline_take(order: list[int], start: int, count: int) -> list[int]:
    """The previous ClassSequence.take within a pass: a copy of the order from `start` on, then a slice."""
    return order[start:][:count]


def draw_costs(rows: int, calls: int = 300) -> tuple[float, float]:
    """(ours, baseline) microseconds per take of 8 draws at random positions of one class of `rows`."""
    import torch

    from ddpm_data.stream import ClassSequence

    sequence = ClassSequence([range(rows)], seed=0, part=0, label=0)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0)).tolist()
    starts = np.random.default_rng(0).integers(0, rows - 8, calls).tolist()
    sequence.take(0, 8)  # the pass's order, made once per pass in both versions
    begin = time.perf_counter()
    for start in starts:
        sequence.take(start, 8)
    ours = (time.perf_counter() - begin) / calls * 1e6
    begin = time.perf_counter()
    for start in starts:
        baseline_take(order, start, 8)
    return ours, (time.perf_counter() - begin) / calls * 1e6


def memory_batch_us(shards: Path, batches: int = 300) -> float:
    from ddpm_data.stream import ReaderConfig, open_reader

    reader = open_reader(shards, ReaderConfig(mode="memory", batch_size=32, balance="sqrt"))
    next(reader)
    begin = time.perf_counter()
    for _ in range(batches):
        next(reader)
    return (time.perf_counter() - begin) / batches * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="numbers of images, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="build decode processes and image writers")
    parser.add_argument("--batches", type=int, default=300, help="stream-mode batches drawn")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the draw timings: no thread pool waiting on a busy machine's cores
    sizes = [int(n) for n in args.sizes.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="ddpm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    results = {}
    try:
        for n in sizes:
            src, shards = work / f"src-{n}", work / f"shards-{n}"
            if not src.is_dir():
                make_source(src, n, args.workers)
            shutil.rmtree(shards, ignore_errors=True)
            seconds, build_peak = measure_build(src, shards, args.workers)
            stream_peak = measure_stream(shards, args.batches)
            first_step = min(measure_first_step(shards, work / f"run-{n}-{i}") for i in range(2))  # busy machine: best of 2
            ours, baseline = draw_costs(int(n * 0.675))  # the common class's train rows
            results[n] = {"build_s_per_image_ms": round(seconds / n * 1e3, 3), "build_peak_mib": round(build_peak, 1),
                          "stream_peak_mib": round(stream_peak, 1), "first_step_s": round(first_step, 2),
                          "memory_batch_us": round(memory_batch_us(shards), 1),
                          "take_us": round(ours, 2), "baseline_take_us": round(baseline, 2)}
            print(f"N={n}: {results[n]}", flush=True)
        large = {rows: draw_costs(rows) for rows in (400_000, 2_000_000)}
        for rows, (ours, baseline) in large.items():
            print(f"take of 8 draws, one class of {rows:,} rows: ours {ours:.2f} us, baseline {baseline:.1f} us", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    small, big = results[sizes[0]], results[sizes[-1]]
    ratios = {name: round(big[name] / small[name], 3) for name in
              ("build_peak_mib", "stream_peak_mib", "first_step_s", "memory_batch_us", "take_us", "build_s_per_image_ms")}
    ratios["take_2M_vs_400k"] = round(large[2_000_000][0] / large[400_000][0], 3)
    ratios["baseline_take_2M_vs_400k"] = round(large[2_000_000][1] / large[400_000][1], 3)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    print(json.dumps({"images": sizes, "results": results, f"ratio_{sizes[-1]}_vs_{sizes[0]}": ratios}))


if __name__ == "__main__":
    main()
