"""The Python API: ``pwm_bench.train``, ``pwm_bench.load_policy``, ``pwm_bench.make_env``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pwm_bench
from pwm_bench.errors import UsageError


def test_a_notebook_trains_ppo_on_pendulum_and_loads_the_policy_back(out: Path) -> None:
    result = pwm_bench.train(
        "ppo", "gym:Pendulum-v1", preset="smoke", seed=1, overrides={"hidden": [32, 32]}, out=out, threads=1
    )
    assert result.status == "completed" and result.run_dir.parent.parent.parent == out / "runs"
    assert result.summary["env_steps"] >= 2048 and "final_eval_return" in result.summary
    env = pwm_bench.make_env("gym:Pendulum-v1", num_envs=3)
    obs, _ = env.reset(seed=0)
    before = torch.get_rng_state()
    latest = pwm_bench.load_policy(result.run_dir, "latest")
    assert torch.equal(torch.get_rng_state(), before)  # loading draws no random numbers of the caller's
    # the latest checkpoint is the end of training: the same policy that train returned
    assert torch.equal(latest.act(obs), result.policy.act(obs))
    best = pwm_bench.load_policy(result.run_dir)
    assert best.act(obs).shape == (3, 1) and bool((best.act(obs).abs() <= 1).all())
    env.close()


@pytest.mark.parametrize("algo", ["sac", "shac", pytest.param("tdmpc2", marks=pytest.mark.slow), "pwm"])
def test_every_builtin_algorithm_loads_its_stored_policy(out: Path, algo: str) -> None:
    result = pwm_bench.train(algo, "pointmass", preset="smoke", out=out, threads=1)
    assert result.status == "completed"
    obs, _ = pwm_bench.make_env("pointmass", num_envs=5).reset(seed=3)
    actions = []
    for policy in (pwm_bench.load_policy(result.run_dir, "latest"), result.policy):
        if hasattr(policy, "reset_episodes"):  # a planner: forget its warm start, plan from the same noise
            policy.reset_episodes(torch.ones(5, dtype=torch.bool))
        torch.manual_seed(0)
        actions.append(policy.act(obs))
    assert torch.equal(actions[0], actions[1])


def test_bad_requests_are_usage_errors(out: Path) -> None:
    with pytest.raises(UsageError, match="did you mean 'ppo'"):
        pwm_bench.train("ppp", "pointmass", out=out)
    with pytest.raises(UsageError, match="not a run folder"):
        pwm_bench.load_policy(out)
    with pytest.raises(UsageError, match="'best' or 'latest'"):
        pwm_bench.load_policy(out, "first")  # type: ignore[arg-type]
    assert not (out / "runs").exists()
