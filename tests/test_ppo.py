"""PPO: GAE numerics and learning."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from pwm_bench.baselines.ppo import _gae
from pwm_bench.envs import make_env
from pwm_bench.run import EVAL_SEED_OFFSET, evaluate

from .conftest import run_inprocess

# ~40k env steps on the point mass, about 10 s
PPO_POINTMASS = {
    "total_steps": "40960",
    "num_envs": "16",
    "rollout_steps": "128",
    "epochs": "5",
    "minibatch_size": "512",
    "lr": "1e-3",
    "eval_every": "8192",
    "eval_episodes": "16",
}


def test_gae_matches_hand_computation() -> None:
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])  # the episode ends after step 1
    last = torch.tensor([2.0])
    d2 = 3.0 + gamma * 2.0 - 1.5
    d1 = 2.0 - 1.0  # terminal: no bootstrap
    d0 = 1.0 + gamma * 1.0 - 0.5
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    assert torch.allclose(_gae(rewards, values, dones, last, gamma, lam), expected)


def test_gae_lambda_one_is_discounted_return_minus_value() -> None:
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    last = torch.randn(2, generator=g)
    dones = torch.zeros(6, 2)
    ret, expected = last.clone(), torch.zeros(6, 2)
    for t in range(5, -1, -1):
        ret = rewards[t] + 0.97 * ret
        expected[t] = ret - values[t]
    assert torch.allclose(_gae(rewards, values, dones, last, 0.97, 1.0), expected, atol=1e-5)


class _Zero:
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.zeros(obs.shape[0], 2)


def test_ppo_learns_pointmass(out: Path) -> None:
    """~40k env steps (about 10 s): PPO must beat the do-nothing policy by a wide margin."""
    res = run_inprocess(out, overrides=PPO_POINTMASS, seed=0)
    assert res.status == "completed"
    baseline, _ = evaluate(_Zero(), make_env("pointmass", 16), seed=0 + EVAL_SEED_OFFSET)
    evals = pd.read_csv(res.run_dir / "metrics.csv")["eval/episode_return"].dropna()
    assert len(evals) == 5
    assert res.summary["final_eval_return"] > baseline + 100, (baseline, evals.tolist())
    assert res.summary["final_eval_return"] > evals.iloc[0]


def test_ppo_cpu_preset_solves_pendulum(out: Path) -> None:
    """The cpu preset reaches a mean eval return of at least -400 (random ~ -1200); ~40 s on 2 cores."""
    res = run_inprocess(out, env="gym:Pendulum-v1", preset="cpu", seed=0)
    assert res.status == "completed"
    assert res.summary["final_eval_return"] >= -400, res.summary


def test_ppo_rl_games_options_learn_pointmass(out: Path) -> None:
    """Shared trunk, scaled rewards, critic_coef 4 and the bounds loss (the Warp-env presets) still learn."""
    overrides = {
        **PPO_POINTMASS,
        "shared_trunk": "true",
        "reward_scale": "0.01",
        "value_coef": "4",
        "bounds_loss_coef": "1e-4",
        "hidden": "[64,64]",
        "activation": "elu",
    }
    res = run_inprocess(out, overrides=overrides, seed=0)
    assert res.status == "completed"
    assert res.summary["final_eval_return"] > -150, res.summary


def test_ppo_shared_trunk_shares_the_hidden_layers() -> None:
    from pwm_bench.baselines.ppo import ActorCritic, PPOConfig

    agent = ActorCritic(4, 2, PPOConfig(hidden=(16, 8), shared_trunk=True))
    obs = torch.randn(5, 4)
    agent.value(obs).sum().backward()
    trunk_grads = [p.grad for p in agent.trunk.parameters()]
    assert trunk_grads and all(g is not None and g.abs().sum() > 0 for g in trunk_grads)
    dist, v = agent.dist_value(obs)
    assert dist.mean.shape == (5, 2) and v.shape == (5,)
    torch.testing.assert_close(v, agent.value(obs))
