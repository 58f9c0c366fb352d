"""Run a grid of algorithms × seeds on one env and summarise it (``pwm-bench compare``).

Every cell is an ordinary run in the results store, with a run id derived from the grid
(``cmp-<preset>-<tag>-s<seed>``, where ``tag`` hashes the cell's resolved configs), so a grid that was interrupted
picks up where it stopped when the same command is given again: completed cells are reused,
interrupted or dead ones are resumed from their latest checkpoint, missing ones are started.
Cells run one after another by default; ``jobs > 1`` runs that many at once in subprocesses, each
limited to ``cpu_count // jobs`` torch threads. A stop request (SIGINT or SIGTERM) stops the whole
grid, not just the cell it lands in: running cells save a checkpoint and stop, no further cell starts,
and :func:`run_grid` raises :class:`GridInterrupted`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pwm_bench.analysis.sweep import (
    INTERRUPTED_EXIT_CODE,
    Cell,
    GridInterrupted,
    cell_tag,
    make_cell,
    run_cells,
)
from pwm_bench.config import PRESETS
from pwm_bench.envs import env_spec
from pwm_bench.errors import UsageError, unknown_choice
from pwm_bench.store import read_summary

log = logging.getLogger(__name__)

__all__ = [
    "INTERRUPTED_EXIT_CODE",
    "Cell",
    "GridInterrupted",
    "cell_tag",
    "eval_curve",
    "plan",
    "run_grid",
    "summarize",
]


def plan(
    env: str, algos: Sequence[str], seeds: Sequence[int], preset: str, overrides: Mapping[str, Any], out: Path
) -> list[Cell]:
    """The grid's cells (validates names first; raises :class:`UsageError`)."""
    env_spec(env)
    if preset not in PRESETS:
        raise unknown_choice("preset", preset, PRESETS)
    if not algos:
        raise UsageError("--algos needs at least one algorithm")
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError("--seeds must be a positive count")
    return [make_cell(a, env, s, preset, overrides, out) for a in algos for s in seeds]


def run_grid(
    env: str,
    algos: Sequence[str],
    seeds: Sequence[int],
    *,
    preset: str = "cpu",
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    out: Path = Path("results"),
    jobs: int = 1,
    threads: int | None = None,
    reporter_factory: Any = None,
) -> list[Cell]:
    """Run (or finish) every cell of the grid; returns the cells in grid order.

    The one-env case of a sweep (:func:`pwm_bench.analysis.sweep.run_cells`).

    Args:
        env: env name.
        algos: algorithm names.
        seeds: seeds.
        preset: preset of every run.
        device: device of every run.
        overrides: ``--set`` overrides applied to every run (keys valid for every algorithm).
        out: results root.
        jobs: cells run at once (1 = in this process, one after another).
        threads: torch threads per cell (default: ``cpu_count // jobs`` in subprocesses, else torch's).
        reporter_factory: called with no arguments to make each in-process run's reporter.
    """
    cells = plan(env, algos, seeds, preset, dict(overrides or {}), out)
    return run_cells(cells, device=device, out=out, jobs=jobs, threads=threads, reporter_factory=reporter_factory)


def eval_curve(run_dir: Path) -> Any:
    """``(env_steps, eval/episode_return)`` rows of a run's ``metrics.csv`` (pandas DataFrame; empty if none)."""
    import pandas as pd

    f = Path(run_dir) / "metrics.csv"
    if not f.exists():
        return pd.DataFrame(columns=["env_steps", "eval/episode_return"])
    df = pd.read_csv(f)
    if "eval/episode_return" not in df:
        return pd.DataFrame(columns=["env_steps", "eval/episode_return"])
    return df.loc[df["eval/episode_return"].notna(), ["env_steps", "eval/episode_return"]]


def summarize(cells: Sequence[Cell], at_steps: int | None = None) -> Any:
    """Per-algorithm table (pandas DataFrame): runs completed, final and best eval return
    (mean and std across seeds), the same at ``at_steps`` env steps (the last and the best
    evaluation up to there), the mean return of uniform random actions on the same evaluation
    worlds, mean env steps, mean env steps spent on pretraining data (PWM's collection run; 0
    for the others) and mean wall time (s).

    ``at_steps`` defaults to the smallest env-step count among the completed runs, so runs with
    different budgets are also compared at equal online env steps.
    """
    import pandas as pd

    rows = []
    for c in cells:
        s = read_summary(c.run_dir)
        rows.append(
            {
                "algo": c.algo,
                "seed": c.seed,
                "status": s.get("status", "missing"),
                "final": s.get("final_eval_return"),
                "best": s.get("best_eval_return"),
                "random": s.get("random_eval_return"),
                "env_steps": s.get("env_steps"),
                "data_steps": s.get("data_env_steps", 0),
                "wall_time": s.get("wall_time"),
            }
        )
    df = pd.DataFrame(rows)
    done = df["status"].eq("completed")
    if at_steps is None and done.any():
        at_steps = int(df.loc[done, "env_steps"].min())
    at_final, at_best = [], []
    for c in cells:
        curve = eval_curve(c.run_dir)
        upto = curve.loc[curve["env_steps"] <= at_steps, "eval/episode_return"] if at_steps is not None else []
        at_final.append(float(upto.iloc[-1]) if len(upto) else float("nan"))
        at_best.append(float(upto.max()) if len(upto) else float("nan"))
    df = df.assign(at_final=at_final, at_best=at_best)
    order = list(dict.fromkeys(df["algo"]))
    g = df.assign(done=done).groupby("algo", sort=False)
    table = pd.DataFrame(
        {
            "runs": g["done"].sum().astype(int).astype(str) + "/" + g.size().astype(str),
            "final_mean": g["final"].mean(),
            "final_std": g["final"].std(ddof=0),
            "best_mean": g["best"].mean(),
            "best_std": g["best"].std(ddof=0),
            "at_steps": at_steps,
            "at_final_mean": g["at_final"].mean(),
            "at_final_std": g["at_final"].std(ddof=0),
            "at_best_mean": g["at_best"].mean(),
            "at_best_std": g["at_best"].std(ddof=0),
            "random_mean": g["random"].mean(),
            "env_steps": g["env_steps"].mean(),
            "data_steps": g["data_steps"].mean(),
            "wall_time": g["wall_time"].mean(),
        }
    ).loc[order]
    return table.reset_index()
