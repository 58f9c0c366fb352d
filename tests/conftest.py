"""Shared fixtures: a results root per test, small test-only envs and algorithms."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pwm_bench import algos, envs
from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig
from pwm_bench.envs.pointmass import PointMassConfig, PointMassEnv
from pwm_bench.runner import RunRequest, RunResult, execute

REPO = Path(__file__).resolve().parents[1]

# The suite's networks are small: one torch thread is faster than several, and immune to slowdowns
# when other processes share the cores.
torch.set_num_threads(1)

# Small PPO budget on the point mass: a few seconds, several evaluations and checkpoints.
PPO_TINY = {
    "total_steps": "8192",
    "num_envs": "8",
    "rollout_steps": "64",
    "epochs": "2",
    "minibatch_size": "256",
    "eval_every": "2048",
    "eval_episodes": "4",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests are skipped (never silently passed) without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh results root."""
    return tmp_path / "results"


def run_inprocess(out: Path, algo: str = "ppo", env: str = "pointmass", **kwargs: Any) -> RunResult:
    """Execute one run in this process (quiet) and return its result."""
    kwargs.setdefault("preset", "smoke")
    return execute(RunRequest(algo=algo, env=env, out=out, **kwargs))


def cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``pwm-bench ARGS`` in a subprocess (as a user would) and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "pwm_bench", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def wait_for(condition: Any, timeout: float = 120.0, poll: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(poll)
    return bool(condition())


class NaNPointMass(PointMassEnv):
    """Point mass whose observation of world 1 turns NaN at control step ``nan_at``."""

    nan_at = 300

    def _step(self, actions: torch.Tensor) -> Any:
        obs, rew, term, trunc, info = super()._step(actions)
        if self._steps_taken + 1 >= self.nan_at:
            obs = obs.clone()
            obs[min(1, self.num_envs - 1), 2] = float("nan")
        return obs, rew, term, trunc, info


@dataclasses.dataclass
class NaNLossConfig(TrainConfig):
    """Config of the NaN-loss test algorithm."""

    total_steps: int = 4096
    eval_every: int = 512
    eval_episodes: int = 2
    num_envs: int = 4
    nan_at: int = 1536
    """Log a NaN loss once this many env steps are done."""


class ZeroPolicy:
    """Always action 0."""

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.zeros(obs.shape[0], 2, device=obs.device)


def _nan_loss_train(env: Any, cfg: NaNLossConfig, run: Any) -> ZeroPolicy:
    policy = ZeroPolicy()
    run.restore()
    obs, _ = env.reset(seed=run.env_seed)
    while not run.done:
        for _ in range(32):
            obs, _, _, _, info = env.step(policy.act(obs))
            run.add_env_steps(env.num_envs)
            run.record_episodes(info)
        run.log({"loss/critic": float("nan") if run.env_steps >= cfg.nan_at else 1.0})
        run.end_iteration(policy, dict)
    return policy


@pytest.fixture
def test_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register ``nan_pointmass`` (NaN observations) and ``nan_loss`` (NaN loss) for one test."""
    envs.list_envs()  # make sure built-ins are registered before patching
    monkeypatch.setitem(
        envs._ENVS,
        "nan_pointmass",
        envs.EnvSpec(
            "nan_pointmass",
            lambda n, d, g, c: NaNPointMass(n, d, g, c),
            PointMassConfig,
            "point mass that emits NaN observations (test only)",
        ),
    )
    monkeypatch.setitem(
        algos._ALGOS,
        "nan_loss",
        Algorithm("nan_loss", NaNLossConfig, _nan_loss_train, "logs a NaN loss (test only)"),
    )
