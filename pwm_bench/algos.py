"""The algorithm registry.

An algorithm is one module that defines a config dataclass (deriving from
:class:`~pwm_bench.config.TrainConfig`) and ``train(env, cfg, run) -> Policy``, plus one
registration::

    ALGORITHM = Algorithm(name="myalgo", config=MyConfig, train=train, description="...")

Built-in algorithms are registered here by import path and loaded on first use. Third-party
packages register through the entry-point group ``pwm_bench.algorithms``, whose entries point at an
:class:`Algorithm` object (``myalgo = "my_package.module:ALGORITHM"``), or call
:func:`register_algorithm` directly.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pwm_bench.errors import unknown_choice

if TYPE_CHECKING:
    import torch

    from pwm_bench.config import TrainConfig
    from pwm_bench.envs.base import VecEnv
    from pwm_bench.run import Run

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pwm_bench.algorithms"


@runtime_checkable
class Policy(Protocol):
    """What ``train`` returns: maps observations to actions.

    A policy with memory across steps of an episode (e.g. a planner's warm start) may also define
    ``reset_episodes(mask)``; the evaluator calls it with a boolean ``(N,)`` mask of the worlds
    whose episode begins anew.
    """

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, act_dim)`` in ``[-1, 1]`` for observations ``(N, obs_dim)``."""
        ...


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A registered algorithm.

    Attributes:
        name: registry name (``pwm-bench run --algo NAME``).
        config: its config dataclass type (a :class:`TrainConfig` subclass).
        train: ``train(env, cfg, run) -> Policy``; reports through ``run`` (see :class:`Run`).
        description: one line for ``pwm-bench list``.
        requires_gradients: the algorithm differentiates through the simulator and needs an env
            built with ``differentiable=True``.
        wants_gradients: optional ``wants_gradients(cfg) -> bool``: an algorithm that uses simulator
            gradients only in some configurations (a diagnostic, a control) gets a differentiable
            env when this is True for the run's config and the env supports it.
        prepare: optional ``prepare(cfg, ctx) -> cfg`` called once before a fresh run is created
            (not on resume), with a :class:`PrepareContext`; it may build cached artefacts the run
            needs (datasets, pretrained models) and returns the config that the run records.
    """

    name: str
    config: type[TrainConfig]
    train: Callable[[VecEnv, Any, Run], Policy]
    description: str
    requires_gradients: bool = False
    prepare: Callable[[Any, PrepareContext], Any] | None = None
    wants_gradients: Callable[[Any], bool] | None = None

    def differentiable_env(self, cfg: Any, env_supports: bool) -> bool:
        """Whether a run with config ``cfg`` trains on an env built with ``differentiable=True``."""
        if self.requires_gradients:
            return True
        return env_supports and self.wants_gradients is not None and bool(self.wants_gradients(cfg))


@dataclasses.dataclass
class PrepareContext:
    """What :attr:`Algorithm.prepare` knows about the run being created."""

    env: str
    """Env name."""
    env_overrides: dict[str, Any]
    """Env config overrides of the run (``--set env.KEY=VALUE`` without the prefix)."""
    seed: int
    preset: str
    device: torch.device
    out: Any
    """Results root (a path)."""
    reporter: Any
    """The run's progress reporter."""


_BUILTIN: dict[str, str] = {
    "ppo": "pwm_bench.baselines.ppo:ALGORITHM",
    "sac": "pwm_bench.baselines.sac:ALGORITHM",
    "shac": "pwm_bench.baselines.shac:ALGORITHM",
    "tdmpc2": "pwm_bench.baselines.tdmpc2:ALGORITHM",
    "pwm": "pwm_bench.pwm:ALGORITHM",
}
_ALGOS: dict[str, Algorithm] = {}
_ENTRY_POINTS_LOADED = False


def register_algorithm(algo: Algorithm) -> Algorithm:
    """Add ``algo`` to the registry (replacing one of the same name) and return it."""
    _ALGOS[algo.name] = algo
    return algo


def _load_ref(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not break the harness
            log.warning("could not load algorithm entry point %r (%s): %s", ep.name, ep.value, exc)
            continue
        if not isinstance(obj, Algorithm):
            log.warning("entry point %r (%s) is not a pwm_bench Algorithm; ignored", ep.name, ep.value)
            continue
        _ALGOS.setdefault(obj.name, obj)


def reload_entry_points() -> None:
    """Forget loaded entry points so the next lookup scans installed packages again."""
    global _ENTRY_POINTS_LOADED
    _ENTRY_POINTS_LOADED = False


def algorithm_names() -> list[str]:
    """Names of all available algorithms (built-in, registered and from entry points)."""
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_ALGOS))


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``; raises :class:`UsageError` naming the valid choices."""
    if name in _ALGOS:
        return _ALGOS[name]
    if name in _BUILTIN:
        return register_algorithm(_load_ref(_BUILTIN[name]))
    _load_entry_points()
    if name in _ALGOS:
        return _ALGOS[name]
    raise unknown_choice("algorithm", name, algorithm_names())


__all__ = [
    "ENTRY_POINT_GROUP",
    "Algorithm",
    "Policy",
    "PrepareContext",
    "algorithm_names",
    "get_algorithm",
    "register_algorithm",
    "reload_entry_points",
]
