"""Model-vs-simulator gradient alignment: exact on an exact model, -1 on a sign-flipped one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pwm_bench.diagnostics import model_gradient_alignment, policy_actions, reward_lookahead_alignment
from pwm_bench.envs import make_env

from .conftest import cli, run_inprocess


class ExactPointMass(nn.Module):
    """The point mass's own dynamics and reward written as a world model (latent = observation)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, to check it is left as it was
        self.sign = sign
        self.dt, self.damping, self.force = 0.05, 0.5, 2.0

    def encode(self, obs: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return obs

    def next(self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        p, v = z[:, :2], z[:, 2:]
        v = (1.0 - self.damping * self.dt) * v + self.dt * self.force * a
        return torch.cat([p + self.dt * v, v], dim=-1)

    def reward(
        self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None, symlog_space: bool = False
    ) -> torch.Tensor:
        nz = self.next(z, a)
        r = -(nz[:, :2].square().sum(-1) + 0.1 * nz[:, 2:].square().sum(-1) + 0.01 * a.square().sum(-1))
        return r if self.sign > 0 else -r

    def reward_to_env(self, r: torch.Tensor) -> torch.Tensor:
        return r

    def reward_target(self, r: torch.Tensor) -> torch.Tensor:
        return r

    term_head = None
    reward_shift, reward_scale = torch.zeros(()), torch.ones(())


@pytest.mark.parametrize(("sign", "expected"), [(1.0, 1.0), (-1.0, -1.0)])
def test_alignment_is_one_for_an_exact_model_and_minus_one_for_a_flipped_one(sign: float, expected: float) -> None:
    env = make_env("pointmass", 6, differentiable=True, init_range=1.0)
    obs, _ = env.reset(seed=3)
    before = env.get_state()
    actions = torch.rand(8, 6, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    wm = ExactPointMass(sign)
    report = model_gradient_alignment(env, wm, obs, actions)
    assert bool(report.alive.all())
    assert torch.allclose(report.cosine, torch.full((6,), expected), atol=1e-5)
    assert torch.allclose(report.cosine_first, torch.full((6,), expected), atol=1e-5)
    assert torch.allclose(report.grad_norm_ratio, torch.ones(6), atol=1e-4)
    if sign > 0:
        assert torch.allclose(report.model_return, report.env_return, atol=1e-4)
    after = env.get_state()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the env is back where it was
    assert wm.scale.requires_grad
    s = report.summary()
    assert s["alive"] == 1.0 and abs(s["cosine"] - expected) < 1e-5


@pytest.mark.parametrize(("sign", "expected"), [(1.0, 1.0), (-1.0, -1.0)])
def test_lookahead_alignment_per_step(sign: float, expected: float) -> None:
    """d r_k / d a_0 for every k: the exact model's equals the simulator's, a flipped model's is opposite;
    worlds that left the disc drop out of the later steps."""
    env = make_env("pointmass", 6, differentiable=True, init_range=1.0, bound=1.0)
    obs, _ = env.reset(seed=3)
    before = env.get_state()
    actions = torch.rand(6, 6, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    look = reward_lookahead_alignment(env, ExactPointMass(sign), obs, actions)
    assert look.worlds[0] == 6 and bool((look.worlds[1:] <= look.worlds[:-1]).all()) and look.worlds[-1] < 6
    assert torch.allclose(look.cosine, torch.full((6,), expected), atol=1e-4)
    assert torch.allclose(look.cosine_sum, torch.full((6,), expected), atol=1e-4)
    if sign > 0:
        assert torch.allclose(look.model_reward, look.env_reward, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in env.get_state().items())


def test_policy_actions_are_closed_loop_and_leave_the_env_untouched() -> None:
    env = make_env("pointmass", 4, differentiable=True)
    obs, _ = env.reset(seed=0)
    before = env.get_state()
    acts = policy_actions(env, lambda o: -o[:, :2].clamp(-1, 1), obs, 5)
    assert acts.shape == (5, 4, 2)
    assert torch.allclose(acts[0], -obs[:, :2].clamp(-1, 1))
    assert not torch.allclose(acts[1], acts[0])  # it reacted to the new state
    after = env.get_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_alignment_needs_a_differentiable_env() -> None:
    env = make_env("pointmass", 2)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="differentiable"):
        model_gradient_alignment(env, ExactPointMass(), obs, torch.zeros(3, 2, 2))


def test_wm_check_reports_a_pwm_run_and_rejects_other_folders(out: Path) -> None:
    from .test_pwm import PIPELINE

    result = run_inprocess(out, algo="pwm", run_id="a", overrides=PIPELINE)
    assert result.status == "completed"
    res = cli("wm-check", str(result.run_dir), "--worlds", "4", "--horizon", "5", "--warmup", "3", "--ends")
    assert res.returncode == 0, res.stderr
    assert "policy" in res.stdout and "random" in res.stdout and "cosine" in res.stdout
    assert "actor-parameter gradient" in res.stdout
    assert "reward k steps later" in res.stdout and "episode ends of the held-out data" in res.stdout
    res = cli("wm-check", str(result.run_dir), "--warmup", "-1")
    assert res.returncode == 2 and "--warmup" in res.stderr and "Traceback" not in res.stderr
    res = cli("wm-check", str(out))
    assert res.returncode == 2 and "not a run folder" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("sign", "value_gradient", "expected"), [(1.0, True, 1.0), (-1.0, False, -1.0)])
def test_actor_gradient_cosine_is_one_for_an_exact_model(sign: float, value_gradient: bool, expected: float) -> None:
    """The actor loss through an exact model and through the simulator, with the same noise: the same
    actor gradient (a reward-flipped model gives the opposite one when the bootstrap is left out)."""
    from pwm_bench.pwm import CriticEnsemble, LatentActor, PWMConfig
    from pwm_bench.pwm.single_task import actor_gradient_cosine

    env = make_env("pointmass", 6, differentiable=True, init_range=1.0)
    obs, _ = env.reset(seed=3)
    before = env.get_state()
    torch.manual_seed(0)
    actor, critics = LatentActor(4, 2, (16,)), CriticEnsemble(4, (16,), 3).requires_grad_(False)
    cfg = PWMConfig(horizon=6, value_gradient=value_gradient)
    rng = torch.get_rng_state()
    cos = actor_gradient_cosine(env, ExactPointMass(sign), actor, critics, obs, cfg, seed=1)  # type: ignore[arg-type]
    assert cos == pytest.approx(expected, abs=1e-4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in env.get_state().items())


@pytest.mark.parametrize("env_kwargs", [{"episode_length": 3}, {"bound": 1.0}], ids=["truncated", "terminated"])
def test_actor_gradient_cosine_rolls_episode_ends_out_as_training_does(env_kwargs: dict) -> None:
    """Episodes that end inside the window (truncated at step 3, or terminated by leaving a small disc):
    the model's window closes its segments at the real ends and both windows restart from the same
    reset states, so an exact model still gives the simulator's actor gradient. (Probing with resets
    suspended left fallen worlds where they fell in the simulator's window only.)"""
    from pwm_bench.pwm import CriticEnsemble, LatentActor, PWMConfig
    from pwm_bench.pwm.single_task import actor_gradient_cosine

    env = make_env("pointmass", 8, differentiable=True, init_range=1.0, **env_kwargs)
    obs, _ = env.reset(seed=3)
    before, gen = env.get_state(), env._gen.get_state()
    torch.manual_seed(0)
    actor, critics = LatentActor(4, 2, (16,)), CriticEnsemble(4, (16,), 3).requires_grad_(False)
    with torch.no_grad():
        actor.mu[-1].bias.fill_(2.0)  # push outwards, so that worlds leave the small disc
    cfg = PWMConfig(horizon=6)
    cos = actor_gradient_cosine(env, ExactPointMass(), actor, critics, obs, cfg, seed=1)  # type: ignore[arg-type]
    assert cos == pytest.approx(1.0, abs=1e-4)
    assert all(torch.equal(before[k], v) for k, v in env.get_state().items())
    assert torch.equal(env._gen.get_state(), gen)


def test_episode_end_errors_are_zero_for_an_exact_model_and_count_the_ended_episodes(tmp_path: Path) -> None:
    from pwm_bench.datasets import EpisodeDataset
    from pwm_bench.diagnostics import episode_end_errors

    from .test_datasets import _record_pointmass

    _record_pointmass(tmp_path / "ds", steps=120, num_envs=4, spread=1.0, init_range=1.0, bound=1.5)
    ds = EpisodeDataset(tmp_path / "ds")
    ended = ds.terminated[ds.tr_start + ds.length - 1].bool()
    assert int(ended.sum()) >= 3
    out = episode_end_errors(ExactPointMass(), ds, horizon=5, before_end=3)  # type: ignore[arg-type]
    for d in range(5):
        assert out["episodes"][d] == int((ended & (ds.length >= d + 1)).sum())
        assert out["end_reward_error"][d] == pytest.approx(0.0, abs=1e-8)
        if out["ref_reward_error"][d] == out["ref_reward_error"][d]:  # not NaN: some episode long enough
            assert out["ref_reward_error"][d] == pytest.approx(0.0, abs=1e-8)
    assert all(v != v for v in out["end_termination"])  # no termination head: NaN
    flipped = episode_end_errors(ExactPointMass(-1.0), ds, horizon=5, before_end=3)  # type: ignore[arg-type]
    assert all(e > 1e-4 for e in flipped["end_reward_error"])
