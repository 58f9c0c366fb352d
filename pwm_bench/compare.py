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

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pwm_bench.algos import get_algorithm
from pwm_bench.config import PRESETS
from pwm_bench.envs import env_spec
from pwm_bench.errors import PwmBenchError, UsageError, unknown_choice
from pwm_bench.store import env_dirname, read_summary

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    algo: str
    seed: int
    run_dir: Path


def cell_tag(algo: str, env: str, preset: str, overrides: Mapping[str, Any]) -> str:
    """Short stable hash of a cell's fully resolved algorithm and env configs (part of its run id).

    Resolved values, not the preset name, go in: after a preset changes, ``compare`` starts new runs
    instead of reusing runs made with the old values.
    """
    from pwm_bench.config import apply_overrides, to_dict
    from pwm_bench.runner import split_overrides

    spec = get_algorithm(algo)
    algo_ov, env_ov = split_overrides(overrides)
    cfg = apply_overrides(spec.config.from_preset(preset, env), algo_ov, what=f"{algo} config key")
    env_cfg = apply_overrides(env_spec(env).config(), env_ov, what=f"'{env}' env option")
    text = json.dumps({"algo": to_dict(cfg), "env": to_dict(env_cfg)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def plan(
    env: str, algos: Sequence[str], seeds: Sequence[int], preset: str, overrides: Mapping[str, Any], out: Path
) -> list[Cell]:
    """The grid's cells (validates names first; raises :class:`UsageError`)."""
    env_spec(env)
    if preset not in PRESETS:
        raise unknown_choice("preset", preset, PRESETS)
    if not algos:
        raise UsageError("--algos needs at least one algorithm")
    for a in algos:
        spec = get_algorithm(a)
        if spec.requires_gradients and not env_spec(env).differentiable:
            raise UsageError(f"algorithm '{a}' needs simulator gradients; env '{env}' has none")
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError("--seeds must be a positive count")
    root = Path(out) / "runs" / env_dirname(env)
    return [
        Cell(a, s, root / a / f"cmp-{preset}-{cell_tag(a, env, preset, overrides)}-s{s}") for a in algos for s in seeds
    ]


INTERRUPTED_EXIT_CODE = 130
"""Exit code of a ``pwm-bench run`` that stopped on a signal after saving its state."""


class GridInterrupted(PwmBenchError):
    """A stop request ended :func:`run_grid` early; ``cells`` is the whole grid (some not completed)."""

    def __init__(self, cells: list[Cell]) -> None:
        super().__init__("compare interrupted")
        self.cells = cells


def _cell_args(cell: Cell, env: str, preset: str, device: str, overrides: Mapping[str, Any], out: Path) -> list[str]:
    status = read_summary(cell.run_dir).get("status") if cell.run_dir.exists() else None
    if status is not None:
        return ["run", "--resume", str(cell.run_dir), "--device", device]
    args = ["run", "--algo", cell.algo, "--env", env, "--seed", str(cell.seed), "--preset", preset]
    args += ["--device", device, "--out", str(out), "--run-id", cell.run_dir.name]
    for k, v in overrides.items():
        args += ["--set", f"{k}={v}"]
    return args


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
    reporter_factory: Any = None,
) -> list[Cell]:
    """Run (or finish) every cell of the grid; returns the cells in grid order.

    Args:
        env: env name.
        algos: algorithm names.
        seeds: seeds.
        preset: preset of every run.
        device: device of every run.
        overrides: ``--set`` overrides applied to every run (keys valid for every algorithm).
        out: results root.
        jobs: cells run at once (1 = in this process, one after another).
        reporter_factory: called with no arguments to make each in-process run's reporter.
    """
    from pwm_bench.runner import RunRequest, execute

    overrides = dict(overrides or {})
    cells = plan(env, algos, seeds, preset, overrides, out)
    todo = [c for c in cells if read_summary(c.run_dir).get("status") != "completed"]
    if len(todo) < len(cells):
        log.info("%d of %d runs already completed; reusing them", len(cells) - len(todo), len(cells))
    if jobs <= 1:
        for i, cell in enumerate(todo, 1):
            log.info("[%d/%d] %s seed %d", i, len(todo), cell.algo, cell.seed)
            reporter = reporter_factory() if reporter_factory is not None else None
            if cell.run_dir.exists():
                req = RunRequest(resume=cell.run_dir, device=device, reporter=reporter)
            else:
                req = RunRequest(
                    algo=cell.algo,
                    env=env,
                    seed=cell.seed,
                    preset=preset,
                    device=device,
                    overrides=overrides,
                    out=out,
                    run_id=cell.run_dir.name,
                    reporter=reporter,
                )
            if execute(req).status == "interrupted":
                raise GridInterrupted(cells)
        return cells

    threads = max(1, (os.cpu_count() or 1) // jobs)
    stop = threading.Event()
    live: set[subprocess.Popen[str]] = set()
    lock = threading.Lock()

    def launch(cell: Cell) -> None:
        args = [sys.executable, "-m", "pwm_bench", *_cell_args(cell, env, preset, device, overrides, out)]
        args += ["--quiet", "--threads", str(threads)]
        with lock:
            if stop.is_set():
                return
            log.info("start %s seed %d", cell.algo, cell.seed)
            # a session of its own: a Ctrl-C at the terminal reaches the grid only, which passes it on once
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            live.add(proc)
        stdout, stderr = proc.communicate()
        with lock:
            live.discard(proc)
        if proc.returncode == 0:
            log.info("%s seed %d: %s", cell.algo, cell.seed, (stdout.strip().splitlines() or ["?"])[-1])
            return
        if proc.returncode == INTERRUPTED_EXIT_CODE:
            stop.set()
        tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
        log.warning("%s seed %d exited with code %d: %s", cell.algo, cell.seed, proc.returncode, tail)

    def on_signal(signum: int, frame: Any) -> None:
        again = stop.is_set()
        stop.set()
        log.warning(
            "%s received: %s",
            signal.Signals(signum).name,
            "aborting the running cells" if again else "running cells save a checkpoint and stop; no more start",
        )
        with lock:
            for proc in live:
                proc.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled} if in_main else {}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(launch, todo))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        raise GridInterrupted(cells)
    return cells


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
