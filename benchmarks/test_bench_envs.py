"""pytest-benchmark suite: Warp env throughput (forward; forward + backward).

Not part of the default test run (``testpaths`` is ``tests``). Run it with::

    python -m pytest benchmarks -q                       # all envs, 256 worlds, CPU
    python -m pytest benchmarks -q -k hopper --benchmark-json bench.json
    PWM_BENCH_DEVICE=cuda PWM_BENCH_NUM_ENVS=4096 python -m pytest benchmarks -q

Each benchmark times one batched control step (forward) or one differentiable window of ``WINDOW``
steps followed by its backward pass. ``extra_info`` records control steps per second summed over
worlds, and the forward + backward benchmark also records its ratio to the forward throughput
measured in the same session (the reference), which is the number to compare across machines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from pwm_bench.envs import make_env

DEVICE = os.environ.get("PWM_BENCH_DEVICE", "cpu")
NUM_ENVS = int(os.environ.get("PWM_BENCH_NUM_ENVS", "256"))
WINDOW = 8
ENVS = ["hopper", "ant", "humanoid", "muscle_humanoid", "double_pendulum"]

_forward_sps: dict[str, float] = {}


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.fixture(scope="module", params=ENVS)
def env(request: pytest.FixtureRequest) -> Iterator[Any]:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    e = make_env(request.param, NUM_ENVS, DEVICE, differentiable=True)
    e.reset(seed=0)
    yield e
    e.close()


def _actions(env: Any, gen: torch.Generator, n: int = 1) -> torch.Tensor:
    return (torch.rand(n, env.num_envs, env.act_dim, generator=gen) * 2 - 1).to(env.device)


def test_forward(benchmark: Any, env: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    acts = _actions(env, gen, 64)
    it = iter(range(1 << 30))

    def step() -> None:
        with torch.no_grad():
            env.step(acts[next(it) % len(acts)])
        _sync()

    step()  # kernel load, graph capture
    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=2)
    sps = env.num_envs / benchmark.stats.stats.mean
    _forward_sps[env.name] = sps
    benchmark.extra_info.update(env=env.name, num_envs=env.num_envs, device=DEVICE, control_steps_per_s=sps)


def test_forward_backward(benchmark: Any, env: Any) -> None:
    gen = torch.Generator().manual_seed(1)
    acts = _actions(env, gen, WINDOW)

    def window() -> None:
        env.detach()
        a = acts.clone().requires_grad_(True)
        total = torch.zeros((), device=env.device)
        for t in range(WINDOW):
            _, reward, *_ = env.step(a[t])
            total = total + reward.sum()
        total.backward()
        _sync()
        assert a.grad is not None and bool(torch.isfinite(a.grad).all())

    window()  # adjoint kernels
    benchmark.pedantic(window, rounds=5, iterations=1, warmup_rounds=1)
    sps = env.num_envs * WINDOW / benchmark.stats.stats.mean
    info: dict[str, Any] = dict(env=env.name, num_envs=env.num_envs, device=DEVICE, window=WINDOW)
    info["control_steps_per_s"] = sps
    if env.name in _forward_sps:
        info["ratio_to_forward"] = sps / _forward_sps[env.name]
    benchmark.extra_info.update(info)
