"""Environments of pwm-bench and their registry.

``make_env(name, num_envs, device, differentiable=False, **overrides)`` builds any registered env;
``gym:<id>`` wraps a Gymnasium continuous-control env; ``mt:<taskset>`` is a multi-task set
(:mod:`pwm_bench.envs.multitask`). Every env is a :class:`VecEnv`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError, unknown_choice

GYM_PREFIX = "gym:"


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A registered environment.

    Attributes:
        name: registry name (``pwm-bench run --env NAME``).
        factory: ``factory(num_envs, device, differentiable, cfg) -> VecEnv``.
        config: dataclass type of the env's knobs (overridable with ``--set env.<field>=...``).
        description: one line for ``pwm-bench list``.
        differentiable: whether the env provides simulator gradients.
    """

    name: str
    factory: Callable[..., VecEnv]
    config: type
    description: str
    differentiable: bool = False


_ENVS: dict[str, EnvSpec] = {}


def register_env(spec: EnvSpec) -> EnvSpec:
    """Add ``spec`` to the registry (replacing one of the same name) and return it."""
    if spec.name.startswith(GYM_PREFIX):
        raise ValueError(f"env names may not start with '{GYM_PREFIX}' (reserved for gymnasium envs)")
    _ENVS[spec.name] = spec
    return spec


def list_envs() -> dict[str, EnvSpec]:
    """Registered envs by name (the ``gym:<id>`` family is not listed here)."""
    _register_builtins()
    return dict(_ENVS)


def env_spec(name: str) -> EnvSpec:
    """Spec of env ``name``; ``gym:<id>`` names resolve to the gymnasium bridge."""
    _register_builtins()
    if name.startswith(GYM_PREFIX):
        from pwm_bench.envs.gym_bridge import GymEnvConfig, GymVecEnv

        env_id = name[len(GYM_PREFIX) :]
        if not env_id:
            raise UsageError("env 'gym:' needs a gymnasium id, e.g. gym:Pendulum-v1")

        def factory(num_envs: int, device: Any, differentiable: bool, cfg: Any) -> VecEnv:
            return GymVecEnv(env_id, num_envs, device, differentiable, cfg)

        return EnvSpec(name, factory, GymEnvConfig, f"gymnasium env {env_id}")
    if name.startswith("mt:"):
        from pwm_bench.envs.multitask import TaskSetConfig, TaskSetEnv, task_set

        tasks = task_set(name)

        def mt_factory(num_envs: int, device: Any, differentiable: bool, cfg: Any) -> VecEnv:
            if differentiable:
                raise UsageError(f"env '{name}': task sets have no simulator gradients")
            return TaskSetEnv(name, tasks, num_envs, device)

        return EnvSpec(name, mt_factory, TaskSetConfig, f"task set of {len(tasks)} tasks")
    if name not in _ENVS:
        raise unknown_choice("env", name, [*_ENVS, "gym:<id>", "mt:<taskset>"])
    return _ENVS[name]


def make_env(
    name: str,
    num_envs: int,
    device: Any = "cpu",
    differentiable: bool = False,
    **overrides: Any,
) -> VecEnv:
    """Build ``num_envs`` parallel worlds of env ``name`` on ``device``.

    Args:
        name: registry name or ``gym:<id>``.
        num_envs: number of parallel worlds.
        device: torch/Warp device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        differentiable: keep outputs on the autograd graph of actions and incoming state.
        **overrides: fields of the env's config dataclass (type-checked).
    """
    from pwm_bench.config import apply_overrides

    spec = env_spec(name)
    cfg = apply_overrides(spec.config(), overrides, what=f"'{name}' env option")
    env = spec.factory(num_envs, device, differentiable, cfg)
    env.name = name  # the registered name, also for subclasses registered under another one
    return env


_BUILTINS_DONE = False


def _register_builtins() -> None:
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    _BUILTINS_DONE = True
    from pwm_bench.envs.pointmass import PointMassConfig, PointMassEnv

    register_env(
        EnvSpec(
            "pointmass",
            lambda n, device, diff, cfg: PointMassEnv(n, device, diff, cfg),
            PointMassConfig,
            "2-D point mass pushed to the origin; differentiable torch toy env for tests",
            differentiable=True,
        )
    )
    from pwm_bench.envs import locomotion as loco

    warp_envs = [
        ("hopper", loco.HopperEnv, loco.HopperConfig, "DiffRL hopper (obs 11, act 3), Warp/Newton, differentiable"),
        ("ant", loco.AntEnv, loco.AntConfig, "DiffRL ant (obs 37, act 8), Warp/Newton, differentiable"),
        (
            "humanoid",
            loco.HumanoidEnv,
            loco.HumanoidConfig,
            "DiffRL humanoid (obs 76, act 21), Warp/Newton, differentiable",
        ),
        (
            "snu_humanoid",
            loco.SNUHumanoidEnv,
            loco.SNUHumanoidConfig,
            "DiffRL SNU humanoid: MASS lower body, 152 muscles (obs 53, act 152); needs the MASS files",
        ),
        (
            "muscle_humanoid",
            loco.MuscleHumanoidEnv,
            loco.MuscleHumanoidConfig,
            "pwm-bench's own 152-muscle lower body on the SNU skeleton (obs 53, act 152); no files needed",
        ),
        (
            "double_pendulum",
            loco.DoublePendulumEnv,
            loco.DoublePendulumConfig,
            "cart double pendulum swing-up (obs 6, act 1), Warp/Newton, differentiable",
        ),
    ]
    for name, cls, cfg_type, description in warp_envs:
        register_env(
            EnvSpec(
                name,
                lambda n, device, diff, cfg, cls=cls: cls(n, device, diff, cfg),
                cfg_type,
                description,
                differentiable=True,
            )
        )


__all__ = ["GYM_PREFIX", "EnvSpec", "VecEnv", "env_spec", "list_envs", "make_env", "register_env"]
