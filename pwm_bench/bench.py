"""Environment throughput measurement (``pwm-bench bench-env`` and the benchmark suite).

Throughput is reported in control steps per second summed over worlds (``num_envs`` worlds stepping
once count as ``num_envs`` control steps), for the forward pass alone and for a differentiable
window (forward steps with gradients recorded, then one backward pass through all of them).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
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
        threads: torch's CPU threads during the measurement.
        sim_threads: CPU threads the Warp sim split its worlds across (1 on CUDA and for non-Warp envs).
    """

    env: str
    num_envs: int
    device: str
    forward_sps: float
    forward_backward_sps: float | None
    window: int
    muscle_share: float | None = None
    threads: int = 1
    sim_threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _env_and_actions(
    name: str, num_envs: int, device: str, differentiable: bool, seed: int, overrides: dict[str, Any]
) -> tuple[Any, Callable[[], torch.Tensor]]:
    """The env, reset with ``seed``, and a source of seeded uniform random actions ``(num_envs, A)``."""
    from pwm_bench.envs import make_env

    env = make_env(name, num_envs, device, differentiable=differentiable, **overrides)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def actions() -> torch.Tensor:
        return (torch.rand(num_envs, env.act_dim, generator=gen) * 2 - 1).to(env.device)

    env.reset(seed=seed)
    return env, actions


def _window(
    env: Any, actions: Callable[[], torch.Tensor], window: int, before_backward: Callable[[], None] | None = None
) -> None:
    """One differentiable window: ``window`` recorded steps, then the backward pass of their summed reward."""
    env.detach()
    acts = torch.stack([actions() for _ in range(window)]).requires_grad_(True)
    total = torch.zeros((), device=env.device)
    for t in range(window):
        _, reward, *_ = env.step(acts[t])
        total = total + reward.sum()
    if before_backward is not None:
        before_backward()
    total.backward()


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
    env, actions = _env_and_actions(name, num_envs, device, differentiable, seed, overrides)
    dev = env.device
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
        _window(env, actions, window)  # warm-up: adjoint kernels
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(windows):
            _window(env, actions, window)
        _sync(dev)
        fb = num_envs * window * windows / (time.perf_counter() - t0)
    sim_threads = int(getattr(sim, "threads", 1))
    env.close()
    return EnvBenchResult(name, num_envs, str(dev), fwd, fb, window, share, torch.get_num_threads(), sim_threads)


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


# --------------------------------------------------------------------------------------------------
# where a control step's time goes (``pwm-bench bench-env --profile``)

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contact", ("ground_contact",)),
    ("muscles and joint springs", ("muscle", "ball_springs")),
    ("actions", ("scatter_actions",)),
    ("mass matrix and factorisation", ("eval_rigid_jacobian", "eval_rigid_mass", "dense_gemm", "dense_cholesky")),
    ("linear solve", ("dense_solve",)),
    ("kinematics", ("fk", "joint_qd")),
    ("dynamics terms", ("eval_rigid_id", "eval_rigid_tau", "joint_f")),
    ("integration", ("integrate",)),
)
"""Stages of a Featherstone control step and the substrings of the Warp kernel names that belong to
each (Newton's solver kernels and this project's contact, action and muscle kernels)."""

TORCH_SIDE = "torch side (observations, rewards, resets, transfers, Python)"
"""The part of a step spent outside Warp kernels."""


def stage_of(kernel: str) -> str:
    """The stage (:data:`STAGES`) a Warp kernel name belongs to, or ``"other kernels"``."""
    for stage, patterns in STAGES:
        if any(p in kernel for p in patterns):
            return stage
    return "other kernels"


@dataclasses.dataclass
class StageShare:
    """One stage of a profiled control step.

    Attributes:
        phase: ``"forward"`` (a step without gradients) or ``"forward+backward"`` (a step of a
            differentiable window and its share of the backward pass).
        part: within forward+backward: ``"forward"`` (the recorded step), ``"backward re-run"`` (the
            step re-run for its tape) or ``"adjoint"`` (the adjoint kernels); else ``"forward"``.
        stage: a name of :data:`STAGES`, ``"other kernels"`` or :data:`TORCH_SIDE`.
        ms_per_step: milliseconds per control step of all worlds.
        share: fraction of the phase's time.
        launches_per_step: kernel launches per control step (0 for the torch side).
    """

    phase: str
    part: str
    stage: str
    ms_per_step: float
    share: float
    launches_per_step: float


@dataclasses.dataclass
class EnvProfile:
    """A profiled env: the per-stage shares of each phase and the phases' measured step times.

    ``step_ms`` maps a phase to its milliseconds per control step (all worlds) measured with the
    kernels timed one by one; timing every launch adds a little to each, so the throughput of
    :func:`bench_env` (measured without it) is the one to quote.
    """

    env: str
    num_envs: int
    device: str
    step_ms: dict[str, float]
    stages: list[StageShare]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _KernelClock:
    """Times every ``warp.launch`` while active (synchronising around it on CUDA), keyed by
    ``(kernel name, adjoint, part)``; ``part`` is set by the caller as the step goes on."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.part = "forward"
        self.seconds: dict[tuple[str, bool, str], float] = {}
        self.launches: dict[tuple[str, bool, str], int] = {}

    def __enter__(self) -> _KernelClock:
        import warp

        self._warp, self._launch = warp, warp.launch
        cuda = self.device.type == "cuda"

        def timed(kernel: Any, *args: Any, **kwargs: Any) -> Any:
            if cuda:
                warp.synchronize_device()
            t0 = time.perf_counter()
            out = self._launch(kernel, *args, **kwargs)
            if cuda:
                warp.synchronize_device()
            key = (getattr(kernel, "key", str(kernel)), bool(kwargs.get("adjoint", False)), self.part)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
            self.launches[key] = self.launches.get(key, 0) + 1
            return out

        # wp.launch_tiled calls the launch of warp's context module, not warp.launch: patch both
        self._context = sys.modules[self._launch.__module__]
        warp.launch = self._context.launch = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self._warp.launch = self._context.launch = self._launch


def profile_env(
    name: str,
    num_envs: int,
    device: str = "cpu",
    *,
    differentiable: bool = False,
    steps: int = 20,
    window: int = 8,
    seed: int = 0,
    **overrides: Any,
) -> EnvProfile:
    """Split an env's control step into :data:`STAGES` by timing each Warp kernel launch.

    The forward phase times ``steps`` steps without gradients. With ``differentiable``, windows of
    ``window`` recorded steps and their backward pass are timed too; that phase is split into the
    recorded forward steps, the re-run of each step in the backward pass, and
    the adjoint kernels. Everything outside kernels is the torch side. A Warp env is profiled with
    its worlds on one thread and its launches made one by one (``sim_threads=1``,
    ``graph_capture=False``).
    """
    from pwm_bench.envs import env_spec

    if "sim_threads" in {f.name for f in dataclasses.fields(env_spec(name).config())}:
        # launches are timed one by one, from one thread, and a replayed graph would hide them
        overrides = {**overrides, "sim_threads": 1, "graph_capture": False}
    env, actions = _env_and_actions(name, num_envs, device, differentiable, seed, overrides)
    dev = env.device
    with torch.no_grad():
        for _ in range(3):
            env.step(actions())
    phases: list[tuple[str, _KernelClock, float, int]] = []
    with _KernelClock(dev) as clock, torch.no_grad():
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(actions())
        _sync(dev)
        phases.append(("forward", clock, time.perf_counter() - t0, steps))
    if differentiable:
        _window(env, actions, window)  # warm-up: adjoint kernels
        windows = max(1, steps // window)
        with _KernelClock(dev) as clock:

            def backward_part() -> None:
                clock.part = "backward"

            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(windows):
                clock.part = "forward"
                _window(env, actions, window, backward_part)
            _sync(dev)
            phases.append(("forward+backward", clock, time.perf_counter() - t0, windows * window))
    env.close()
    stages: list[StageShare] = []
    step_ms: dict[str, float] = {}
    for phase, clock, seconds, count in phases:
        step_ms[phase] = 1000.0 * seconds / count
        grouped: dict[tuple[str, str], list[float]] = {}
        for (kernel, adjoint, part), s in clock.seconds.items():
            sub = "adjoint" if adjoint else ("backward re-run" if part == "backward" else "forward")
            row = grouped.setdefault((sub, stage_of(kernel)), [0.0, 0.0])
            row[0] += s
            row[1] += clock.launches[(kernel, adjoint, part)]
        kernel_seconds = sum(s for s, _ in grouped.values())
        for (sub, stage), (s, n) in sorted(grouped.items(), key=lambda kv: -kv[1][0]):
            stages.append(StageShare(phase, sub, stage, 1000.0 * s / count, s / seconds, n / count))
        rest = max(0.0, seconds - kernel_seconds)
        stages.append(StageShare(phase, "", TORCH_SIDE, 1000.0 * rest / count, rest / seconds, 0.0))
    return EnvProfile(name, num_envs, str(dev), step_ms, stages)
