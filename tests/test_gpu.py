"""The CUDA path: Warp envs (with and without CUDA-graph capture), their gradients, and short runs.

Every test here is marked ``gpu`` and skipped without CUDA (``conftest.py``). On a GPU machine,
``bash benchmarks/gpu_check.sh`` runs them together with the throughput benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pwm_bench.envs import make_env
from pwm_bench.testing import env_gradient_check

from .conftest import run_inprocess

pytestmark = pytest.mark.gpu

ENVS = ["hopper", "ant", "humanoid", "muscle_humanoid"]


def _rollout(name: str, device: str, steps: int, **overrides: object) -> torch.Tensor:
    env = make_env(name, 4, device, **overrides)
    obs, _ = env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    out = [obs.cpu()]
    with torch.no_grad():
        for _ in range(steps):
            a = (torch.rand(4, env.act_dim, generator=gen) * 2 - 1) * 0.5
            obs = env.step(a.to(device))[0]
            out.append(obs.cpu())
    return torch.stack(out)


@pytest.mark.parametrize("graph_capture", [True, False])
@pytest.mark.parametrize("name", ENVS)
def test_cuda_env_follows_the_cpu_trajectory(name: str, graph_capture: bool) -> None:
    """Same start states and actions: the CUDA worlds track the CPU ones (float32, contact-rich, so a
    loose bound over 20 control steps)."""
    cpu = _rollout(name, "cpu", 20)
    gpu = _rollout(name, "cuda", 20, graph_capture=graph_capture)
    assert torch.isfinite(gpu).all()
    assert torch.allclose(gpu[:5], cpu[:5], rtol=1e-3, atol=1e-3)
    assert (gpu - cpu).abs().max() < 0.05 * (1.0 + cpu.abs().max())


@pytest.mark.parametrize("name", ["hopper", "ant"])
def test_cuda_env_gradients_match_finite_differences(name: str) -> None:
    env = make_env(name, 2, "cuda", differentiable=True)
    env.reset(seed=0)
    with torch.no_grad():
        for _ in range(30):
            env.step(torch.zeros(2, env.act_dim, device="cuda"))
    one = env_gradient_check(env, steps=1, wrt="actions", eps=1e-2, n_directions=6)
    assert one.rel_error <= 0.01, one
    eight = env_gradient_check(env, steps=8, wrt="actions", eps=1e-2, n_directions=6)
    assert eight.cosine >= 0.999, eight


@pytest.mark.parametrize("algo", ["ppo", "sac", "shac", "tdmpc2", "pwm"])
def test_smoke_runs_on_cuda(algo: str, out: Path) -> None:
    result = run_inprocess(out, algo=algo, env="hopper", device="cuda")
    assert result.status == "completed", result.error
    assert result.summary["device"].startswith("cuda")
    assert result.summary["final_eval_return"] is not None
