"""SHAC and SAC: the TD(λ) targets, SHAC's gradient through the simulator, learning, resume."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import torch

from pwm_bench.baselines.shac import Critic, StochasticActor, actor_window, td_lambda_targets
from pwm_bench.envs import make_env
from pwm_bench.runner import RunRequest, execute
from pwm_bench.store import read_summary
from pwm_bench.testing import fd_gradient_check

from .conftest import run_inprocess
from .test_run import SignalAt
from .test_warp_envs import settle_in_contact, shared_env

# point-mass budgets that learn in a few seconds (zero actions score about -310 on the eval states)
SHAC_POINTMASS = {"total_steps": "24576", "num_envs": "32", "eval_every": "8192", "eval_episodes": "8"}
SAC_POINTMASS = {
    "total_steps": "6000",
    "num_envs": "8",
    "hidden": "[64,64]",
    "batch_size": "128",
    "learning_starts": "500",
    "updates_per_env_step": "0.5",
    "eval_every": "2000",
    "eval_episodes": "8",
}


def _direct_lambda_returns(r: torch.Tensor, v: torch.Tensor, d: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """λ-returns from their definition: (1-λ) Σ_n λ^(n-1) G^(n) truncated at the segment end."""
    h, n = r.shape
    out = torch.zeros(h, n, dtype=r.dtype)
    for j in range(n):
        for i in range(h):
            end = next(k for k in range(i, h) if d[k, j])  # last step of the segment
            m = end - i + 1  # steps available
            nstep = []
            for k in range(1, m + 1):  # k-step return bootstrapped with v after step i+k-1
                g = sum(gamma**t * r[i + t, j] for t in range(k)) + gamma**k * v[i + k - 1, j]
                nstep.append(g)
            lam_ret = sum((1 - lam) * lam ** (k - 1) * nstep[k - 1] for k in range(1, m)) + lam ** (m - 1) * nstep[-1]
            out[i, j] = lam_ret
    return out


def test_td_lambda_targets_equal_direct_lambda_returns() -> None:
    gen = torch.Generator().manual_seed(0)
    h, n = 12, 5
    r = torch.randn(h, n, generator=gen, dtype=torch.float64)
    v = torch.randn(h, n, generator=gen, dtype=torch.float64)
    d = torch.rand(h, n, generator=gen) < 0.2
    d[-1] = True
    for gamma, lam in ((0.99, 0.95), (0.9, 0.0), (0.9, 1.0)):
        got = td_lambda_targets(r, v, d, gamma, lam)
        torch.testing.assert_close(got, _direct_lambda_returns(r, v, d, gamma, lam), rtol=1e-12, atol=1e-12)
    # λ = 0 is the one-step target r + γ V'
    torch.testing.assert_close(td_lambda_targets(r, v, d, 0.9, 0.0), r + 0.9 * v)


@pytest.mark.parametrize("name", ["hopper", "double_pendulum"])
def test_shac_actor_gradient_through_the_simulator_matches_finite_differences(name: str) -> None:
    """d(SHAC actor loss)/d(actor params) equals finite differences of the loss through the Warp sim.

    The actor's gradient flows only through the simulator's step (the actor sees the window's first
    observation; later ones reach it via the dynamics), so a silently non-differentiable env gives a
    wrong analytic derivative and fails this check.
    """
    env = shared_env(name)
    if name == "hopper":
        settle_in_contact(env)
    else:
        env.reset(seed=0)
    state = env.get_state()
    obs0 = env._observe(state["q"], state["qd"], state["last_action"])
    torch.manual_seed(0)
    actor = StochasticActor(env.obs_dim, env.act_dim, (32, 32), init_log_std=-1.0)
    critic = Critic(env.obs_dim, (32, 32)).requires_grad_(False)
    names = [k for k, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    theta0 = torch.nn.utils.parameters_to_vector(actor.parameters()).detach()

    def fn(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes, strict=True)}

        def policy(o: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(actor, params, (o,))

        env.set_state({k: v.clone() for k, v in state.items()})
        torch.manual_seed(1)  # the same action noise in every evaluation
        with env.resets_suspended():
            window = actor_window(env, policy, critic, obs0, None, horizon=4, gamma=0.99)  # type: ignore[arg-type]
        return window.loss.double()

    report = fd_gradient_check(fn, theta0, eps=1e-2, n_directions=6, seed=0)
    assert report.rel_error < 0.05 and report.cosine > 0.99, report
    env.detach()


def test_shac_learns_pointmass(out: Path) -> None:
    result = run_inprocess(out, algo="shac", env="pointmass", preset="cpu", overrides=SHAC_POINTMASS)
    assert result.status == "completed"
    assert result.summary["final_eval_return"] > -120.0, result.summary
    df = pd.read_csv(result.run_dir / "metrics.csv")
    assert {"loss/actor", "loss/critic", "grad_norm/actor", "shac/value"} <= set(df.columns)
    assert (df["grad_norm/actor"] > 0).all()


def test_sac_learns_pointmass(out: Path) -> None:
    result = run_inprocess(out, algo="sac", env="pointmass", preset="cpu", overrides=SAC_POINTMASS)
    assert result.status == "completed"
    assert result.summary["final_eval_return"] > -120.0, result.summary
    df = pd.read_csv(result.run_dir / "metrics.csv")
    assert {"loss/actor", "loss/critic", "sac/alpha", "sac/entropy"} <= set(df.columns)


def test_shac_rejects_a_non_differentiable_env() -> None:
    from pwm_bench.baselines.shac import SHACConfig, train
    from pwm_bench.errors import UsageError

    env = make_env("pointmass", 4, "cpu", differentiable=False)
    with pytest.raises(UsageError, match="differentiable"):
        train(env, SHACConfig(), run=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algo", "overrides", "stop_at"),
    [
        ("shac", {**SHAC_POINTMASS, "total_steps": "16384"}, 6000),
        ("sac", {**SAC_POINTMASS, "total_steps": "4000"}, 2100),
    ],
)
def test_interrupt_and_resume(out: Path, algo: str, overrides: dict[str, str], stop_at: int) -> None:
    part = run_inprocess(out, algo=algo, preset="cpu", overrides=overrides, run_id="part", reporter=SignalAt(stop_at))
    assert part.status == "interrupted"
    stopped = part.summary["env_steps"]
    resumed = execute(RunRequest(resume=part.run_dir))
    assert resumed.status == "completed" and resumed.summary["resumes"] == 1
    assert resumed.summary["env_steps"] >= int(overrides["total_steps"]) > stopped
    df = pd.read_csv(resumed.run_dir / "metrics.csv")
    assert df["env_steps"].is_unique and df["env_steps"].is_monotonic_increasing
    ckpt = torch.load(resumed.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["env_steps"] == resumed.summary["env_steps"]


@pytest.mark.parametrize("algo", ["shac", "sac"])
def test_smoke_preset_on_hopper_is_deterministic(out: Path, algo: str) -> None:
    """The same seed on CPU gives the same metrics (timing columns aside), through the Warp sim."""
    from pwm_bench.run import timing_columns

    runs = [run_inprocess(out, algo=algo, env="hopper", run_id=f"r{i}") for i in range(2)]
    assert all(r.status == "completed" and r.summary["env_steps"] > 0 for r in runs)
    a, b = (pd.read_csv(r.run_dir / "metrics.csv") for r in runs)
    a, b = (df.drop(columns=timing_columns(df.columns)) for df in (a, b))
    pd.testing.assert_frame_equal(a, b)


def test_compare_runs_the_grid_and_reuses_completed_runs(out: Path) -> None:
    from pwm_bench.compare import eval_curve, run_grid, summarize

    overrides = {"total_steps": "1024", "eval_every": "512"}
    cells = run_grid("pointmass", ["ppo", "shac"], [0, 1], preset="smoke", overrides=overrides, out=out)
    assert len(cells) == 4 and all(c.run_dir.is_dir() for c in cells)
    df = summarize(cells)
    assert df["algo"].tolist() == ["ppo", "shac"]
    assert df["runs"].tolist() == ["2/2", "2/2"]
    assert df["final_mean"].notna().all() and (df["final_std"] >= 0).all()
    assert (df["at_steps"] == 1024).all() and (df["data_steps"] == 0).all()
    assert df["at_final_mean"].tolist() == pytest.approx(df["final_mean"].tolist())
    # at fewer steps: the evaluations up to there (the first one, at 512 steps)
    early = summarize(cells, at_steps=700)
    firsts = [float(eval_curve(c.run_dir)["eval/episode_return"].iloc[0]) for c in cells]
    assert early["at_final_mean"].tolist() == pytest.approx([sum(firsts[:2]) / 2, sum(firsts[2:]) / 2])
    assert early["at_best_mean"].tolist() == pytest.approx(early["at_final_mean"].tolist())
    mtimes = {c.run_dir: (c.run_dir / "summary.json").stat().st_mtime_ns for c in cells}
    again = run_grid("pointmass", ["ppo", "shac"], [0, 1], preset="smoke", overrides=overrides, out=out)
    assert again == cells
    assert all((c.run_dir / "summary.json").stat().st_mtime_ns == mtimes[c.run_dir] for c in cells)


def test_a_stop_request_stops_the_whole_grid_and_the_same_call_finishes_it(out: Path) -> None:
    import signal

    from pwm_bench.compare import GridInterrupted, run_grid

    overrides = {"total_steps": "1024", "eval_every": "512"}
    with pytest.raises(GridInterrupted) as exc:
        run_grid(
            "pointmass",
            ["ppo"],
            [0, 1],
            preset="smoke",
            overrides=overrides,
            out=out,
            reporter_factory=lambda: SignalAt(512, signal.SIGTERM),
        )
    first, second = exc.value.cells
    assert read_summary(first.run_dir)["status"] == "interrupted"
    assert not second.run_dir.exists()  # the next cell never started
    cells = run_grid("pointmass", ["ppo"], [0, 1], preset="smoke", overrides=overrides, out=out)
    summaries = [read_summary(c.run_dir) for c in cells]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert summaries[0]["resumes"] == 1 and summaries[1]["resumes"] == 0


class _FakeCell:
    """Stands in for a ``pwm-bench run`` subprocess of :func:`run_grid` (records launches and signals)."""

    launched: ClassVar[list[_FakeCell]] = []
    interrupt_first: ClassVar[bool] = False

    def __init__(self, args: list[str], **kwargs: object) -> None:
        assert kwargs.get("start_new_session"), "cells must not receive the terminal's Ctrl-C themselves"
        self.signals: list[int] = []
        self.returncode: int | None = None
        self.first = not _FakeCell.launched
        self._signalled = threading.Event()
        _FakeCell.launched.append(self)

    def communicate(self) -> tuple[str, str]:
        if _FakeCell.interrupt_first and self.first:
            time.sleep(0.2)
            self.returncode = 130  # stopped on its own (killed by someone): the grid must stop too
        elif _FakeCell.interrupt_first:
            time.sleep(0.6)
            self.returncode = 0
        else:
            assert self._signalled.wait(10.0)
            self.returncode = 130
        return "", "run interrupted"

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self._signalled.set()


@pytest.mark.parametrize("how", ["a cell stops", "the grid gets SIGINT"])
def test_parallel_grid_stops_on_a_stop_request(out: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    import signal

    import pwm_bench.analysis.sweep as sweep
    import pwm_bench.compare as compare

    monkeypatch.setattr(_FakeCell, "launched", [])
    monkeypatch.setattr(_FakeCell, "interrupt_first", how == "a cell stops")
    monkeypatch.setattr(sweep.subprocess, "Popen", _FakeCell)
    before = signal.getsignal(signal.SIGINT)
    if how == "the grid gets SIGINT":
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(compare.GridInterrupted):
        compare.run_grid("pointmass", ["ppo", "sac"], [0, 1], preset="smoke", out=out, jobs=2)
    assert len(_FakeCell.launched) == 2  # two of the four cells ran at once; the other two never started
    if how == "the grid gets SIGINT":
        assert [c.signals for c in _FakeCell.launched] == [[signal.SIGINT], [signal.SIGINT]]  # passed on once
    assert signal.getsignal(signal.SIGINT) is before


def test_compare_cli_exits_130_with_the_partial_table(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import pwm_bench.compare as compare
    from pwm_bench.cli import app

    def interrupted(env: str, algos: list[str], seeds: list[int], **kwargs: object) -> None:
        raise compare.GridInterrupted(compare.plan(env, algos, seeds, "smoke", {}, out))

    monkeypatch.setattr(compare, "run_grid", interrupted)
    args = ["compare", "--env", "pointmass", "--algos", "ppo", "--seeds", "2", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, res.output
    assert "0/2" in res.output


def test_compare_cli_rejects_bad_input() -> None:
    from .conftest import cli

    res = cli("compare", "--env", "pointmass", "--algos", "ppo,nope", "--seeds", "1")
    assert res.returncode == 2 and "nope" in res.stderr and "shac" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("algo", ["ppo", "sac", "shac", "tdmpc2", "pwm"])
@pytest.mark.parametrize("env", ["hopper", "ant", "humanoid", "double_pendulum", "pointmass"])
def test_every_preset_resolves_and_validates(algo: str, env: str) -> None:
    from pwm_bench.algos import get_algorithm
    from pwm_bench.config import PRESETS

    spec = get_algorithm(algo)
    for preset in PRESETS:
        cfg = spec.config.from_preset(preset, env)
        cfg.validate()
        assert cfg.total_steps >= cfg.num_envs and cfg.eval_every <= cfg.total_steps


def test_paper_presets_follow_the_published_configs() -> None:
    from pwm_bench.baselines.ppo import PPOConfig
    from pwm_bench.baselines.sac import SACConfig
    from pwm_bench.baselines.shac import SHACConfig

    shac = SHACConfig.from_preset("paper", "hopper")
    assert (shac.num_envs, shac.horizon, shac.total_steps // (shac.num_envs * shac.horizon)) == (256, 32, 2000)
    assert (shac.actor_lr, shac.critic_lr, shac.target_alpha, shac.betas) == (2e-3, 2e-4, 0.2, (0.7, 0.95))
    assert shac.actor_hidden == (128, 64, 32) and shac.critic_hidden == (64, 64)
    hum = SHACConfig.from_preset("paper", "humanoid")
    assert (hum.num_envs, hum.critic_lr, hum.target_alpha, hum.actor_hidden) == (64, 5e-4, 0.995, (256, 128))
    ppo = PPOConfig.from_preset("paper", "ant")
    assert (ppo.num_envs, ppo.minibatch_size, ppo.epochs, ppo.rollout_steps) == (2048, 16384, 5, 32)
    assert (ppo.lr_schedule, ppo.target_kl, ppo.reward_scale, ppo.value_coef, ppo.shared_trunk) == (
        "adaptive",
        0.008,
        0.01,
        4.0,
        True,
    )
    sac = SACConfig.from_preset("paper", "hopper")
    assert (sac.num_envs, sac.batch_size, sac.actor_lr, sac.alpha_lr, sac.init_alpha) == (64, 2048, 5e-4, 5e-3, 1.0)
    assert sac.updates_per_env_step * sac.num_envs == 1.0 and sac.learning_starts == 5 * 128 * 64


def test_shac_stops_with_a_clear_message_when_the_gradient_explodes(out: Path) -> None:
    result = run_inprocess(out, algo="shac", env="pointmass", overrides={"env.max_force": "1e9"})
    assert result.status == "failed"
    assert "SHAC: actor gradient norm" in result.error and "exploded" in result.error
    assert result.summary["status"] == "failed"
