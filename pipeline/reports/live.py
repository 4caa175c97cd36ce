"""A stage's curves for `dvc plots`, written with dvclive's plot writers into the stage's own output
folder (work/<stage>/live/plots/...), so `dvc plots diff REV1 REV2` finds them at the same paths in
every run. dvc.yaml declares the folders as stage outputs and draws them in its top-level plots.

dvclive's `Live` is left out on purpose: starting one opens the DVC repository around the working
directory (and runs `dvc init` in a git repository without one), writes signal files under .dvc/tmp
and may post to DVC Studio; a stage writes its own outputs and nothing else. The writers below make
the same files `Live.log_metric` and `Live.log_plot` make, without timestamps, so a rerun on the same
inputs writes the same bytes. The caller writes them into its temporary output folder, like every
other output, so a killed stage leaves no half-written curve.
"""
from __future__ import annotations

import math
from pathlib import Path

LIVE_DIR = "live"   # under a stage's output folder
DIGITS = 6          # values are rounded like the stages' other tables: stable bytes, enough to plot


def plots_dir(live_dir: str | Path) -> str:
    return str(Path(live_dir) / "plots")


def rounded(value: float) -> float | str:
    """`value` to DIGITS places; NaN and infinities as the strings dvclive writes for them."""
    value = float(value)
    return round(value, DIGITS) if math.isfinite(value) else str(value)


def write_step_metrics(live_dir: str | Path, curves: dict[str, list[tuple[int, float]]]) -> None:
    """One dvclive metrics file per curve, plots/metrics/<name>.tsv with the columns step and <name>, a
    row per (step, value). A curve without points keeps its file, header only: the paths stay the same
    whatever the knobs turn off."""
    from dvclive.plots import Metric

    for name, points in curves.items():
        metric = Metric(name, plots_dir(live_dir))
        if not points:
            metric.output_path.write_text(f"step\t{Path(name).name}\n", encoding="utf-8")
        for step, value in points:
            metric.step = int(step)
            metric.dump(rounded(value))


def write_table(live_dir: str | Path, name: str, rows: list[dict], x: str, y: str, template: str = "linear") -> Path:
    """A custom dvclive plot, plots/custom/<name>.json: the rows as a JSON list. `x`, `y` and `template`
    are what the drawing uses (dvc.yaml's top-level plots repeat them)."""
    from dvclive.plots import CustomPlot

    plot = CustomPlot(name, plots_dir(live_dir), x=x, y=y, template=template)
    plot.dump([{key: rounded(v) if isinstance(v, float) else v for key, v in row.items()} for row in rows])
    return plot.output_path
