"""`ddpm-study`: train a grid of configurations on one budget and compare them at one display size.

config.py (settings, study.toml), cells.py (the grid's cells, names, --cells k/n), tools.py (the
console scripts as subprocesses), runner.py (shards, train, sample per cell), measure.py (every
cell at the display size: ddpm-eval and jaggedness), table.py (the comparison), paired.py (the
change paired by seed, with Student-t intervals), curves.py (the measures along training),
report.py (report/), figure.py (the side-by-side picture), controls.py (the staircase controls behind
the jaggedness measure).
"""
