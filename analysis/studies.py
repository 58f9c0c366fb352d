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


def _write_table(folder: Path, df: Any, note: str, fmt: str = ".3f") -> list[Path]:
    from pwm_bench.store import atomic_write_text

    def cell(v: Any) -> str:
        return format(v, fmt) if isinstance(v, float) else str(v)

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


def _loglog_slope(hs: list[int], y: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log h`` over the positive values (NaN if fewer than 2)."""
    ok = [(math.log(h), math.log(v)) for h, v in zip(hs, y, strict=True) if v > 0]
    if len(ok) < 2:
        return math.nan
    x, yy = np.array(ok).T
    return float(np.polyfit(x, yy, 1)[0])


_SOURCE_COLORS = {
    "simulator": "k",
    "model H=3": "tab:orange",
    "model H=16": "tab:green",
    "PWM model": "tab:red",
    "ke 5e+04": "tab:blue",
    "ke 1e+05": "tab:purple",
    "ke 2e+05": "tab:brown",
}
"""Colours of the gradient sources, the same in every panel (stiffer simulators by their ke)."""


def _source_color(label: str) -> str:
    for key, color in _SOURCE_COLORS.items():
        if key != "simulator" and key in label:
            return color
    return "k" if label.startswith("simulator") else "tab:gray"


def _gradient_study_outputs(
    folder: Path, hs: list[int], panels: dict[str, dict[str, Any]], samples: int, protocol: str, note: str
) -> tuple[list[Path], Any, str, dict[str, Any]]:
    """Raw gradients, curves, figure, table and text of a variance/ESNR study.

    ``panels``: env → ``{"grads": {source: (n_h, S, P)}, "returns": {source: [..]}, "num_params": P}``.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    import torch

    from pwm_bench.analysis import esnr
    from pwm_bench.analysis.figures import _save
    from pwm_bench.store import atomic_save, atomic_write_text

    sns.set_theme(style="whitegrid", context="paper")
    buf = io.BytesIO()
    torch.save({"horizons": hs, "protocol": protocol, "grads": {k: p["grads"] for k, p in panels.items()}}, buf)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(folder / "grads.pt", lambda fh: fh.write(buf.getvalue()))
    rows, curves = [], {}
    for env, panel in panels.items():
        curves[env] = {}
        for src, g in panel["grads"].items():
            var, snr = esnr.curves(g)
            ret = panel["returns"][src]
            curves[env][src] = {"variance": var, "esnr": snr, "mean_return": ret}
            for h, v, e, r in zip(hs, var, snr, ret, strict=True):
                rows.append({"env": env, "source": src, "h": h, "variance": v, "esnr": e, "mean_return": r})
    long = pd.DataFrame(rows)
    atomic_write_text(folder / "curves.csv", long.to_csv(index=False))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.4 * len(panels)), squeeze=False)
    for (env, cs), row in zip(curves.items(), axes, strict=True):
        for key, ax, label in zip(("variance", "esnr"), row, ("Var[∇J] (mean over parameters)", "ESNR"), strict=True):
            for src, c in cs.items():
                ax.plot(hs, c[key], color=_source_color(src), lw=1.4, marker="." if len(hs) < 10 else None, label=src)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("horizon h [control steps of 1/60 s]")
            ax.set_ylabel(label)
            ax.set_title(f"{env}: policy of {panels[env]['num_params']} parameters", fontsize=9)
            ax.legend(fontsize=7)
    inputs = "policy inputs detached (reference)" if protocol == "reference" else "full gradient"
    fig.suptitle(
        f"gradient of the h-step return w.r.t. the policy's parameters, {samples} noise samples per h, {inputs}",
        fontsize=9,
    )
    fig.tight_layout()
    files = _save(fig, folder, "esnr")
    picks = [h for h in (1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64) if h in hs] or hs
    df = long[long.h.isin(picks)].reset_index(drop=True)
    summary = {
        env: {
            src: {
                "esnr_first": c["esnr"][0],
                "esnr_last": c["esnr"][-1],
                "variance_first": c["variance"][0],
                "variance_last": c["variance"][-1],
                "esnr_loglog_slope": _loglog_slope(hs, c["esnr"]),
                "variance_loglog_slope": _loglog_slope(hs, c["variance"]),
            }
            for src, c in cs.items()
        }
        for env, cs in curves.items()
    }
    width = max(len(src) for cs in curves.values() for src in cs)
    lines = []
    for env, ss in summary.items():
        lines.append(
            f"{env:<{width}} {'ESNR h=' + str(hs[0]):>12} {'ESNR h=' + str(hs[-1]):>12} {'slope':>7}   "
            f"{'Var h=' + str(hs[0]):>10} {'Var h=' + str(hs[-1]):>10} {'slope':>7}"
        )
        lines += [
            f"{src:<{width}} {s['esnr_first']:12.3g} {s['esnr_last']:12.3g} {s['esnr_loglog_slope']:7.2f}   "
            f"{s['variance_first']:10.3g} {s['variance_last']:10.3g} {s['variance_loglog_slope']:7.2f}"
            for src, s in ss.items()
        ]
    text = "\n".join(lines) + "\n(slope: least-squares slope of log value against log h)"
    files += _write_table(folder, df, note, fmt=".3g")
    files += [folder / "grads.pt", folder / "curves.csv"]
    return files, df, text, {"summary": summary, "curves": curves, "horizons": hs}


def _esnr(scale: str, protocol: str | None, folder: Path) -> tuple[list[Path], Any, str, dict[str, Any]]:
    import torch

    from pwm_bench.analysis import esnr

    torch.set_num_threads(1)
    protocol = protocol or "full"
    res = esnr.compute(folder.parents[1], scale, protocol)
    panel = {"grads": res["grads"], "returns": res["returns"], "num_params": res["num_params"]}
    note = (
        "Double pendulum from rest (hanging), a fresh policy tanh(mu(z) + sigma eps) on a "
        f"{esnr.SCALES[scale].latent}-d latent; {res['samples']} samples of eps per horizon, shared by the three "
        "sources; the models are trained with horizons 3 and 16 on uniform-random data. Raw per-sample "
        "gradients: grads.pt; every horizon: curves.csv. "
        "Nothing is added to any curve (the reference's plotting script adds a synthetic term to the simulator's)."
    )
    fits = "; ".join(
        f"{k}: held-out consistency {m.get('heldout/consistency', math.nan):.3g}, "
        f"reward {m.get('heldout/reward', math.nan):.3g} (reward units of the data's std)"
        for k, m in res["models"].items()
    )
    note += f" Models after {esnr.SCALES[scale].wm_steps} pretraining steps: {fits}."
    files, df, text, numbers = _gradient_study_outputs(
        folder, res["horizons"], {esnr.ENV: panel}, res["samples"], protocol, note
    )
    text += "\n" + fits
    numbers.update(models=res["models"], dataset=res["dataset"])
    return files, df, text, numbers


def _esnr_locomotion(scale: str, protocol: str | None, folder: Path) -> tuple[list[Path], Any, str, dict[str, Any]]:
    import torch

    from pwm_bench.analysis import esnr

    torch.set_num_threads(1)
    protocol = protocol or "full"
    res = esnr.compute_locomotion(folder.parents[1], scale, protocol)
    note = (
        "Hopper and ant from their default pose at rest (no stochastic init, no resets within a rollout), a fresh "
        "policy tanh(mu(z) + sigma eps) on the latent of the pretrained PWM world model (its encoder also feeds "
        "the policy in the simulator rollouts); the same eps for every source. Stiffer contact: kd = ke / 10 "
        "(the paper's stiff hopper: ke 1e5). "
        "World models: "
        + "; ".join(f"{env}: {p['world_model']}" for env, p in res["envs"].items())
        + (f". Skipped (no pretrained model): {', '.join(res['skipped'])}." if res["skipped"] else ".")
    )
    files, df, text, numbers = _gradient_study_outputs(
        folder, res["horizons"], res["envs"], res["samples"], protocol, note
    )
    numbers.update(world_models={env: p["world_model"] for env, p in res["envs"].items()}, skipped=res["skipped"])
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
register_study(
    Study(
        "esnr",
        "gradient variance and ESNR against horizon: double pendulum, simulator vs world models (H=3, H=16)",
        _esnr,
        protocols=("full", "reference"),
    )
)
register_study(
    Study(
        "esnr-locomotion",
        "gradient variance and ESNR against horizon on hopper and ant: simulator (default and stiffer contact) vs "
        "the PWM model",
        _esnr_locomotion,
        protocols=("full", "reference"),
    )
)
