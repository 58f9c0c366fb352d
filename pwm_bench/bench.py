"""Environment throughput measurement (``pwm-bench bench-env`` and the benchmark suite).

Throughput is reported in control steps per second summed over worlds (``num_envs`` worlds stepping
once count as ``num_envs`` control steps), for the forward pass alone and for a differentiable
window (forward steps with gradients recorded, then one backward pass through all of them).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch


@dataclasses.dataclass
class EnvBenchResult:
    """Throughput of one env configuration.

    Attributes:
        env: env name.
        num_envs: parallel worlds.
        device: device string.
        forward_sps: control steps per second without gradients (summed over worlds).
        forward_backward_sps: control steps per second of forward + backward over a window, or
            ``None`` when not measured.
        window: control steps per differentiable window.
        muscle_share: for muscle-driven envs, the fraction of a forward control step spent on muscle
            forces, ``1 - t_without / t_with`` from alternating timings; else None.
    """

    env: str
    num_envs: int
    device: str
    forward_sps: float
    forward_backward_sps: float | None
    window: int
    muscle_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_env(
    name: str,
    num_envs: int,
    device: str = "cpu",
    *,
    differentiable: bool = False,
    steps: int = 50,
    window: int = 8,
    warmup: int = 3,
    seed: int = 0,
    **overrides: Any,
) -> EnvBenchResult:
    """Measure control steps per second of env ``name`` (random actions in [-1, 1]).

    Args:
        name: registered env name.
        num_envs: parallel worlds.
        device: ``"cpu"`` or a CUDA device.
        differentiable: also measure forward + backward over windows of ``window`` steps.
        steps: timed forward steps.
        window: control steps per backward pass.
        warmup: untimed steps first (kernel loading, CUDA graph capture).
        seed: reset seed.
        **overrides: env config fields.
    """
    from pwm_bench.envs import make_env

    env = make_env(name, num_envs, device, differentiable=differentiable, **overrides)
    dev = env.device
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def actions() -> torch.Tensor:
        return (torch.rand(num_envs, env.act_dim, generator=gen) * 2 - 1).to(dev)

    env.reset(seed=seed)
    with torch.no_grad():
        for _ in range(warmup):
            env.step(actions())
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(actions())
        _sync(dev)
        fwd = num_envs * steps / (time.perf_counter() - t0)
    share = None
    sim = getattr(env, "sim", None)
    if sim is not None and getattr(sim, "has_muscles", False):
        share = _muscle_share(env, sim, actions, max(3, steps // 5))
    fb = None
    if differentiable:
        windows = max(1, steps // window)

        def one_window() -> None:
            env.detach()
            acts = torch.stack([actions() for _ in range(window)]).requires_grad_(True)
            total = torch.zeros((), device=dev)
            for t in range(window):
                _, reward, *_ = env.step(acts[t])
                total = total + reward.sum()
            total.backward()

        one_window()  # warm-up: adjoint kernels
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(windows):
            one_window()
        _sync(dev)
        fb = num_envs * window * windows / (time.perf_counter() - t0)
    env.close()
    return EnvBenchResult(name, num_envs, str(dev), fwd, fb, window, share)


def _muscle_share(env: Any, sim: Any, actions: Any, steps: int, rounds: int = 5) -> float:
    """Fraction of a forward control step spent on muscles.

    Timings with and without muscle forces alternate for ``rounds`` rounds (so drifts in machine
    load hit both alike) and the fastest of each is kept: ``1 - t_without / t_with``.
    """
    q, qd = env.q.detach(), env.qd.detach()
    act = actions()

    def timed() -> float:
        _sync(env.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            sim.forward(q, qd, act)
        _sync(env.device)
        return time.perf_counter() - t0

    with_muscles, without = [], []
    with torch.no_grad():
        for _ in range(rounds):
            with_muscles.append(timed())
            with sim.muscles_disabled():
                sim.forward(q, qd, act)  # untimed: on CUDA this captures a graph without muscles
                without.append(timed())
    return max(0.0, 1.0 - min(without) / min(with_muscles))
