"""``pwm-bench plot EXPERIMENT``: figures, a table and a manifest from the results store.

Everything is a pure function of the stored runs (see :mod:`pwm_bench.analysis.aggregate` for
the conventions). Written to ``<out>/figures/<experiment>/`` (``<experiment>-<scale>`` for a scale
other than ``cpu``, and suffixed with what the command line changed, see :func:`figures_dir`), each
file atomically:

- ``curves.png|pdf``: IQM evaluation return over seeds against measured env steps, 95 % CIs,
  one panel per env;
- ``aggregate.png|pdf``: median, IQM, mean and optimality gap of the normalised scores over
  envs (best-step and final rows), 95 % CIs; ``aggregate_published.png|pdf`` the same with the
  published normalisers;
- ``profiles.png|pdf``: performance profiles of the normalised best-step scores;
- ``improvement.png|pdf``: probability of improvement of the focus algorithm (PWM) over each
  other one;
- ``table.csv`` and ``table.md``: per env and algorithm, final and best-step scores, raw and
  normalised both ways, with the published numbers beside them;
- ``manifest.json``: the runs used (ids, seeds, commits, versions, config hashes), the warnings
  and the files written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pwm_bench.analysis.aggregate import (
    AGGREGATES,
    BOOTSTRAP_REPS,
    Collected,
    Scores,
    aggregate,
    collect,
    compute_scores,
    iqm,
    iqm_interval,
    performance_profiles,
    probability_of_improvement,
)
from pwm_bench.analysis.experiments import Selection
from pwm_bench.store import atomic_save, atomic_write_json, atomic_write_text

log = logging.getLogger("pwm_bench.analysis")

FORMATS = ("png", "pdf")
PROFILE_TAUS = np.linspace(0.0, 2.0, 81)
"""Thresholds τ of the performance profiles (normalised score; the paper plots 0.5-2.0)."""


@dataclasses.dataclass
class PlotResult:
    """What :func:`plot_experiment` wrote."""

    folder: Path
    files: list[Path]
    table: Any
    warnings: list[str]


def figures_dir(sel: Selection, out: Path) -> Path:
    """``<out>/figures/<experiment>``, with ``-<scale>`` unless the scale is ``cpu``, and with what
    the command line changed (algorithms, envs, seeds, a hash of the overrides), so that a narrowed
    or widened plot does not overwrite the experiment's own figures."""
    exp, sc = sel.experiment, sel.experiment.scale(sel.scale)
    parts = [exp.name] if sel.scale == "cpu" else [exp.name, sel.scale]
    if sel.algos != (sc.algos or exp.algos):
        parts.append("+".join(sel.algos))
    if tuple(c.name for c in sel.envs) != tuple(c.name for c in exp.envs if sc.envs is None or c.name in sc.envs):
        parts.append("+".join(c.name for c in sel.envs))
    if len(sel.seeds) != sc.seeds:
        parts.append(f"{len(sel.seeds)}seeds")
    default_ov = {**exp.overrides, **sc.overrides}
    if dict(sel.overrides) != default_ov:
        text = json.dumps({k: str(v) for k, v in sel.overrides.items()}, sort_keys=True)
        parts.append("set-" + hashlib.sha1(text.encode()).hexdigest()[:6])
    return Path(out) / "figures" / "-".join(parts)


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        # a fixed creation date keeps the same store's PDF byte-identical
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight", metadata=meta)
        path = folder / f"{stem}.{fmt}"
        atomic_save(path, lambda fh, b=buf: fh.write(b.getvalue()))
        paths.append(path)
    plt.close(fig)
    return paths


_FIXED_COLORS = ("ppo", "sac", "shac", "tdmpc2", "pwm")
"""Algorithms with a colour of their own in every figure (others take the next ones in turn)."""


def _colors(algos: Sequence[str]) -> dict[str, Any]:
    """A distinct colour per algorithm: the colour-blind palette's ten, then evenly spaced dark
    HUSL hues (the colour-blind palette repeats itself after ten, and the ablations have 14 rows)."""
    import seaborn as sns

    extra = [a for a in algos if a not in _FIXED_COLORS]
    order = list(_FIXED_COLORS) + extra
    palette = sns.color_palette("colorblind", 10)
    if len(order) > len(palette):
        palette = palette + sns.husl_palette(len(order) - len(palette), l=0.4, s=0.95)
    return {a: palette[order.index(a)] for a in algos}


_LEGEND_INSIDE = 6
"""Up to this many entries a legend goes inside its panel; more go beside or below it."""


def _panel_legend(ax: Any) -> None:
    """The panel's legend: inside when short, else below the panel in two columns, off the data."""
    n = len(ax.get_legend_handles_labels()[0])
    if n <= _LEGEND_INSIDE:
        ax.legend(fontsize=7, loc="best")
    else:
        # anchored at the panel's bottom edge and pushed down by a fixed pad (in font sizes, about
        # 36 pt) that clears the tick labels and the axis label whatever the panel's height
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=5.5, ncol=2, frameon=False)


def plot_curves(col: Collected, scores: Scores, folder: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    sel = col.selection
    envs = [c.name for c in sel.envs]
    colors = _colors(sel.algos)
    ncols = min(len(envs), 3)
    nrows = int(np.ceil(len(envs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, env in zip(axes.flat, envs, strict=False):
        drawn = 0
        for a in sel.algos:
            c = scores.curves.get((a, env))
            if c is None:
                continue
            label = f"{a} ({c.runs} seed{'s' if c.runs != 1 else ''})"
            ax.plot(c.steps, c.iqm, color=colors[a], label=label, lw=1.6, marker="o", ms=2.5)
            ax.fill_between(c.steps, c.ci[0], c.ci[1], color=colors[a], alpha=0.2, lw=0)
            drawn += 1
        ax.set_title(env)
        ax.set_xlabel("env steps (measured)")
        ax.set_ylabel("eval return (IQM)")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        ax.grid(alpha=0.3)
        if drawn:
            _panel_legend(ax)
        else:
            ax.text(0.5, 0.5, "no completed run", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(envs) :]:
        ax.axis("off")
    fig.suptitle(
        f"{sel.experiment.name} ({sel.scale}, preset {sel.preset}): IQM over seeds, shaded 95 % bootstrap CI",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, folder, "curves")


def _interval_panel(
    fig_title: str, rows: list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]], algos: Sequence[str]
) -> Any:
    import matplotlib.pyplot as plt

    colors = _colors(algos)
    fig, axes = plt.subplots(
        len(rows),
        len(AGGREGATES),
        figsize=(3.2 * len(AGGREGATES), 0.5 + 0.45 * len(algos) * len(rows) + 0.6 * len(rows)),
        squeeze=False,
    )
    for r, (row_name, point, ci) in enumerate(rows):
        present = [a for a in algos if a in point]
        for m, metric in enumerate(AGGREGATES):
            ax = axes[r, m]
            for i, a in enumerate(present):
                lo, hi = ci[a][0, m], ci[a][1, m]
                ax.barh(i, hi - lo, left=lo, height=0.6, color=colors[a], alpha=0.75)
                ax.vlines(point[a][m], i - 0.3, i + 0.3, color="k", lw=1.5)
            ax.set_yticks(range(len(present)), present if m == 0 else [""] * len(present))
            ax.set_ylim(len(present) - 0.5, -0.5)  # the first algorithm on top
            ax.use_sticky_edges = False  # room beyond the outermost CI
            ax.margins(x=0.08)
            ax.set_title(f"{metric}" if r == 0 else "", fontsize=10)
            ax.set_xlabel(f"normalised score ({row_name})", fontsize=8)
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle(fig_title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_aggregates(col: Collected, scores: Scores, folder: Path, reps: int) -> tuple[list[Path], dict[str, Any]]:
    """The aggregate figures; returns their paths and the numbers (for the manifest)."""
    sel = col.selection
    algos = list(sel.algos)
    envs = [c.name for c in sel.envs]
    paths: list[Path] = []
    numbers: dict[str, Any] = {}
    norm_name = sel.experiment.normalizer or "—"
    if sel.experiment.normalizer is None:
        log.info("%s has no normaliser: aggregates over envs not drawn (raw returns only)", sel.experiment.name)
        return paths, numbers
    for stem, norm, what in (
        ("aggregate", scores.sweep_norm, f"{norm_name}'s max IQM return in this sweep"),
        ("aggregate_published", scores.published_norm, f"the published {norm_name} normalisers"),
    ):
        envs_n = [e for e in envs if e in norm]
        if not envs_n:
            if stem == "aggregate" and sel.experiment.normalizer not in algos:
                # by design (the grid has no normaliser algorithm, or none at all): not a warning
                log.info("%s: the selection has no %s runs to normalise by; figure not drawn", stem, norm_name)
                continue
            col.warnings.append(f"{stem}: no env has a normaliser ({what}); figure not drawn")
            continue
        if len(envs_n) < len(envs):
            col.warnings.append(f"{stem}: envs without a normaliser left out: {sorted(set(envs) - set(envs_n))}")
        rows = []
        for kind, per_run in (("best step", scores.best), ("final", scores.final)):
            point, ci = aggregate(per_run, algos, envs_n, norm, reps)
            if point:
                rows.append((kind, point, ci))
                numbers[f"{stem}/{kind}"] = {
                    a: {
                        m: [float(point[a][i]), float(ci[a][0, i]), float(ci[a][1, i])]
                        for i, m in enumerate(AGGREGATES)
                    }
                    for a in point
                }
        if not rows:
            continue
        seeds = {a: min(len(scores.final.get((a, e), [])) for e in envs_n) for a in algos}
        shared = sorted(set(sel.experiment.normalize_with.values()) & set(envs_n))
        if shared:
            what += f" of {', '.join(shared)} for {'its' if len(shared) == 1 else 'their'} variants"
        fig = _interval_panel(
            f"{sel.experiment.name} ({sel.scale}): scores / {what}; envs {', '.join(envs_n)}; "
            f"seeds {', '.join(f'{a} {n}' for a, n in seeds.items())}; bars: 95 % stratified-bootstrap CI",
            rows,
            algos,
        )
        paths += _save(fig, folder, stem)
    return paths, numbers


def plot_profiles(col: Collected, scores: Scores, folder: Path, reps: int) -> list[Path]:
    import matplotlib.pyplot as plt

    sel = col.selection
    if sel.experiment.normalizer is None:
        return []
    envs = [c.name for c in sel.envs if c.name in scores.sweep_norm]
    norm, what = scores.sweep_norm, f"{sel.experiment.normalizer} in this sweep"
    if not envs:
        envs = [c.name for c in sel.envs if c.name in scores.published_norm]
        norm, what = scores.published_norm, f"published {sel.experiment.normalizer}"
    if not envs:
        col.warnings.append("profiles: no env has a normaliser; figure not drawn")
        return []
    profiles, cis = performance_profiles(scores.best, sel.algos, envs, norm, PROFILE_TAUS, reps)
    colors = _colors(sel.algos)
    fig, ax = plt.subplots(figsize=(6, 4))
    for a in sel.algos:
        if a not in profiles:
            continue
        ax.plot(PROFILE_TAUS, profiles[a], color=colors[a], label=a, lw=1.6)
        ax.fill_between(PROFILE_TAUS, cis[a][0], cis[a][1], color=colors[a], alpha=0.2, lw=0)
    ax.set_xlabel(f"normalised score τ (best-step return / {what})")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _panel_legend(ax)
    seeds = min(len(v) for k, v in scores.best.items() if k[1] in envs)
    ax.set_title(
        f"{sel.experiment.name} ({sel.scale}): performance profiles over {', '.join(envs)}, >= {seeds} seeds a cell",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, folder, "profiles")


def plot_improvement(col: Collected, scores: Scores, folder: Path, reps: int) -> tuple[list[Path], dict[str, Any]]:
    import matplotlib.pyplot as plt

    sel = col.selection
    focus = sel.experiment.focus
    envs = [c.name for c in sel.envs]
    if focus is None:
        return [], {}
    if focus not in sel.algos:
        col.warnings.append(f"improvement: focus algorithm {focus!r} not in the selection; figure not drawn")
        return [], {}
    others = [a for a in sel.algos if a != focus]
    # ranks within each env decide P(X > Y); normalising would not change it
    ones = dict.fromkeys(envs, 1.0)
    envs_p = [e for e in envs if (focus, e) in scores.best]
    if not envs_p:
        col.warnings.append(f"improvement: {focus} has no completed run; figure not drawn")
        return [], {}
    point, ci = probability_of_improvement(scores.best, focus, others, envs_p, ones, reps)
    if not point:
        col.warnings.append("improvement: no baseline shares an env with the focus algorithm; figure not drawn")
        return [], {}
    fig, ax = plt.subplots(figsize=(5.5, 0.6 + 0.5 * len(point)))
    names = list(point)
    for i, o in enumerate(names):
        ax.barh(i, ci[o][1] - ci[o][0], left=ci[o][0], height=0.6, color="tab:blue", alpha=0.6)
        ax.vlines(point[o], i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.text(
            1.01,
            i,
            f"{point[o]:.2f} [{ci[o][0]:.2f}, {ci[o][1]:.2f}]",
            va="center",
            fontsize=8,
            transform=ax.get_yaxis_transform(),
        )
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(names)), [f"{focus} > {o}" for o in names])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement (best-step returns), 95 % CI")
    seeds = min(len(v) for k, v in scores.best.items() if k[1] in envs_p)
    ax.set_title(
        f"{sel.experiment.name} ({sel.scale}): P({focus} > baseline) over {', '.join(envs_p)}, >= {seeds} seeds",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    numbers = {o: [point[o], float(ci[o][0]), float(ci[o][1])] for o in names}
    return _save(fig, folder, "improvement"), numbers


def score_table(col: Collected, scores: Scores) -> Any:
    """One row per env and algorithm: seeds, final and best-step scores (raw IQM, mean ± std,
    normalised by this sweep's and by the published normaliser), the step of the best IQM, and the
    published normalised score and IQM return."""
    import pandas as pd

    sel = col.selection
    ref = scores.reference
    rows = []
    for case in sel.envs:
        env = case.name
        for a in sel.algos:
            fin, best, curve = scores.final.get((a, env)), scores.best.get((a, env)), scores.curves.get((a, env))
            pub = None
            if ref is not None:
                # published rows are keyed by the column's label, or by the env name for a column without options
                m = ref[(ref["env"] == case.name) & (ref["algo"] == a)]
                if not len(m) and not case.options:
                    m = ref[(ref["env"] == case.env) & (ref["algo"] == a)]
                pub = m.iloc[0] if len(m) else None
            sn, pn = scores.sweep_norm.get(env), scores.published_norm.get(env)

            def nz(x: float | None, n: float | None) -> float:
                return float("nan") if x is None or n is None else x / n

            fin_iqm = iqm(fin) if fin is not None else None
            best_iqm = float(curve.iqm[curve.best_index]) if curve is not None else None
            rows.append(
                {
                    "env": env,
                    "algo": a,
                    "seeds": 0 if fin is None else len(fin),
                    "final_iqm": float("nan") if fin_iqm is None else fin_iqm,
                    "final_mean": float("nan") if fin is None else float(fin.mean()),
                    "final_std": float("nan") if fin is None else float(fin.std()),
                    "best_iqm": float("nan") if best_iqm is None else best_iqm,
                    "best_mean": float("nan") if best is None else float(best.mean()),
                    "best_std": float("nan") if best is None else float(best.std()),
                    "best_at_steps": float("nan") if curve is None else float(curve.steps[curve.best_index]),
                    "final_norm_sweep": nz(fin_iqm, sn),
                    "best_norm_sweep": nz(best_iqm, sn),
                    "final_norm_published": nz(fin_iqm, pn),
                    "best_norm_published": nz(best_iqm, pn),
                    "published_norm_score": float("nan") if pub is None else float(pub["normalized_score"]),
                    "published_iqm_return": float("nan") if pub is None else float(pub["iqm_return"]),
                    **{f"{m} (median)": _metric_iqm(col.group(a, env), m) for m in sel.experiment.extra_metrics},
                }
            )
    return pd.DataFrame(rows)


def plot_columns(col: Collected, scores: Scores, table: Any, folder: Path) -> list[Path]:
    """``columns.png|pdf``: per env column (the x axis: stiffness values, envs), each algorithm's
    best-step score normalised by this sweep's normaliser, then each of the experiment's extra
    metrics (median over training); lines join the IQMs over seeds, dots are single runs."""
    import matplotlib.pyplot as plt

    sel = col.selection
    labels = [c.name for c in sel.envs]
    metrics = list(sel.experiment.extra_metrics)
    colors = _colors(sel.algos)
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.4), squeeze=False)
    x = np.arange(len(labels))
    t = table.set_index(["env", "algo"])
    # the sweep's normaliser when it ran, else the published one, else raw returns
    norm_name = sel.experiment.normalizer
    if norm_name and scores.sweep_norm:
        norm, key, what = scores.sweep_norm, "best_norm_sweep", f"best-step score / {norm_name}'s (this sweep)"
    elif norm_name and scores.published_norm:
        norm, key, what = scores.published_norm, "best_norm_published", f"best-step score / published {norm_name}"
    else:
        norm, key, what = {c: 1.0 for c in labels}, "best_iqm", "best-step return"
    for k, ax in enumerate(axes[0]):
        for j, a in enumerate(sel.algos):
            dx = (j - (len(sel.algos) - 1) / 2) * 0.06
            ys = []
            for i, env in enumerate(labels):
                if k == 0:
                    n = norm.get(env)
                    runs = scores.best.get((a, env))
                    ys.append(t.loc[(env, a), key] if (env, a) in t.index else np.nan)
                    pts = [] if runs is None or n is None else list(runs / n)
                else:
                    col_name = f"{metrics[k - 1]} (median)"
                    ys.append(t.loc[(env, a), col_name] if (env, a) in t.index else np.nan)
                    pts = _metric_medians(col.group(a, env), metrics[k - 1])
                ax.plot([i + dx] * len(pts), pts, ".", color=colors[a], alpha=0.5, ms=5)
            ax.plot(x + dx, ys, "-o", color=colors[a], label=a, ms=5, lw=1.4)
        ax.set_xticks(x, labels, rotation=15)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_ylabel(what if k == 0 else f"{metrics[k - 1]} (median over training)")
        ax.set_title("policy" if k == 0 else metrics[k - 1], fontsize=9)
    fig.suptitle(f"{sel.experiment.name} ({sel.scale}): IQM over seeds (lines) and single runs (dots)", fontsize=9)
    fig.tight_layout()
    # one legend for every panel (the same algorithms in each), beside the last one, off the data
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, folder, "columns")


def plot_series(col: Collected, scores: Scores, folder: Path, reps: int) -> tuple[list[Path], dict[str, Any]]:
    """``series.png|pdf``: for experiments whose rows are points of lines against a numeric setting
    (``Experiment.series``, e.g. the world model's pretraining steps), per env column the final and
    the best-step return of each line against that setting: IQM over seeds with 95 % stratified
    bootstrap CIs as error bars (rliable), dots for single runs. Returns the files and the plotted numbers."""
    import matplotlib.pyplot as plt

    sel = col.selection
    exp = sel.experiment
    lines: dict[str, list[tuple[float, str]]] = {}
    for a in sel.algos:
        if a in exp.series:
            name, x = exp.series[a]
            lines.setdefault(name, []).append((float(x), a))
    envs = [c.name for c in sel.envs]
    colors = _colors(list(lines))
    fig, axes = plt.subplots(len(envs), 2, figsize=(9.0, 3.4 * len(envs)), squeeze=False)
    numbers: dict[str, Any] = {}
    for row, env in zip(axes, envs, strict=True):
        for ax, (what, per_run) in zip(row, (("final", scores.final), ("best-step", scores.best)), strict=True):
            drawn = 0
            for name, points in lines.items():
                xs, ys, lo, hi = [], [], [], []
                for x, a in sorted(points):
                    runs = per_run.get((a, env))
                    if runs is None or len(runs) == 0:
                        continue
                    point, ci = iqm_interval(runs, reps)
                    xs.append(x)
                    ys.append(point)
                    lo.append(ci[0])
                    hi.append(ci[1])
                    ax.plot([x] * len(runs), runs, ".", color=colors[name], alpha=0.5, ms=5)
                    numbers.setdefault(env, {}).setdefault(what, {})[a] = {
                        "x": x,
                        "iqm": point,
                        "ci": [ci[0], ci[1]],
                        "runs": len(runs),
                    }
                if xs:
                    seeds = sorted({len(per_run[(a, env)]) for _, a in points if (a, env) in per_run})
                    label = f"{name} ({'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''})"
                    y, err = np.array(ys), np.array([np.array(ys) - lo, np.array(hi) - ys])
                    ax.errorbar(xs, y, yerr=err, fmt="-o", color=colors[name], label=label, ms=5, lw=1.5, capsize=3)
                    drawn += 1
            ax.set_xscale("log")
            ax.set_xlabel(exp.series_axis or "setting")
            ax.set_ylabel(f"{what} eval return (IQM)")
            ax.set_title(f"{env}: {what} evaluation", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if drawn:
                _panel_legend(ax)
            else:
                ax.text(0.5, 0.5, "no completed run", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle(
        f"{exp.name} ({sel.scale}, preset {sel.preset}): IQM over seeds, bars 95 % bootstrap CI, dots single runs",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, folder, "series"), numbers


def _metric_medians(runs: Sequence[Any], metric: str) -> list[float]:
    """Each run's median of logged ``metric`` (runs that do not log it are left out)."""
    from pwm_bench.store import load_metrics

    meds = []
    for r in runs:
        df = load_metrics(r.cell.run_dir)
        if metric in df and df[metric].notna().any():
            meds.append(float(df[metric].median()))
    return meds


def _metric_iqm(runs: Sequence[Any], metric: str) -> float:
    """IQM over ``runs`` of each run's median of logged ``metric`` (NaN if no run logs it)."""
    meds = _metric_medians(runs, metric)
    return iqm(np.array(meds)) if meds else float("nan")


def _markdown(df: Any, sel: Selection) -> str:
    def f(x: float, digits: int = 1) -> str:
        return "—" if x != x else f"{x:.{digits}f}"

    head = (
        "| env | algo | seeds | final IQM | final mean ± std | best IQM | best mean ± std | best at steps "
        "| best / sweep PPO | best / published PPO | published (PPO-norm.) | published IQM return |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    extra = [f"{m} (median)" for m in sel.experiment.extra_metrics]
    if extra:
        first, second = head.split("\n")[:2]
        head = first + "".join(f" {c} |" for c in extra) + "\n" + second + "---:|" * len(extra) + "\n"
    lines = [
        f"| {r['env']} | {r['algo']} | {r['seeds']} | {f(r['final_iqm'])} | {f(r['final_mean'])} ± "
        f"{f(r['final_std'])} | {f(r['best_iqm'])} | {f(r['best_mean'])} ± {f(r['best_std'])} | "
        f"{f(r['best_at_steps'], 0)} | {f(r['best_norm_sweep'], 2)} | {f(r['best_norm_published'], 2)} | "
        f"{f(r['published_norm_score'], 2)} | {f(r['published_iqm_return'])} |"
        + "".join(f" {f(r[c], 3)} |" for c in extra)
        for r in df.to_dict("records")
    ]
    note = (
        f"\n{sel.experiment.name}, scale {sel.scale} (preset {sel.preset}). Returns: undiscounted evaluation "
        "returns of the deterministic policy. final: each run's last evaluation; best: the evaluation step "
        "where the IQM over seeds peaks, each run's return there (the PWM paper's protocol). Normalised: "
        "divided by PPO's max-over-training IQM return, of this sweep or published.\n"
    )
    return head + "\n".join(lines) + "\n" + note


def _config_hash(run_dir: Path) -> str:
    f = run_dir / "config.yaml"
    return hashlib.sha1(f.read_bytes()).hexdigest()[:12] if f.exists() else ""


def manifest(col: Collected, files: Sequence[Path], numbers: dict[str, Any], out: Path) -> dict[str, Any]:
    from pwm_bench.run import git_commit, package_versions

    sel = col.selection
    runs = []
    for r in col.runs:
        runs.append(
            {
                "run_id": r.cell.run_dir.name,
                "path": str(r.cell.run_dir.relative_to(out))
                if r.cell.run_dir.is_relative_to(out)
                else str(r.cell.run_dir),
                "algo": r.cell.algo_label,
                "algorithm": r.cell.algo,
                "env": r.cell.env,
                "env_label": r.cell.env_label,
                "seed": r.cell.seed,
                "preset": r.cell.preset,
                "cell_tag": r.cell.tag,
                "config_sha1": _config_hash(r.cell.run_dir),
                "commit": r.summary.get("git_commit") or r.config.get("git_commit"),
                "resumed_commits": r.config.get("resumed_commits", []),
                "versions": r.summary.get("versions", {}),
                "env_steps": r.summary.get("env_steps"),
                "evaluations": len(r.returns),
                "final_eval_return": r.summary.get("final_eval_return"),
                "device": r.summary.get("device"),
            }
        )
    return {
        "experiment": sel.experiment.name,
        "scale": sel.scale,
        "preset": sel.preset,
        "algos": list(sel.algos),
        "envs": [{"label": c.name, "env": c.env, "options": dict(c.options)} for c in sel.envs],
        "seeds": list(sel.seeds),
        "overrides": {k: str(v) for k, v in sel.overrides.items()},
        "bootstrap": {"reps": numbers.get("_reps"), "seed": 0, "confidence": 0.95},
        "plotted_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "plotted_by": {"commit": git_commit(), "versions": package_versions()},
        "cells": len(col.cells),
        "runs_used": runs,
        "warnings": list(col.warnings),
        "numbers": {k: v for k, v in numbers.items() if not k.startswith("_")},
        "files": [p.name for p in files],
    }


def plot_experiment(sel: Selection, out: Path, reps: int = BOOTSTRAP_REPS) -> PlotResult:
    """Read ``sel``'s runs from the store under ``out`` and write its figures, table and manifest."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    out = Path(out)
    col = collect(sel, out)
    folder = figures_dir(sel, out)
    files: list[Path] = []
    numbers: dict[str, Any] = {"_reps": reps}
    if not col.runs:
        col.warnings.append("no completed run in the store for this selection; nothing plotted")
    else:
        scores = compute_scores(col, reps, out)
        files += plot_curves(col, scores, folder)
        agg_files, agg_numbers = plot_aggregates(col, scores, folder, reps)
        files += agg_files
        numbers.update(agg_numbers)
        files += plot_profiles(col, scores, folder, reps)
        imp_files, imp_numbers = plot_improvement(col, scores, folder, reps)
        files += imp_files
        if imp_numbers:
            numbers["probability_of_improvement"] = imp_numbers
        table = score_table(col, scores)
        if sel.experiment.extra_metrics:
            files += plot_columns(col, scores, table, folder)
        if sel.experiment.series:
            series_files, series_numbers = plot_series(col, scores, folder, reps)
            files += series_files
            numbers["series"] = series_numbers
        atomic_write_text(folder / "table.csv", table.to_csv(index=False))
        atomic_write_text(folder / "table.md", _markdown(table, sel))
        files += [folder / "table.csv", folder / "table.md"]
    man = folder / "manifest.json"
    atomic_write_json(man, manifest(col, [*files, man], numbers, out))
    return PlotResult(folder, [*files, man], table if col.runs else None, col.warnings)
