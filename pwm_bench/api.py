"""The Python API: train a run, load a stored policy, make an env (for notebooks and scripts).

::

    import pwm_bench

    result = pwm_bench.train("ppo", "gym:Pendulum-v1", preset="smoke", seed=0, overrides={"lr": 1e-3})
    result.status, result.run_dir, result.summary["final_eval_return"]
    policy = pwm_bench.load_policy(result.run_dir)            # best checkpoint, on the CPU
    env = pwm_bench.make_env("gym:Pendulum-v1", num_envs=4)
    obs, _ = env.reset(seed=0)
    actions = policy.act(obs)                                 # (4, act_dim) in [-1, 1]

``pwm-bench run`` calls :func:`train` (through :func:`pwm_bench.runner.execute`, which it wraps),
so a run started here is an ordinary run of the results store: ``pwm-bench results`` lists it,
``--resume`` continues it and ``plot`` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from pwm_bench.algos import Policy, get_algorithm
from pwm_bench.config import from_dict
from pwm_bench.envs import env_spec, make_env
from pwm_bench.errors import UsageError
from pwm_bench.runner import RunRequest, RunResult, execute, resolve_device
from pwm_bench.store import DEFAULT_ROOT, read_config

log = logging.getLogger(__name__)

Result = RunResult
"""What :func:`train` returns: ``run_dir``, ``status`` (``completed``, ``interrupted`` or ``failed``),
``summary`` (the run's ``summary.json``), ``policy`` (the trained policy) and ``error``."""


def train(
    algo: str,
    env: str,
    *,
    preset: str = "cpu",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    out: str | Path = DEFAULT_ROOT,
    threads: int | None = None,
    run_id: str | None = None,
    loggers: str | None = None,
) -> Result:
    """Train ``algo`` on ``env`` into the results store under ``out`` and return the outcome.

    Args:
        algo: registered algorithm (``pwm-bench list``).
        env: registered env, ``gym:<id>`` or ``mt:<taskset>``.
        preset: ``smoke``, ``cpu`` or ``paper``.
        seed: run seed.
        overrides: config fields as ``--set`` takes them, values as Python objects or strings
            (``{"lr": 1e-3, "hidden": [128, 128], "env.max_episode_steps": 100}``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        out: results root.
        threads: torch CPU threads (None keeps torch's setting).
        run_id: name of the run folder (default: time, seed and a random suffix).
        loggers: loggers besides ``metrics.csv``, e.g. ``"tensorboard,wandb"`` (:mod:`pwm_bench.loggers`).

    Raises:
        UsageError: a bad name or value (nothing is written then).
    """
    req = RunRequest(
        algo=algo,
        env=env,
        seed=seed,
        preset=preset,
        device=device,
        overrides={k: _as_option(v) for k, v in (overrides or {}).items()},
        out=Path(out),
        threads=threads,
        run_id=run_id,
        loggers=loggers,
    )
    return execute(req)


def _as_option(value: Any) -> str:
    """A Python value as ``--set`` would spell it (``[128, 128]`` -> ``[128,128]``, None -> ``none``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_as_option(v) for v in value) + "]"
    return str(value)


class _CheckpointOnly:
    """Stands in for :class:`~pwm_bench.run.Run` to rebuild a stored policy with the algorithm's own
    ``train``: it hands over a checkpoint's state and a budget that is already spent, so ``train``
    builds its networks, restores them and returns its policy without a training step. It offers
    the members an algorithm may use (see :mod:`pwm_bench.run`); the ones that record do nothing.
    """

    def __init__(self, cfg: Any, seed: int, device: torch.device, state: dict[str, Any], eval_env: Any) -> None:
        self.cfg, self.seed, self.device, self.eval_env = cfg, seed, device, eval_env
        self.budget_unit, self.budget = cfg.budget()
        self.env_steps = self.budget if self.budget_unit == "env_steps" else 0
        self.iterations = self.budget if self.budget_unit == "iterations" else 0
        self.extra_summary: dict[str, Any] = {}
        self._state = state

    env_seed = property(lambda self: self.seed)
    progress = property(lambda self: self.budget)
    done = property(lambda self: True)

    def restore(self) -> dict[str, Any]:
        return self._state

    def add_env_steps(self, n: int) -> None:
        pass

    def record_episodes(self, info: Mapping[str, Any]) -> None:
        pass

    def log(self, metrics: Mapping[str, Any]) -> None:
        pass

    def end_iteration(self, policy: Any, state_fn: Any) -> None:
        pass

    @contextlib.contextmanager
    def phase(self, description: str, total: int) -> Any:
        yield lambda n: None


def load_policy(run_dir: str | Path, checkpoint: Literal["best", "latest"] = "best", device: str = "cpu") -> Policy:
    """The policy of a stored run at its ``best`` (highest evaluation return) or ``latest`` checkpoint.

    The policy maps observations ``(N, obs_dim)`` to actions ``(N, act_dim)`` in [-1, 1] with
    ``policy.act(obs, deterministic=True)``, on ``device``. It is rebuilt by the run's algorithm
    from its stored config and checkpoint, so any registered algorithm whose ``train`` restores its
    state through ``run.restore()`` (all built-in ones do) loads this way. Global random states are
    left as they were.

    Raises:
        UsageError: not a run folder, no such checkpoint, or an algorithm that is not registered.
        DamagedFileError: the checkpoint or the config cannot be read.
    """
    from pwm_bench.run import _rng_state, _set_rng_state, read_checkpoint

    run_dir = Path(run_dir)
    if checkpoint not in ("best", "latest"):
        raise UsageError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    record = read_config(run_dir)
    if not record:
        raise UsageError(f"{run_dir}: not a run folder (no config.yaml)")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        raise UsageError(f"{run_dir}: no {checkpoint} checkpoint yet (checkpoints are written at evaluations)")
    algo = get_algorithm(record["algo"])
    cfg = from_dict(algo.config, record["algo_config"])
    env_kwargs = dataclasses.asdict(from_dict(env_spec(record["env"]).config, record.get("env_config") or {}))
    dev = resolve_device(device)
    state = read_checkpoint(path)["algo_state"]
    grads = algo.differentiable_env(cfg, env_spec(record["env"]).differentiable)
    env = make_env(record["env"], cfg.num_envs, dev, grads, **env_kwargs)
    eval_env = make_env(record["env"], cfg.eval_episodes, dev, False, **env_kwargs)
    rng = _rng_state()
    try:
        policy = algo.train(env, cfg, _CheckpointOnly(cfg, int(record["seed"]), dev, state, eval_env))
    finally:
        _set_rng_state(rng)
        env.close()
        eval_env.close()
    log.info("loaded the %s policy of %s (%s checkpoint)", record["algo"], run_dir, checkpoint)
    return policy


__all__ = ["Result", "load_policy", "make_env", "train"]
