"""Studies that need no sweep: ``pwm-bench plot NAME`` computes them and writes their figures.

Each study is small enough to compute inside ``plot`` (seconds to minutes on a CPU). Its output
goes to ``<out>/figures/<name>[-<scale>][-<protocol>]/`` like an experiment's: figures as PNG and
PDF, ``table.csv`` / ``table.md`` and ``manifest.json`` (the numbers, commit and versions).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pwm_bench.errors import UsageError, unknown_choice


@dataclasses.dataclass
class StudyResult:
    """What a study wrote: its folder, files, a table (pandas DataFrame) and a text to print."""

    folder: Path
    files: list[Path]
    table: Any
    text: str


@dataclasses.dataclass(frozen=True)
class Study:
    """A study computed by ``pwm-bench plot NAME``.

    Attributes:
        name: registry name.
        description: one line for ``pwm-bench list``.
        run: ``run(scale, protocol, folder) -> (files, table, text, numbers)``.
        scales: the scales it defines (``smoke`` for CI, ``cpu`` the default).
        protocols: its protocols, the default first (empty: none).
    """

    name: str
    description: str
    run: Callable[[str, str | None, Path], tuple[list[Path], Any, str, dict[str, Any]]]
    scales: tuple[str, ...] = ("smoke", "cpu")
    protocols: tuple[str, ...] = ()


_STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    _STUDIES[study.name] = study
    return study


def studies() -> dict[str, Study]:
    """Registered studies by name."""
    return dict(_STUDIES)


def run_study(name: str, out: Path, scale: str = "cpu", protocol: str | None = None) -> StudyResult:
    """Compute study ``name`` and write its outputs under ``<out>/figures/``.

    Raises:
        UsageError: unknown study, scale or protocol.
    """
    from pwm_bench.run import git_commit, package_versions
    from pwm_bench.store import atomic_write_json

    if name not in _STUDIES:
        raise unknown_choice("study", name, sorted(_STUDIES))
    st = _STUDIES[name]
    if scale not in st.scales:
        raise unknown_choice(f"scale of study '{name}'", scale, st.scales)
    if protocol is not None and protocol not in st.protocols:
        raise (
            unknown_choice(f"protocol of study '{name}'", protocol, st.protocols)
            if st.protocols
            else UsageError(f"study '{name}' has no --protocol")
        )
    protocol = protocol or (st.protocols[0] if st.protocols else None)
    parts = [name] + ([scale] if scale != "cpu" else []) + ([protocol] if protocol else [])
    folder = Path(out) / "figures" / "-".join(parts)
    files, table, text, numbers = st.run(scale, protocol, folder)
    man = folder / "manifest.json"
    atomic_write_json(
        man,
        {
            "study": name,
            "scale": scale,
            "protocol": protocol,
            "computed_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git_commit(),
            "versions": package_versions(),
            "numbers": numbers,
            "files": [p.name for p in [*files, man]],
        },
    )
    return StudyResult(folder, [*files, man], table, text)


# --------------------------------------------------------------------------------------------------
# optimality gap


def _write_table(folder: Path, df: Any, note: str) -> list[Path]:
    from pwm_bench.store import atomic_write_text

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    atomic_write_text(folder / "table.csv", df.to_csv(index=False))
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    atomic_write_text(folder / "table.md", "\n".join(lines) + "\n\n" + note + "\n")
    return [folder / "table.csv", folder / "table.md"]


def _optimality_gap(scale: str, protocol: str | None, folder: Path) -> tuple[list[Path], Any, str, dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    import torch

    from pwm_bench.analysis import ball_wall as bw
    from pwm_bench.analysis.figures import _save

    sns.set_theme(style="whitegrid", context="paper")
    torch.set_num_threads(1)  # small models: one thread is fastest and gives the same numbers everywhere
    theta, target = bw.grid()
    files: list[Path] = []
    if protocol == "reference":
        models: dict[str, Any] = {}
        rows = bw.reference_protocol(models)
        df = pd.DataFrame(
            [
                {
                    "model": k,
                    "model_error": v["model_error"],
                    "optimality_gap": v["gap"],
                    "published_model_error": bw.REFERENCE_TABLE[k][0],
                    "published_optimality_gap": bw.REFERENCE_TABLE[k][1],
                }
                for k, v in rows.items()
            ]
        )
        text = "model      model error   optimality gap   (published)\n" + "\n".join(
            f"{r.model:<10} {r.model_error:11.3f}   {r.optimality_gap:14.3f}   "
            f"({r.published_model_error:.3f} / {r.published_optimality_gap:.3f})"
            for r in df.itertuples()
        )
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(theta, target, color="k", lw=1.5, label="true J")
        for (name, model), color in zip(models.items(), ("tab:orange", "tab:green"), strict=True):
            ax.plot(theta, bw.predict(model, theta), color=color, lw=1.2, label=f"{name} model (seed 0)")
            ax.plot(rows[name]["theta"], rows[name]["gap"] + float(target.min()), "x", color=color, ms=9, mew=2)
        ax.plot(rows["true"]["theta"], float(target[bw.REFERENCE_TRUE_INDEX]), "x", color="k", ms=9, mew=2)
        ax.set_xlabel("launch angle θ [rad]")
        ax.set_ylabel("J(θ) = −distance [m]")
        ax.set_title("optimality gap, reference protocol: the points each row reports (x)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files += _save(fig, folder, "landscape")
        note = (
            "Reference protocol (the paper's script): the true row is grid index 328; the 'ReLU' row (a Mish + "
            "LayerNorm MLP) takes its argmin over the first half of the grid; both model rows report the model's "
            "predicted value; the SimNorm decoder's gradients accumulate across steps."
        )
        files += _write_table(folder, df, note)
        return files, df, text, {"rows": rows}

    seeds = (0, 1) if scale == "smoke" else tuple(range(10))
    starts = 16 if scale == "smoke" else 64
    res = bw.fair_protocol(seeds=seeds, starts=starts)
    df = pd.DataFrame(
        [
            {
                "model": bw.FAIR_LABELS[m],
                "seeds": s["seeds"],
                "model_error": s["model_error"],
                "gap_mean": s["gap_mean"],
                "gap_ci_low": s["gap_ci"][0],
                "gap_ci_high": s["gap_ci"][1],
            }
            for m, s in res["summary"].items()
        ]
    )
    text = "model                               model error   optimality gap (mean, 95 % CI)\n" + "\n".join(
        f"{r.model:<35} {r.model_error:11.3f}   {r.gap_mean:7.3f} [{r.gap_ci_low:.3f}, {r.gap_ci_high:.3f}]"
        for r in df.itertuples()
    )
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    colors = dict(zip(bw.FAIR_MODELS, ("k", "tab:red", "tab:orange", "tab:green"), strict=True))
    ax.plot(theta, target, color="k", lw=1.5, label="true J")
    for m in bw.FAIR_MODELS[1:]:
        ax.plot(theta, bw.predict(res["models"][m], theta), color=colors[m], lw=1.0, label=bw.FAIR_LABELS[m])
    for m in bw.FAIR_MODELS:
        _, end = res["endpoints"][m]
        ax.plot(end, bw.gap_objective(torch.as_tensor(end)).numpy(), "x", color=colors[m], ms=6, alpha=0.7)
    ax.set_xlabel("launch angle θ [rad]")
    ax.set_ylabel("J(θ) = −distance [m]")
    ax.set_title(f"models (seed {seeds[0]}) and where gradient descent ends (x, on the true J)", fontsize=9)
    ax.legend(fontsize=7)
    for i, m in enumerate(bw.FAIR_MODELS):
        s = res["summary"][m]
        lo, hi = s["gap_ci"]
        bx.barh(i, s["gap_mean"], color=colors[m], alpha=0.7)
        if not math.isnan(lo):
            bx.errorbar(s["gap_mean"], i, xerr=[[s["gap_mean"] - lo], [hi - s["gap_mean"]]], color="k", capsize=3)
    bx.set_yticks(range(len(bw.FAIR_MODELS)), [bw.FAIR_LABELS[m].split(" (")[0] for m in bw.FAIR_MODELS])
    bx.set_ylim(len(bw.FAIR_MODELS) - 0.5, -0.5)
    bx.set_xlabel("optimality gap: true J at the end − J* [m]")
    bx.set_title(f"{len(seeds)} seeds × {starts} starts, 95 % CI over seeds", fontsize=9)
    fig.tight_layout()
    files += _save(fig, folder, "landscape")
    note = (
        f"Fair protocol: per seed, each model is trained (every gradient zeroed each step), then gradient descent "
        f"(Adam, 500 steps of lr 0.02 rad) runs from {starts} start angles drawn uniformly; the gap "
        f"is the true J where it ends minus J* = {res['j_star']:.3f}, averaged over the starts; mean and "
        f"Student-t 95 % CI over {len(seeds)} seeds."
    )
    files += _write_table(folder, df, note)
    numbers = {"summary": res["summary"], "per_seed": res["per_seed"], "j_star": res["j_star"]}
    return files, df, text, numbers


def _wall_toy(scale: str, protocol: str | None, folder: Path) -> tuple[list[Path], Any, str, dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from pwm_bench.analysis import ball_wall as bw
    from pwm_bench.analysis.figures import _save

    sns.set_theme(style="whitegrid", context="paper")
    res = bw.wall_toy(points=401 if scale == "smoke" else 2001)
    th = res["theta"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    for a in (ax, bx):
        a.fill_between(th, 0, 1, where=res["stuck"], color="grey", alpha=0.15, lw=0, transform=a.get_xaxis_transform())
    ax.plot(th, res["x"], color="k", lw=1.5, label="no noise")
    bx.plot(th, res["grad"], color="k", lw=1.5, label="dx/dθ (autograd, no noise)")
    for s, color in zip(bw.WALL_NOISE, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        mean, grad = res["smoothed"][s]
        ax.plot(th, mean, color=color, lw=1.2, label=f"E[x], θ noise σ = {s} rad")
        bx.plot(th, grad, color=color, lw=1.2, label=f"dE[x]/dθ, σ = {s} rad")
    ax.set_xlabel("launch angle θ [rad]")
    ax.set_ylabel("distance after 2 s [m]")
    ax.set_title("wall toy: 10 m/s, g = 10 m/s², wall 5 m away, 2 m high (grey: ball sticks)", fontsize=9)
    ax.legend(fontsize=7)
    bx.set_xlabel("launch angle θ [rad]")
    bx.set_ylabel("gradient [m/rad]")
    bx.set_ylim(-40, 40)
    bx.set_title("true gradient is 0 on the plateau; the smoothed one points over the wall", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    files = _save(fig, folder, "wall_toy")
    df = pd.DataFrame([{"method": k, "distance_after_ascent_m": v} for k, v in res["ascent"].items()])
    text = (
        f"share of angles in [0, π/2] where the ball sticks: {res['stuck_share']:.3f}; largest |dx/dθ| there: "
        f"{res['grad_on_plateau']:.3g}\ngradient ascent from θ = 0.2 rad (300 steps of 0.01), final distance [m]:\n"
        + "\n".join(f"  {r.method:<14} {r.distance_after_ascent_m:6.2f}" for r in df.itertuples())
        + f"\nbest distance on the grid: {float(np.max(res['x'])):.2f} m"
    )
    note = (
        "Gradient ascent from θ = 0.2 rad (on the plateau where the wall catches the ball): first order uses the "
        "autograd gradient; the smoothed rows use the zeroth-order gradient of the expected distance under "
        "Gaussian noise on θ (a dense quadrature of the Gaussian integral)."
    )
    files += _write_table(folder, df, note)
    numbers = {"stuck_share": res["stuck_share"], "grad_on_plateau": res["grad_on_plateau"], "ascent": res["ascent"]}
    return files, df, text, numbers


register_study(
    Study(
        "optimality-gap",
        "the ball thrown at a wall: optimality gap of optimising through models of J (protocols fair, reference)",
        _optimality_gap,
        protocols=("fair", "reference"),
    )
)
register_study(
    Study(
        "wall-toy",
        "stochastic smoothing of a throw at a wall where the ball sticks (landscape and gradients)",
        _wall_toy,
    )
)
