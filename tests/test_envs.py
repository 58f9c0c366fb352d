"""The batched env contract: shapes, same-step autoreset, episode stats, seeding, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pwm_bench.envs import make_env
from pwm_bench.errors import NonFiniteError, UsageError
from pwm_bench.testing import fd_gradient_check

from .conftest import NaNPointMass


@pytest.mark.parametrize("name", ["pointmass", "gym:Pendulum-v1"])
def test_contract_shapes_and_autoreset(name: str) -> None:
    env = make_env(name, num_envs=3)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, env.obs_dim) and obs.dtype == torch.float32
    assert env.single_action_space.shape == (env.act_dim,)
    assert env.metadata["autoreset_mode"].name == "SAME_STEP"
    ended = 0
    returns = torch.zeros(3)
    lengths = torch.zeros(3, dtype=torch.long)
    for _ in range(env.max_episode_steps):
        prev_obs = obs
        obs, rew, term, trunc, info = env.step(torch.full((3, env.act_dim), 0.5))
        assert rew.shape == term.shape == trunc.shape == (3,)
        assert term.dtype == trunc.dtype == torch.bool
        assert info["final_obs"].shape == obs.shape
        returns += rew
        lengths += 1
        done = term | trunc
        assert torch.equal(info["_episode"], done) and torch.equal(info["_final_obs"], done)
        if bool(done.any()):
            ended += int(done.sum())
            # the episode return reported equals the sum of rewards of that episode
            assert torch.allclose(info["episode"]["r"][done], returns[done], rtol=1e-5, atol=1e-3)
            assert torch.equal(info["episode"]["l"][done], lengths[done])
            assert torch.all(trunc[done] == (lengths[done] == env.max_episode_steps))
            # the returned obs is a fresh start, the final obs is the last state of the old episode
            assert not torch.equal(obs[done], info["final_obs"][done])
            returns[done] = 0
            lengths[done] = 0
        assert not torch.equal(prev_obs, obs)
    assert ended >= 3  # every world ended an episode (terminated, or truncated at the time limit)
    env.close()


def test_gym_bridge_scales_actions_to_bounds() -> None:
    """Pendulum's torque bounds are [-2, 2]: action 1 must apply +2 N·m, seen through the dynamics."""
    env = make_env("gym:Pendulum-v1", num_envs=1)
    env.reset(seed=3)
    gym_env = env._vec.envs[0].unwrapped
    theta, thdot = gym_env.state
    env.step(torch.ones(1, 1))
    g, m, ll, dt = gym_env.g, gym_env.m, gym_env.l, gym_env.dt
    expected = thdot + (3 * g / (2 * ll) * np.sin(theta) + 3.0 / (m * ll**2) * 2.0) * dt
    assert gym_env.state[1] == pytest.approx(np.clip(expected, -8, 8), rel=1e-6)


def test_same_seed_same_trajectory() -> None:
    for name in ("pointmass", "gym:Pendulum-v1"):
        a, b = make_env(name, 2), make_env(name, 2)
        oa, _ = a.reset(seed=5)
        ob, _ = b.reset(seed=5)
        oc, _ = make_env(name, 2).reset(seed=6)
        assert torch.equal(oa, ob) and not torch.equal(oa, oc)
        act = torch.full((2, a.act_dim), 0.3)
        for _ in range(10):
            oa, *_ = a.step(act)
            ob, *_ = b.step(act)
        assert torch.equal(oa, ob)


def test_env_options_are_type_checked() -> None:
    env = make_env("pointmass", 2, episode_length=7)
    assert env.max_episode_steps == 7
    with pytest.raises(UsageError, match="did you mean 'episode_length'"):
        make_env("pointmass", 2, episode_lenght=7)
    with pytest.raises(UsageError, match="expected int"):
        make_env("pointmass", 2, episode_length="long")


def test_gym_bridge_rejects_what_it_cannot_serve() -> None:
    with pytest.raises(UsageError, match="only continuous Box"):
        make_env("gym:CartPole-v1", 2)
    with pytest.raises(UsageError, match="unknown gymnasium env"):
        make_env("gym:NoSuchEnv-v0", 2)
    with pytest.raises(UsageError, match="no simulator gradients"):
        make_env("gym:Pendulum-v1", 2, differentiable=True)


def test_nan_observation_is_reported_with_location() -> None:
    env = NaNPointMass(num_envs=2)
    env.nan_at = 3
    env.reset(seed=0)
    env.step(torch.zeros(2, 2))
    env.step(torch.zeros(2, 2))
    with pytest.raises(NonFiniteError, match=r"control step 3, world 1, obs index 2"):
        env.step(torch.zeros(2, 2))


def test_pointmass_gradients_match_finite_differences() -> None:
    """d(sum of rewards over 20 steps)/d(actions) through the differentiable point mass."""

    def rollout(actions: torch.Tensor) -> torch.Tensor:
        env = make_env("pointmass", 3, differentiable=True, dt=0.1)
        env.reset(seed=1)
        total = torch.zeros((), dtype=actions.dtype)
        for t in range(actions.shape[0]):
            _, rew, *_ = env.step(actions[t])
            total = total + rew.sum()
        return total

    actions = ((torch.rand(20, 3, 2, generator=torch.Generator().manual_seed(0)) - 0.5) * 1.6).double()
    report = fd_gradient_check(rollout, actions, eps=1e-2, n_directions=8, seed=0)
    assert report.max_rel_error < 1e-2, report


def test_detach_cuts_the_graph_without_reset() -> None:
    env = make_env("pointmass", 2, differentiable=True)
    env.reset(seed=0)
    a = torch.zeros(2, 2, requires_grad=True)
    env.step(a)
    assert env.pos.requires_grad
    pos = env.pos.clone()
    env.detach()
    assert not env.pos.requires_grad and torch.equal(env.pos, pos)
