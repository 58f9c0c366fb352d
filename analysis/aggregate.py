"""Aggregates over the runs of an experiment, read only from the results store.

Conventions (the PWM paper's, computed with rliable, Agarwal et al. 2021):

- **Curves**: for each algorithm and env, the seeds' evaluation returns are put on one grid of
  measured env steps (the union of their evaluation steps up to the shortest run; linear
  interpolation between a run's own evaluations), and the interquartile mean (IQM, 25 %
  trimmed mean) across seeds is taken at each step, with a 95 % stratified-bootstrap CI.
- **Scores per run**: ``final`` is the run's last evaluation; ``best`` follows the paper: the
  step where the IQM curve peaks, and each run's return at that step (not each run's own
  maximum, which is biased upward).
- **Normalisation**: a score is divided by the normaliser algorithm's (PPO's) max-over-training
  IQM return on the same env, measured in the same sweep; and also by the published PPO
  normalisers (``results/reference/``).
- **Aggregates over envs**: median, IQM, mean and optimality gap of the normalised scores (runs ×
  envs), with 95 % stratified-bootstrap CIs; performance profiles; probability of improvement.

Bootstraps use a fixed random state, so the same store gives the same numbers and figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pwm_bench.analysis.experiments import REFERENCE_DIR, Selection
from pwm_bench.analysis.sweep import Cell, cell_status, make_cell
from pwm_bench.store import load_metrics, read_config, read_summary

log = logging.getLogger("pwm_bench.analysis")

BOOTSTRAP_REPS = 2000
"""Bootstrap replications (the PWM paper's notebooks use 2000)."""
BOOTSTRAP_SEED = 0
"""Seed of the bootstrap's random state."""
EVAL_KEY = "eval/episode_return"


@dataclasses.dataclass
class RunData:
    """One completed run as analysis sees it.

    Attributes:
        cell: the grid cell.
        steps: ``(E,)`` env steps of its evaluations.
        returns: ``(E,)`` evaluation returns (undiscounted, deterministic policy).
        summary: its ``summary.json``.
        config: its ``config.yaml``.
    """

    cell: Cell
    steps: np.ndarray
    returns: np.ndarray
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def final(self) -> float:
        return float(self.returns[-1])


@dataclasses.dataclass
class Collected:
    """The cells of a selection, the runs that completed, and what is wrong with the rest."""

    selection: Selection
    cells: list[Cell]
    runs: list[RunData]
    warnings: list[str]

    def group(self, algo: str, env_label: str) -> list[RunData]:
        """Completed runs of one (algo, env) cell group, in seed order."""
        return sorted(
            (r for r in self.runs if r.cell.algo_label == algo and r.cell.env_label == env_label),
            key=lambda r: r.cell.seed,
        )


def selection_cells(sel: Selection, out: Path) -> list[Cell]:
    """Every cell of ``sel`` (their run folders under ``out``)."""
    return [
        make_cell(sel.algo_name(a), case.env, s, sel.preset, sel.cell_overrides(a, case), out, case.name, a)
        for case in sel.envs
        for a in sel.algos
        for s in sel.seeds
    ]


def collect(sel: Selection, out: Path) -> Collected:
    """Read the completed runs of ``sel`` from the store under ``out``, with warnings for missing,
    unfinished or failed cells, cell groups with fewer seeds than asked, and runs whose evaluation
    series are identical (a copied file)."""
    cells = selection_cells(sel, out)
    runs: list[RunData] = []
    warnings: list[str] = []
    for c in cells:
        what = f"{c.algo_label} on {c.env_label} seed {c.seed}"
        status = cell_status(c)
        if status == "missing":
            warnings.append(f"missing cell: {what} (no run at {c.run_dir})")
            continue
        if status != "completed":
            warnings.append(f"{what} is {status}, not completed; left out ({c.run_dir})")
            continue
        df = load_metrics(c.run_dir)
        if EVAL_KEY not in df or df[EVAL_KEY].notna().sum() == 0:
            warnings.append(f"{what} has no evaluation in its metrics.csv; left out ({c.run_dir})")
            continue
        ev = df.loc[df[EVAL_KEY].notna(), ["env_steps", EVAL_KEY]]
        runs.append(
            RunData(
                c,
                ev["env_steps"].to_numpy(dtype=float),
                ev[EVAL_KEY].to_numpy(dtype=float),
                read_summary(c.run_dir),
                read_config(c.run_dir),
            )
        )
    for case in sel.envs:
        for a in sel.algos:
            n = sum(1 for r in runs if r.cell.algo_label == a and r.cell.env_label == case.name)
            if 0 < n < len(sel.seeds):
                warnings.append(f"{a} on {case.name}: {n} of {len(sel.seeds)} seeds completed")
    warnings += identical_series(runs)
    for w in warnings:
        log.warning("%s", w)
    return Collected(sel, cells, runs, warnings)


def identical_series(runs: Sequence[RunData]) -> list[str]:
    """Warnings for pairs of runs whose evaluation series (steps and returns) are identical."""
    seen: dict[str, RunData] = {}
    out = []
    for r in runs:
        if len(r.returns) < 2:
            continue
        key = hashlib.sha1(np.stack([r.steps, r.returns]).tobytes()).hexdigest()
        if key in seen:
            o = seen[key].cell
            out.append(
                f"identical evaluation series: {r.cell.algo_label}/{r.cell.env_label}/seed {r.cell.seed} and "
                f"{o.algo_label}/{o.env_label}/seed {o.seed} ({r.cell.run_dir}, {o.run_dir}); one may be a copy"
            )
        else:
            seen[key] = r
    return out


def _rs() -> np.random.RandomState:
    return np.random.RandomState(BOOTSTRAP_SEED)


@contextlib.contextmanager
def _bootstrap() -> Iterator[None]:
    """A reproducible bootstrap: rliable's stratified resampling draws from NumPy's global RNG
    (its ``random_state`` only reaches arch), so seed that and put its state back afterwards. Also
    silences arch 7's deprecation warning about the ``random_state`` that rliable passes it."""
    state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            yield
    finally:
        np.random.set_state(state)


def iqm(x: np.ndarray) -> float:
    """25 % trimmed mean of all entries (rliable's ``aggregate_iqm``)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(x))


def iqm_interval(x: np.ndarray, reps: int = BOOTSTRAP_REPS) -> tuple[float, tuple[float, float]]:
    """IQM of per-run scores ``x (R,)`` and its 95 % bootstrap CI (rliable; one task)."""
    from rliable import library as rly
    from rliable import metrics

    with _bootstrap():
        point, ci = rly.get_interval_estimates(
            {"x": np.asarray(x, dtype=float).reshape(-1, 1)}, metrics.aggregate_iqm, reps=reps, random_state=_rs()
        )
    lo, hi = np.asarray(ci["x"], dtype=float).reshape(2)
    return float(np.asarray(point["x"]).reshape(())), (float(lo), float(hi))


def curve_matrix(runs: Sequence[RunData]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps (P,), returns (R, P))``: the runs' evaluations on one grid of env steps.

    The grid is the union of the runs' evaluation steps up to the end of the shortest run; each
    run is linearly interpolated between its own evaluations (exact where it evaluated).
    """
    end = min(r.steps[-1] for r in runs)
    grid = np.unique(np.concatenate([r.steps[r.steps <= end] for r in runs]))
    mat = np.stack([np.interp(grid, r.steps, r.returns) for r in runs])
    return grid, mat


@dataclasses.dataclass
class Curve:
    """IQM curve of one (algo, env): ``steps (P,)``, ``iqm (P,)``, ``ci (2, P)`` (95 %), ``runs`` R."""

    steps: np.ndarray
    iqm: np.ndarray
    ci: np.ndarray
    matrix: np.ndarray

    @property
    def runs(self) -> int:
        return self.matrix.shape[0]

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.iqm))


def iqm_curve(runs: Sequence[RunData], reps: int = BOOTSTRAP_REPS) -> Curve:
    """IQM over seeds at each step of the runs' common grid, with 95 % stratified-bootstrap CIs."""
    from rliable import library as rly
    from rliable import metrics

    steps, mat = curve_matrix(runs)
    scores = mat[:, None, :]  # (runs, tasks=1, points)

    def per_point(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x[..., i]) for i in range(x.shape[-1])])

    with _bootstrap():
        point, ci = rly.get_interval_estimates({"c": scores}, per_point, reps=reps, random_state=_rs())
    return Curve(steps, point["c"], ci["c"], mat)


def load_reference(name: str | None, out: Path | None = None) -> Any:
    """The published table ``<name>.csv`` (pandas DataFrame; None if absent): looked up in
    ``<out>/reference/`` first, then in the source tree's ``results/reference/``."""
    import pandas as pd

    if not name:
        return None
    for folder in ([Path(out) / "reference"] if out is not None else []) + [REFERENCE_DIR]:
        f = folder / f"{name}.csv"
        if f.is_file():
            return pd.read_csv(f, comment="#")
    log.warning("published table %s.csv not found in results/reference/; figures show measured numbers only", name)
    return None


def published_normalizers(ref: Any, normalizer: str | None) -> dict[str, float]:
    """Published normaliser return per env (the ``iqm_return`` of the normaliser's rows)."""
    if ref is None or normalizer is None:
        return {}
    rows = ref[(ref["algo"] == normalizer) & ref["iqm_return"].notna()]
    return {str(r.env): float(r.iqm_return) for r in rows.itertuples()}


@dataclasses.dataclass
class Scores:
    """Per-run scores of a collected experiment and the normalisers.

    Attributes:
        curves: ``{(algo, env_label): Curve}`` for every group with a completed run.
        final: ``{(algo, env_label): (R,)}`` last evaluation of each run.
        best: ``{(algo, env_label): (R,)}`` each run's return at the step of the peak IQM.
        sweep_norm: ``{env_label: normaliser's max IQM return in this sweep}`` (only positive ones).
        published_norm: ``{env_label: published normaliser return}``.
        reference: the experiment's published table (pandas DataFrame; None if it has none).
    """

    curves: dict[tuple[str, str], Curve]
    final: dict[tuple[str, str], np.ndarray]
    best: dict[tuple[str, str], np.ndarray]
    sweep_norm: dict[str, float]
    published_norm: dict[str, float]
    reference: Any = None


def compute_scores(col: Collected, reps: int = BOOTSTRAP_REPS, out: Path | None = None) -> Scores:
    """Curves, per-run final and best-step scores, and the normalisers of ``col``."""
    sel = col.selection
    curves, final, best = {}, {}, {}
    for case in sel.envs:
        for a in sel.algos:
            runs = col.group(a, case.name)
            if not runs:
                continue
            c = iqm_curve(runs, reps)
            curves[(a, case.name)] = c
            final[(a, case.name)] = np.array([r.final for r in runs])
            best[(a, case.name)] = c.matrix[:, c.best_index]
    norm_algo = sel.experiment.normalizer
    sweep_norm = {}
    for case in sel.envs:
        c = curves.get((norm_algo, case.name)) if norm_algo else None
        if c is None:
            continue
        peak = float(c.iqm.max())
        if peak > 0:
            sweep_norm[case.name] = peak
        else:
            msg = f"{norm_algo} on {case.name}: max IQM return {peak:.1f} <= 0; no sweep normalisation on this env"
            col.warnings.append(msg)
            log.warning("%s", msg)
    ref = load_reference(sel.experiment.reference, out)
    pub = published_normalizers(ref, norm_algo)
    published_norm = {}
    for case in sel.envs:
        if case.name in pub:
            published_norm[case.name] = pub[case.name]
        elif case.env in pub and not case.options:
            published_norm[case.name] = pub[case.env]
    # columns normalised by another column's normaliser (every stiffness by the default one's PPO)
    for label, src in sel.experiment.normalize_with.items():
        for norm in (sweep_norm, published_norm):
            norm.pop(label, None)
            if src in norm:
                norm[label] = norm[src]
    return Scores(curves, final, best, sweep_norm, published_norm, ref)


def normalized_matrix(
    per_run: Mapping[tuple[str, str], np.ndarray], algo: str, envs: Sequence[str], norm: Mapping[str, float]
) -> np.ndarray | None:
    """``(R, len(envs))`` normalised scores of ``algo`` (R = its smallest seed count over ``envs``);
    None if an env lacks a normaliser or a run, or ``envs`` is empty."""
    if not envs:
        return None
    cols = []
    for e in envs:
        if e not in norm or (algo, e) not in per_run:
            return None
        cols.append(per_run[(algo, e)] / norm[e])
    n = min(len(c) for c in cols)
    return np.stack([c[:n] for c in cols], axis=1)


AGGREGATES = ("Median", "IQM", "Mean", "Optimality gap")


def aggregate(
    per_run: Mapping[tuple[str, str], np.ndarray],
    algos: Sequence[str],
    envs: Sequence[str],
    norm: Mapping[str, float],
    reps: int = BOOTSTRAP_REPS,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Median, IQM, mean and optimality gap (rliable) of each algorithm's normalised scores over
    ``envs``: ``({algo: (4,)}, {algo: (2, 4)} 95 % CIs)``; algorithms lacking a score are left out."""
    from rliable import library as rly
    from rliable import metrics

    mats = {a: m for a in algos if (m := normalized_matrix(per_run, a, envs, norm)) is not None}
    if not mats:
        return {}, {}

    def funcs(x: np.ndarray) -> np.ndarray:
        return np.array(
            [
                metrics.aggregate_median(x),
                metrics.aggregate_iqm(x),
                metrics.aggregate_mean(x),
                metrics.aggregate_optimality_gap(x),
            ]
        )

    with _bootstrap():
        return rly.get_interval_estimates(mats, funcs, reps=reps, random_state=_rs())


def performance_profiles(
    per_run: Mapping[tuple[str, str], np.ndarray],
    algos: Sequence[str],
    envs: Sequence[str],
    norm: Mapping[str, float],
    taus: np.ndarray,
    reps: int = BOOTSTRAP_REPS,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score distributions (fraction of runs × envs above each τ) with 95 % CIs (rliable)."""
    from rliable import library as rly

    mats = {a: m for a in algos if (m := normalized_matrix(per_run, a, envs, norm)) is not None}
    if not mats:
        return {}, {}
    with _bootstrap():
        return rly.create_performance_profile(mats, taus, reps=reps)


def probability_of_improvement(
    per_run: Mapping[tuple[str, str], np.ndarray],
    focus: str,
    others: Sequence[str],
    envs: Sequence[str],
    norm: Mapping[str, float],
    reps: int = BOOTSTRAP_REPS,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """P(focus > other) over runs, averaged over envs (rliable), with 95 % CIs, per other algorithm."""
    from rliable import library as rly
    from rliable import metrics

    x = normalized_matrix(per_run, focus, envs, norm)
    if x is None:
        return {}, {}
    pairs = {}
    for o in others:
        y = normalized_matrix(per_run, o, envs, norm)
        if y is not None and o != focus:
            pairs[o] = (x, y)
    if not pairs:
        return {}, {}
    with _bootstrap():
        point, ci = rly.get_interval_estimates(
            pairs, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps, random_state=_rs()
        )
    return {k: float(v[0]) for k, v in point.items()}, {k: v[:, 0] for k, v in ci.items()}
