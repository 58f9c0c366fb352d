"""Experiments, sweeps and the figures/tables/manifest that ``pwm-bench plot`` derives from the store."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from pwm_bench.analysis import aggregate, experiments, figures, sweep
from pwm_bench.analysis.experiments import EnvCase, Experiment, Scale, select
from pwm_bench.store import atomic_write_json, atomic_write_text, atomic_write_yaml, read_summary

from .conftest import PPO_TINY, cli
from .test_run import SignalAt

# --------------------------------------------------------------------------------------------------
# a synthetic store: runs written straight into the store's layout, with known evaluation series

SYNTH = Experiment(
    name="test-synthetic",
    description="test only",
    algos=("ppo", "shac"),
    envs=(EnvCase("hopper"), EnvCase("pointmass")),
    scales={"smoke": Scale(preset="smoke", seeds=4)},
    normalizer="ppo",
    reference="pwm_single_task",
    focus="shac",
)

STEPS = [0, 100, 200, 300]
# seed -> returns at STEPS; at 200 the IQM over seeds peaks (16), at 300 (the final) it is 5
PPO_RETURNS = [[0, 10, 20, 5], [0, 30, 10, 5], [0, 20, 40, 5], [0, 0, 12, 5]]


def write_run(cell: sweep.Cell, steps: list[float], returns: list[float], status: str = "completed") -> None:
    """A run folder as a finished run leaves it (config, metrics with evaluations, summary)."""
    atomic_write_yaml(
        cell.run_dir / "config.yaml",
        {"algo": cell.algo, "env": cell.env, "seed": cell.seed, "preset": cell.preset, "git_commit": "abc123"},
    )
    df = pd.DataFrame({"env_steps": steps, "eval/episode_return": returns, "loss/actor": 0.0})
    atomic_write_text(cell.run_dir / "metrics.csv", df.to_csv(index=False))
    atomic_write_json(
        cell.run_dir / "summary.json",
        {
            "status": status,
            "env_steps": steps[-1],
            "final_eval_return": returns[-1],
            "best_eval_return": max(returns),
            "git_commit": "abc123",
            "versions": {"torch": "x"},
        },
    )


def synthetic_store(out: Path, seeds: int = 4) -> dict[tuple[str, str, int], sweep.Cell]:
    sel = select(SYNTH, "smoke", seeds=seeds)
    cells = {(c.algo, c.env_label, c.seed): c for c in aggregate.selection_cells(sel, out)}
    for (algo, env, seed), c in cells.items():
        if seed >= 4:
            continue
        # shac scores twice ppo's; the point mass's returns are 3x the hopper's (same normalised scores)
        factor = (2.0 if algo == "shac" else 1.0) * (3.0 if env == "pointmass" else 1.0)
        write_run(c, STEPS, [factor * r for r in PPO_RETURNS[seed]])
    return cells


def test_iqm_curve_and_scores_follow_the_papers_protocol(out: Path) -> None:
    synthetic_store(out)
    col = aggregate.collect(select(SYNTH, "smoke"), out)
    assert not col.warnings
    scores = aggregate.compute_scores(col, reps=200, out=out)
    curve = scores.curves[("ppo", "hopper")]
    mat = np.array(PPO_RETURNS, dtype=float)
    assert curve.steps.tolist() == STEPS
    assert curve.iqm == pytest.approx(scipy.stats.trim_mean(mat, 0.25, axis=0))
    assert curve.iqm[2] == pytest.approx(16.0)  # (12 + 20) / 2: the middle two of 10, 12, 20, 40
    assert np.all(curve.ci[0] <= curve.iqm + 1e-9) and np.all(curve.iqm <= curve.ci[1] + 1e-9)
    # best: each run's return at the step where the IQM peaks (200), not each run's own maximum
    assert scores.best[("ppo", "hopper")].tolist() == [20, 10, 40, 12]
    assert scores.final[("ppo", "hopper")].tolist() == [5, 5, 5, 5]
    assert scores.sweep_norm == {"hopper": pytest.approx(16.0), "pointmass": pytest.approx(48.0)}
    assert scores.published_norm == {"hopper": pytest.approx(4742.3)}  # the point mass has none

    table = figures.score_table(col, scores).set_index(["env", "algo"])
    ppo, shac = table.loc[("hopper", "ppo")], table.loc[("hopper", "shac")]
    assert ppo["best_iqm"] == pytest.approx(16.0) and ppo["best_at_steps"] == 200
    assert ppo["final_iqm"] == pytest.approx(5.0)
    assert ppo["best_norm_sweep"] == pytest.approx(1.0) and shac["best_norm_sweep"] == pytest.approx(2.0)
    assert shac["best_norm_published"] == pytest.approx(32.0 / 4742.3)
    assert shac["published_norm_score"] == pytest.approx(1.02)  # the paper's SHAC on the hopper
    assert np.isnan(table.loc[("pointmass", "shac")]["published_norm_score"])

    # aggregates over envs are rliable's on the normalised (runs x envs) matrix
    point, ci = aggregate.aggregate(scores.best, ["ppo", "shac"], ["hopper", "pointmass"], scores.sweep_norm, 200)
    m = np.stack([np.array([20, 10, 40, 12]) / 16.0] * 2, axis=1)
    assert point["ppo"][1] == pytest.approx(scipy.stats.trim_mean(m, 0.25, axis=None))
    assert point["shac"][2] == pytest.approx(2 * m.mean())
    assert point["ppo"][3] == pytest.approx(np.mean(np.maximum(1 - m, 0)))  # optimality gap
    assert ci["ppo"].shape == (2, 4)
    # P(shac > ppo): 13 of the 16 pairs of best-step returns on each env (40 vs 40 and 20 vs 20 count half)
    p, _ = aggregate.probability_of_improvement(
        scores.best, "shac", ["ppo"], ["hopper", "pointmass"], {"hopper": 1.0, "pointmass": 1.0}, 200
    )
    assert p["ppo"] == pytest.approx(13 / 16)


def test_curves_of_runs_with_different_schedules_share_one_grid() -> None:
    cell = sweep.Cell("ppo", "pointmass", 0, "smoke", {}, Path("x/cmp-smoke-aaaaaa-s0"))
    a = aggregate.RunData(cell, np.array([0.0, 100, 200, 300]), np.array([0.0, 10, 20, 30]), {}, {})
    b = aggregate.RunData(cell, np.array([0.0, 150, 250]), np.array([0.0, 15, 5]), {}, {})
    steps, mat = aggregate.curve_matrix([a, b])
    assert steps.tolist() == [0, 100, 150, 200, 250]  # up to the shortest run
    assert mat[0].tolist() == [0, 10, 15, 20, 25]
    assert mat[1].tolist() == pytest.approx([0, 10, 15, 10, 5])


def test_plot_writes_figures_table_and_manifest_and_warns(out: Path) -> None:
    cells = synthetic_store(out, seeds=5)  # seed 4 is never written: a missing cell
    # a copied run: seed 3 of shac on the point mass gets seed 2's series
    shutil.copy(cells[("shac", "pointmass", 2)].run_dir / "metrics.csv", cells[("shac", "pointmass", 3)].run_dir)
    # an unfinished run is left out
    write_run(cells[("ppo", "pointmass", 4)], [0, 100], [1.0, 2.0], status="interrupted")
    sel = select(SYNTH, "smoke", seeds=5)
    res = figures.plot_experiment(sel, out, reps=200)
    assert res.folder == out / "figures" / "test-synthetic-smoke-5seeds"  # not the 4 seeds of the scale
    names = {p.name for p in res.files}
    for stem in ("curves", "aggregate", "aggregate_published", "profiles", "improvement"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (res.folder / f"{stem}.png").stat().st_size > 1000
    assert {"table.csv", "table.md", "manifest.json"} <= names
    text = "\n".join(res.warnings)
    assert "missing cell: ppo on hopper seed 4" in text
    assert "4 of 5 seeds completed" in text
    assert "interrupted, not completed" in text
    assert "identical evaluation series" in text and "shac/pointmass/seed 3" in text

    man = json.loads((res.folder / "manifest.json").read_text())
    assert man["experiment"] == "test-synthetic" and man["scale"] == "smoke" and man["seeds"] == [0, 1, 2, 3, 4]
    assert len(man["runs_used"]) == 16 and man["cells"] == 20
    run = man["runs_used"][0]
    assert run["commit"] == "abc123" and run["versions"] == {"torch": "x"}
    assert len(run["config_sha1"]) == 12 and run["cell_tag"] in run["run_id"]
    assert man["warnings"] == res.warnings
    assert "probability_of_improvement" in man["numbers"]
    table = pd.read_csv(res.folder / "table.csv")
    assert set(table["algo"]) == {"ppo", "shac"} and len(table) == 4
    assert "| hopper | ppo | 4 |" in (res.folder / "table.md").read_text()

    # a pure function of the store: the same store gives the same table and figures
    before = {p.name: p.read_bytes() for p in res.files if p.suffix in (".csv", ".md", ".png")}
    again = figures.plot_experiment(sel, out, reps=200)
    assert {p.name: p.read_bytes() for p in again.files if p.suffix in (".csv", ".md", ".png")} == before


def test_plot_of_a_sweep_half_done_draws_what_there_is(out: Path) -> None:
    cells = synthetic_store(out)
    for (algo, env, _), c in cells.items():
        if algo == "shac" or env == "pointmass":  # the focus algorithm, and a whole env, not run yet
            shutil.rmtree(c.run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty panel draws no legend
        res = figures.plot_experiment(select(SYNTH, "smoke"), out, reps=50)
    names = {p.name for p in res.files}
    assert {"curves.png", "aggregate.png", "profiles.png", "table.csv"} <= names
    assert "improvement.png" not in names
    assert "improvement: shac has no completed run; figure not drawn" in res.warnings


SERIES = Experiment(
    name="test-series",
    description="test only",
    algos=("ppo-a", "ppo-b", "shac-a", "shac-b"),
    envs=(EnvCase("hopper"),),
    scales={"smoke": Scale(preset="smoke", seeds=4)},
    variants={f"{a}-{v}": (a, {"eval_episodes": n}) for a in ("ppo", "shac") for v, n in (("a", 3), ("b", 4))},
    series={"ppo-a": ("ppo", 1e3), "ppo-b": ("ppo", 1e4), "shac-a": ("shac", 1e3), "shac-b": ("shac", 1e4)},
    series_axis="setting [steps]",
    normalizer=None,
    focus=None,
)


def test_plot_draws_each_series_against_its_setting(out: Path) -> None:
    sel = select(SERIES, "smoke")
    cells = aggregate.selection_cells(sel, out)
    for c in cells:
        if c.algo_label == "shac-b":
            continue  # one point of the shac line has no run yet
        factor = {"ppo-a": 1.0, "ppo-b": 2.0, "shac-a": 3.0}[c.algo_label]
        write_run(c, STEPS, [factor * r for r in PPO_RETURNS[c.seed]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = figures.plot_experiment(sel, out, reps=200)
    assert {"series.png", "series.pdf"} <= {p.name for p in res.files}
    numbers = json.loads((res.folder / "manifest.json").read_text())["numbers"]["series"]["hopper"]
    final, best = numbers["final"], numbers["best-step"]
    assert set(final) == {"ppo-a", "ppo-b", "shac-a"}
    assert final["ppo-b"]["x"] == 1e4 and final["ppo-b"]["runs"] == 4
    assert final["ppo-a"]["iqm"] == pytest.approx(5.0) and final["ppo-b"]["iqm"] == pytest.approx(10.0)
    # best step: each run's return where the row's IQM peaks (200: 20, 10, 40, 12 for ppo-a)
    assert best["shac-a"]["iqm"] == pytest.approx(3.0 * 16.0)
    lo, hi = best["ppo-a"]["ci"]
    assert lo <= 16.0 <= hi and lo < hi


def test_plot_of_an_empty_store_says_so(out: Path) -> None:
    res = figures.plot_experiment(select(SYNTH, "smoke"), out, reps=10)
    assert res.table is None
    assert any("nothing plotted" in w for w in res.warnings)
    assert (res.folder / "manifest.json").exists()


# --------------------------------------------------------------------------------------------------
# experiments


def test_single_task_is_registered_with_the_papers_grid() -> None:
    exp = experiments.get_experiment("single-task")
    assert exp.algos == ("ppo", "sac", "shac", "tdmpc2", "pwm")
    assert [c.name for c in exp.envs][:4] == ["hopper", "ant", "humanoid", "muscle_humanoid"]
    assert set(exp.scales) == {"smoke", "cpu", "paper"}
    assert exp.scale("cpu").seeds == 3 and exp.scale("paper").preset == "paper"


def test_selection_narrows_and_widens_the_grid() -> None:
    exp = experiments.get_experiment("single-task")
    sel = select(exp, "cpu", algos=["sac", "ppo"], envs=["ant", "pointmass"], seeds=2, overrides={"x": 1})
    assert sel.algos == ("sac", "ppo") and [c.name for c in sel.envs] == ["ant", "pointmass"]
    assert sel.seeds == (0, 1) and sel.overrides == {"x": 1}
    with pytest.raises(experiments.UsageError, match="cpu, paper, smoke"):
        select(exp, "huge")
    with pytest.raises(experiments.UsageError, match="ppo"):
        select(exp, "cpu", algos=["nope"])
    with pytest.raises(experiments.UsageError, match="hopper"):
        select(exp, "cpu", envs=["nope"])
    with pytest.raises(experiments.UsageError, match="single-task"):
        experiments.get_experiment("nope")


def test_env_options_are_part_of_the_cell() -> None:
    exp = Experiment(
        name="test-options",
        description="",
        algos=("ppo",),
        envs=(EnvCase("pointmass"), EnvCase("pointmass", {"episode_length": 50}, "pointmass-short")),
        scales={"smoke": Scale("smoke", 1)},
    )
    a, b = aggregate.selection_cells(select(exp, "smoke"), Path("r"))
    assert b.overrides == {"env.episode_length": 50} and b.env_label == "pointmass-short"
    assert a.run_dir != b.run_dir and a.run_dir.parent == b.run_dir.parent


def test_stiffness_is_registered_with_kd_a_tenth_of_ke_and_one_normaliser() -> None:
    exp = experiments.get_experiment("stiffness")
    assert exp.algos == ("ppo", "shac", "pwm") and exp.reference == "pwm_stiffness"
    assert [c.name for c in exp.envs] == ["hopper", "hopper ke 5e4", "hopper ke 1e5", "hopper ke 2e5"]
    assert exp.envs[0].options == {}
    for case, ke in zip(exp.envs[1:], (5e4, 1e5, 2e5), strict=True):
        assert case.options == {"contact_ke": ke, "contact_kd": ke / 10}
        assert exp.normalize_with[case.name] == "hopper"
    sel = select(exp, "smoke")
    assert [c.name for c in sel.envs] == ["hopper", "hopper ke 1e5"] and sel.seeds == (0, 1)
    cells = aggregate.selection_cells(sel, Path("r"))
    stiff = [c for c in cells if c.env_label == "hopper ke 1e5"]
    assert len(stiff) == 6 and all(c.overrides["env.contact_ke"] == 1e5 for c in stiff)


STIFF_SYNTH = Experiment(
    name="test-stiff",
    description="test only",
    algos=("ppo", "shac"),
    envs=(EnvCase("hopper"), EnvCase("hopper", {"contact_ke": 1e5, "contact_kd": 1e4}, "hopper ke 1e5")),
    scales={"smoke": Scale(preset="smoke", seeds=4)},
    normalizer="ppo",
    reference="pwm_stiffness",
    focus="shac",
    normalize_with={"hopper ke 1e5": "hopper"},
    extra_metrics=("grad_norm/actor",),
)


def test_stiff_columns_are_normalised_by_the_default_stiffness_ppo(out: Path) -> None:
    """PPO scores half as much on the stiff hopper and SHAC twice PPO's default score: normalised by
    the default-stiffness PPO (not the stiff column's own), stiff PPO is 0.5 and stiff SHAC 2.0 at
    the best IQM step; the published rows are matched by the column's label."""
    sel = select(STIFF_SYNTH, "smoke")
    for c in aggregate.selection_cells(sel, out):
        factor = {("ppo", "hopper"): 1.0, ("shac", "hopper"): 2.0, ("ppo", "hopper ke 1e5"): 0.5}.get(
            (c.algo, c.env_label), 2.0
        )
        write_run(c, STEPS, [factor * r for r in PPO_RETURNS[c.seed]])
        if c.algo == "shac":  # SHAC logs its actor-gradient norm: median 2.5 + seed
            df = pd.read_csv(c.run_dir / "metrics.csv")
            df["grad_norm/actor"] = [1.0 + c.seed, 2.0 + c.seed, 3.0 + c.seed, 1e3]
            atomic_write_text(c.run_dir / "metrics.csv", df.to_csv(index=False))
    scores = aggregate.compute_scores(aggregate.collect(sel, out), reps=200, out=out)
    assert scores.sweep_norm["hopper ke 1e5"] == scores.sweep_norm["hopper"] == pytest.approx(16.0)
    assert scores.published_norm == {"hopper": 4742.3, "hopper ke 1e5": 4742.3}
    table = figures.score_table(aggregate.collect(sel, out), scores).set_index(["env", "algo"])
    assert table.loc[("hopper ke 1e5", "ppo"), "best_norm_sweep"] == pytest.approx(0.5)
    assert table.loc[("hopper ke 1e5", "shac"), "best_norm_sweep"] == pytest.approx(2.0)
    assert table.loc[("hopper ke 1e5", "shac"), "published_norm_score"] == pytest.approx(0.329)
    assert table.loc[("hopper", "shac"), "published_norm_score"] == pytest.approx(1.02)
    # the extra metric: IQM over seeds of each run's median (2.5, 3.5, 4.5, 5.5 -> IQM 4.0); PPO logs none
    assert table.loc[("hopper ke 1e5", "shac"), "grad_norm/actor (median)"] == pytest.approx(4.0)
    assert np.isnan(table.loc[("hopper", "ppo"), "grad_norm/actor (median)"])
    md = figures._markdown(table.reset_index(), sel)
    assert "grad_norm/actor (median) |" in md and "| 4.000 |" in md
    res = figures.plot_experiment(sel, out, reps=50)
    assert (res.folder / "columns.png").stat().st_size > 1000 and (res.folder / "columns.pdf").exists()


def test_wm_type_runs_pwm_in_three_variants_under_one_algorithm() -> None:
    exp = experiments.get_experiment("wm-type")
    assert exp.algos == ("pwm", "pwm-mish", "pwm-relu")
    sel = select(exp, "cpu")
    assert [c.name for c in sel.envs] == ["hopper", "ant"] and sel.seeds == (0, 1, 2)
    cells = {(c.algo_label, c.env_label, c.seed): c for c in aggregate.selection_cells(sel, Path("r"))}
    mish, relu, simnorm = cells[("pwm-mish", "ant", 0)], cells[("pwm-relu", "ant", 0)], cells[("pwm", "ant", 0)]
    assert mish.algo == relu.algo == simnorm.algo == "pwm" and simnorm.variant == ""
    assert mish.overrides["wm_variant"] == "mish" and relu.overrides["wm_variant"] == "relu"
    assert "wm_variant" not in simnorm.overrides
    assert len({mish.run_dir, relu.run_dir, simnorm.run_dir}) == 3 and mish.run_dir.parent == simnorm.run_dir.parent
    # the default variant is the run PWM always made: its id does not change with the new option
    assert simnorm.tag == sweep.make_cell("pwm", "ant", 0, "cpu", {"wm_variant": "simnorm"}, Path("r")).tag
    # a variant's algorithm is validated; the variant label works on the command line
    assert select(exp, "smoke", algos=["pwm-relu"]).algos == ("pwm-relu",)
    with pytest.raises(experiments.UsageError, match="pwm"):
        select(exp, "smoke", algos=["pwm-nope"])


def test_pwm_ablations_change_one_thing_at_a_time_and_share_the_defaults_with_single_task() -> None:
    exp = experiments.get_experiment("pwm-ablations")
    assert exp.algos[0] == "pwm" and exp.algos[-1] == "shac" and "pwm-sim" in exp.algos
    sel = select(exp, "cpu")
    cells = {(c.algo_label, c.seed): c for c in aggregate.selection_cells(sel, Path("r"))}  # raises on a bad key
    rows = {label for label, _ in cells}
    assert len({cells[(label, 0)].run_dir for label in rows}) == len(rows)  # every row is a run of its own
    for label, ov in experiments.PWM_ABLATIONS.items():
        assert dict(cells[(label, 0)].overrides) == ov
    # the defaults and SHAC are the very runs of single-task's cpu sweep on the same store
    main = {
        (c.algo_label, c.seed): c
        for c in aggregate.selection_cells(
            select(experiments.get_experiment("single-task"), "cpu", envs=["hopper"]), Path("r")
        )
    }
    assert (
        cells[("pwm", 1)].run_dir == main[("pwm", 1)].run_dir
        and cells[("shac", 2)].run_dir == main[("shac", 2)].run_dir
    )
    # the earlier defaults' row is PWM with the earlier reward units, and every row measured against
    # them keeps those units
    earlier = {
        (c.algo_label, c.seed): c
        for c in aggregate.selection_cells(
            select(
                experiments.get_experiment("single-task"),
                "cpu",
                algos=["pwm"],
                envs=["hopper"],
                overrides={"wm_reward_norm": "scale"},
            ),
            Path("r"),
        )
    }
    assert cells[("pwm-scale", 0)].run_dir == earlier[("pwm", 0)].run_dir
    assert all(ov.get("wm_reward_norm") == "scale" for lab, ov in experiments.PWM_ABLATIONS.items() if "scale" in lab)


def test_a_field_at_its_neutral_value_leaves_the_run_id_alone() -> None:
    """Adding a config field whose default keeps the old behaviour (``neutral``) keeps stored run ids;
    any other value is part of the id."""
    import dataclasses

    from pwm_bench.config import identity_dict, neutral

    @dataclasses.dataclass
    class Old:
        lr: float = 1e-3

    @dataclasses.dataclass
    class New:
        lr: float = 1e-3
        variant: str = neutral("a")

    assert identity_dict(New()) == identity_dict(Old()) == {"lr": 1e-3}
    assert identity_dict(New(variant="b")) == {"lr": 1e-3, "variant": "b"}


# --------------------------------------------------------------------------------------------------
# sweeps: real runs on the point mass

TINY = Experiment(
    name="test-tiny",
    description="test only",
    algos=("ppo",),
    envs=(EnvCase("pointmass"),),
    scales={"smoke": Scale("smoke", 2)},
    algo_overrides={"ppo": {**PPO_TINY, "total_steps": "2048", "eval_every": "1024"}},
    normalizer="ppo",
    focus=None,
)


def test_sweep_reuses_completed_cells_resumes_interrupted_ones_and_goes_on_after_a_failure(
    out: Path, monkeypatch: pytest.MonkeyPatch, test_registrations: None
) -> None:
    import signal

    sel = select(TINY, "smoke", algos=["ppo", "nan_loss"])
    cells = aggregate.selection_cells(sel, out)
    # the first cell is stopped half-way (Ctrl-C / kill): the grid stops, the first cell is resumable
    with pytest.raises(sweep.GridInterrupted):
        sweep.run_cells(cells, out=out, reporter_factory=lambda: SignalAt(1024, signal.SIGTERM))
    assert [sweep.cell_status(c) for c in cells] == ["interrupted", "missing", "missing", "missing"]
    # the same sweep finishes it: the interrupted cell resumes, the NaN cells fail, the sweep goes on
    monitor = sweep.SweepMonitor(len(cells), 0, display="none")
    sweep.run_cells(cells, out=out, monitor=monitor)
    assert [sweep.cell_status(c) for c in cells] == ["completed", "completed", "failed", "failed"]
    assert monitor.done == 2 and monitor.failed == 2
    assert read_summary(cells[0].run_dir)["resumes"] == 1 and read_summary(cells[1].run_dir)["resumes"] == 0
    mtimes = [(c.run_dir / "summary.json").stat().st_mtime_ns for c in cells]
    # again: nothing runs (completed reused; failed left alone)
    monitor = sweep.SweepMonitor(len(cells), 2, display="none")
    sweep.run_cells(cells, out=out, monitor=monitor)
    assert [(c.run_dir / "summary.json").stat().st_mtime_ns for c in cells] == mtimes
    assert monitor.done == 2 and monitor.failed == 0
    # --retry-failed reruns only the failed ones
    sweep.run_cells(cells, out=out, retry_failed=True)
    new = [(c.run_dir / "summary.json").stat().st_mtime_ns for c in cells]
    assert new[:2] == mtimes[:2] and all(n != m for n, m in zip(new[2:], mtimes[2:], strict=True))


def test_a_cell_that_raises_is_reported_and_the_sweep_goes_on(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pwm_bench import algos
    from pwm_bench.algos import Algorithm

    from .conftest import NaNLossConfig

    def boom(env: object, cfg: object, run: object) -> None:
        raise RuntimeError("broken plug-in")

    monkeypatch.setitem(algos._ALGOS, "boom", Algorithm("boom", NaNLossConfig, boom, "raises (test only)"))
    sel = select(TINY, "smoke", algos=["boom", "ppo"], seeds=1)
    cells = aggregate.selection_cells(sel, out)
    monitor = sweep.SweepMonitor(len(cells), 0, display="none")
    sweep.run_cells(cells, out=out, monitor=monitor)
    assert [sweep.cell_status(c) for c in cells] == ["failed", "completed"]
    assert "broken plug-in" in read_summary(cells[0].run_dir)["error"]
    assert monitor.failed == 1 and monitor.done == 1


def test_monitor_counts_and_eta() -> None:
    m = sweep.SweepMonitor(4, 1, parallel=2, display="none")
    c = sweep.Cell("ppo", "pointmass", 0, "smoke", {}, Path("a/cmp-smoke-aaaaaa-s0"))
    assert m.eta() is None
    m.started(c)
    assert m.running == 1
    m._started[c.run_dir] -= 10.0  # it ran 10 s
    m.finished(c, "completed")
    assert (m.done, m.running, m.failed) == (2, 0, 0)
    assert m.eta() == pytest.approx(10.0 * 2 / 2, rel=0.05)  # 2 cells left, 2 at once


def test_sweep_and_plot_cli_on_the_point_mass(out: Path) -> None:
    """The user's path: sweep, interrupted-free rerun (nothing runs again), plot; bad input exits 2."""
    args = ["--scale", "smoke", "--envs", "pointmass", "--algos", "ppo", "--seeds", "2", "--out", str(out)]
    tiny = [f"--set={k}={v}" for k, v in {**PPO_TINY, "total_steps": "2048", "eval_every": "1024"}.items()]
    res = cli("sweep", "single-task", *args, *tiny, "--jobs", "2")
    assert res.returncode == 0, res.stderr
    assert "2 completed" in res.stdout
    res = cli("sweep", "single-task", *args, *tiny, "--dry-run")
    assert res.returncode == 0 and res.stdout.count("completed") >= 2
    res = cli("plot", "single-task", *args, *tiny, "--reps", "100")
    assert res.returncode == 0, res.stderr
    (folder,) = (out / "figures").iterdir()
    assert folder.name.startswith("single-task-smoke-ppo-pointmass-set-")  # not the experiment's own
    assert (folder / "curves.png").exists() and (folder / "manifest.json").exists()
    for bad, word in ((["sweep", "nope"], "single-task"), (["sweep", "single-task", "--scale", "x"], "smoke")):
        res = cli(*bad, "--out", str(out))
        assert res.returncode == 2 and word in res.stderr and "Traceback" not in res.stderr
    res = cli("sweep", "single-task", "--launcher", "slurm", "--out", str(out))
    assert res.returncode == 2 and "local, ray" in res.stderr


def test_list_shows_the_experiments() -> None:
    res = cli("list")
    assert res.returncode == 0 and "single-task" in res.stdout and "experiment" in res.stdout


def test_ray_launcher_gives_the_same_table_as_the_local_one(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from pwm_bench.analysis.ray_launcher import run_cells_ray

    sel = select(TINY, "smoke")
    local, remote = tmp_path / "local", tmp_path / "ray"
    sweep.run_cells(aggregate.selection_cells(sel, local), out=local, jobs=2, threads=1)
    cells = aggregate.selection_cells(sel, remote)
    run_cells_ray(cells, out=remote, threads=1, init_kwargs={"num_cpus": 2, "include_dashboard": False})
    assert not ray.is_initialized()
    assert [sweep.cell_status(c) for c in cells] == ["completed", "completed"]
    a = figures.plot_experiment(sel, local, reps=100).table
    b = figures.plot_experiment(sel, remote, reps=100).table
    pd.testing.assert_frame_equal(a, b)
    for c in cells:
        ours = pd.read_csv(c.run_dir / "metrics.csv")["eval/episode_return"].dropna()
        theirs = pd.read_csv(local / c.run_dir.relative_to(remote) / "metrics.csv")["eval/episode_return"].dropna()
        assert ours.tolist() == theirs.tolist()


def test_the_readme_example_algorithm_joins_a_sweep_and_gets_its_rows(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' uniform-random example is the file of examples/random_algo (no drift), and a
    registered algorithm runs beside a baseline on the same seeds and shows up in the table."""
    import importlib.util

    from pwm_bench import algos

    from .conftest import REPO

    source = REPO / "examples" / "random_algo" / "my_algos" / "random_policy.py"
    page = (REPO / "docs" / "add-algorithm.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == source.read_text()
    spec = importlib.util.spec_from_file_location("random_policy_example", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(algos._ALGOS, "random", module.ALGORITHM)
    sel = select(TINY, "smoke", algos=["random", "ppo"])
    cells = aggregate.selection_cells(sel, out)
    sweep.run_cells(cells, out=out, monitor=sweep.SweepMonitor(len(cells), display="none"))
    assert [sweep.cell_status(c) for c in cells] == ["completed"] * 4
    res = figures.plot_experiment(sel, out, reps=100)
    assert res.table["algo"].tolist() == ["random", "ppo"]
    assert (res.table["seeds"] == 2).all()


def test_single_task_at_smoke_scale_from_a_fresh_store(out: Path) -> None:
    """The documented path on a fresh store: `sweep single-task --scale smoke`, then `plot`."""
    res = cli("sweep", "single-task", "--scale", "smoke", "--jobs", "2", "--out", str(out), timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "10 completed" in res.stdout
    res = cli("plot", "single-task", "--scale", "smoke", "--out", str(out), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    folder = out / "figures" / "single-task-smoke"
    for stem in ("curves", "aggregate", "aggregate_published", "profiles", "improvement"):
        for fmt in ("png", "pdf"):
            assert (folder / f"{stem}.{fmt}").stat().st_size > 1000
    table = pd.read_csv(folder / "table.csv")
    assert table["algo"].tolist() == ["ppo", "sac", "shac", "tdmpc2", "pwm"]
    assert (table["seeds"] == 2).all() and table["final_iqm"].notna().all()
    assert table.set_index("algo").loc["pwm", "published_norm_score"] == pytest.approx(1.20)
    man = json.loads((folder / "manifest.json").read_text())
    assert len(man["runs_used"]) == 10 and not man["warnings"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "cells", "stems"),
    [
        ("stiffness", 12, ("aggregate",)),
        ("wm-type", 6, ("aggregate",)),
        ("wm-budget", 8, ("series",)),  # no normaliser: raw returns, return against the model's budget
        ("pwm-ablations", 12, ("improvement",)),
    ],
)
def test_rl_ablations_at_smoke_scale_from_a_fresh_store(
    out: Path, name: str, cells: int, stems: tuple[str, ...]
) -> None:
    """`sweep NAME --scale smoke`, then `plot NAME --scale smoke`: curves, the per-column panel, the
    experiment's own figures, table and manifest (3 to 8 minutes each on 2 cores)."""
    res = cli("sweep", name, "--scale", "smoke", "--jobs", "2", "--out", str(out), timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{cells} completed" in res.stdout
    res = cli("plot", name, "--scale", "smoke", "--reps", "200", "--out", str(out), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    folder = out / "figures" / f"{name}-smoke"
    for stem in ("curves", "columns", *stems):
        assert (folder / f"{stem}.png").stat().st_size > 1000 and (folder / f"{stem}.pdf").exists()
    table = pd.read_csv(folder / "table.csv")
    exp = experiments.get_experiment(name)
    assert set(table["algo"]) == set(select(exp, "smoke").algos) and (table["seeds"] == 2).all()
    assert table["final_iqm"].notna().all()
    for m in exp.extra_metrics:
        assert table[f"{m} (median)"].notna().any()
    man = json.loads((folder / "manifest.json").read_text())
    assert len(man["runs_used"]) == cells and not man["warnings"]


def test_every_row_of_the_largest_experiment_gets_its_own_colour_and_the_fixed_ones_keep_theirs() -> None:
    algos = list(experiments.get_experiment("pwm-ablations").algos)
    assert len(algos) > 10
    colours = figures._colors(algos)
    assert len({tuple(round(c, 3) for c in colours[a]) for a in algos}) == len(algos)
    assert figures._colors(["pwm", "shac"]) == {a: colours[a] for a in ("pwm", "shac")}
