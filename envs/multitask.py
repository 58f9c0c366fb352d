"""Multi-task env sets: several tasks behind one padded observation/action interface (``mt:<taskset>``).

A task is a registered env plus env-config overrides (``hopper`` with ``direction=-1`` hops
backward, ``ant`` with ``direction_deg=90`` runs along +y). A task set is a named tuple of tasks
(:data:`TASK_SETS`), or an ad-hoc comma-separated list of env names: ``mt:hopper,gym:Pendulum-v1``.

:class:`TaskSetEnv` steps ``n`` worlds of every task, laid out task-major (worlds ``k·n .. k·n+n-1``
belong to task ``k``). Observations are zero-padded to the largest observation size of the set and
actions are truncated to each task's own size, following TD-MPC2's multi-task convention;
:attr:`TaskSetEnv.action_mask` ``(T, A)`` says which action entries a task uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError, unknown_choice

MT_PREFIX = "mt:"


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a set.

    Attributes:
        name: short task name (``hopper-backward``), used in metric names and folders.
        env: registered env name or ``gym:<id>``.
        overrides: env-config fields that define the task (e.g. ``{"direction": -1.0}``).
    """

    name: str
    env: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def make(self, num_envs: int, device: Any = "cpu", differentiable: bool = False) -> VecEnv:
        """``num_envs`` worlds of this task."""
        from pwm_bench.envs import make_env

        return make_env(self.env, num_envs, device, differentiable, **dict(self.overrides))


def _ant(deg: int, label: str) -> Task:
    return Task(f"ant-run-{label}", "ant", {"direction_deg": float(deg)})


TASK_SETS: dict[str, tuple[Task, ...]] = {
    # a seconds-scale set for tests and smoke runs: two goals and two sizes of point mass
    "toy": (
        Task("pointmass-origin", "pointmass"),
        Task("pointmass-goal", "pointmass", {"goal": (1.0, -1.0)}),
        Task("pointmass-1d", "pointmass", {"dims": 1}),
        Task("pointmass-3d", "pointmass", {"dims": 3, "goal": (0.5, 0.0, -0.5)}),
    ),
    # the cheapest Warp set: the hopper hopping both ways
    "hopper": (
        Task("hopper-hop-forward", "hopper"),
        Task("hopper-hop-backward", "hopper", {"direction": -1.0}),
    ),
    # Warp locomotion: hopper both ways, the ant in four directions, the humanoid running
    "locomotion": (
        Task("hopper-hop-forward", "hopper"),
        Task("hopper-hop-backward", "hopper", {"direction": -1.0}),
        _ant(0, "forward"),
        _ant(90, "left"),
        _ant(180, "backward"),
        _ant(270, "right"),
        Task("humanoid-run", "humanoid"),
    ),
}
"""Named task sets (``--env mt:<name>``)."""


def task_set(name: str) -> tuple[Task, ...]:
    """The tasks of ``mt:<name>`` (a registered set, or ``mt:<env>,<env>,...``)."""
    from pwm_bench.envs import env_spec

    body = name.removeprefix(MT_PREFIX)
    if body in TASK_SETS:
        return TASK_SETS[body]
    if "," in body:
        envs = [e.strip() for e in body.split(",")]
        for e in envs:
            if e.startswith(MT_PREFIX):
                raise UsageError(f"env '{name}': a task set cannot contain another task set ({e})")
            env_spec(e)  # a clear error for an unknown env
        if len(set(envs)) != len(envs):
            raise UsageError(f"env '{name}': a task is listed twice")
        return tuple(Task(e.replace(":", "-"), e) for e in envs)
    raise unknown_choice("task set", body, [*TASK_SETS, "<env>,<env>,..."])


@dataclasses.dataclass
class TaskSetConfig:
    """A task set has no knobs of its own; each task's env keeps its defaults plus the task's overrides."""


class TaskSetEnv(VecEnv):
    """``num_envs`` worlds per task of a task set, task-major, obs zero-padded, actions truncated.

    Attributes:
        tasks: the tasks, in order (task id = index).
        envs: one :class:`VecEnv` per task.
        worlds_per_task: ``n``.
        task_ids: ``(T·n,)`` task id of every world.
        action_mask: ``(T, A)`` bool, True where task ``k`` uses action entry ``j``.
        obs_dims, act_dims: each task's own sizes.
    """

    def __init__(self, name: str, tasks: tuple[Task, ...], num_envs: int, device: str | torch.device = "cpu") -> None:
        if not tasks:
            raise UsageError(f"env '{name}': the task set is empty")
        self.tasks = tasks
        self.envs = [t.make(num_envs, device) for t in tasks]
        self.worlds_per_task = num_envs
        self.obs_dims = [e.obs_dim for e in self.envs]
        self.act_dims = [e.act_dim for e in self.envs]
        limits = [e.max_episode_steps for e in self.envs]
        super().__init__(
            name=name,
            num_envs=num_envs * len(tasks),
            obs_dim=max(self.obs_dims),
            act_dim=max(self.act_dims),
            device=device,
            max_episode_steps=None if None in limits else max(x for x in limits if x is not None),
        )
        self.task_ids = torch.arange(len(tasks), device=self.device).repeat_interleave(num_envs)
        self.action_mask = torch.zeros(len(tasks), self.act_dim, dtype=torch.bool, device=self.device)
        for k, a in enumerate(self.act_dims):
            self.action_mask[k, :a] = True

    def pad_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Zero-pad observations ``(B, O_k)`` to ``(B, O)``."""
        return torch.nn.functional.pad(obs, (0, self.obs_dim - obs.shape[-1]))

    def _reset(self, seed: int | None) -> torch.Tensor:
        obs = [e.reset(seed=None if seed is None else seed + 1009 * k)[0] for k, e in enumerate(self.envs)]
        return torch.cat([self.pad_obs(o) for o in obs])

    def _step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        n = self.worlds_per_task
        parts = [e.step(actions[k * n : (k + 1) * n, : self.act_dims[k]]) for k, e in enumerate(self.envs)]
        obs = torch.cat([self.pad_obs(p[0]) for p in parts])
        reward = torch.cat([p[1] for p in parts])
        terminated = torch.cat([p[2] for p in parts])
        truncated = torch.cat([p[3] for p in parts])
        final = torch.cat([self.pad_obs(p[4]["final_obs"]) for p in parts])
        return obs, reward, terminated, truncated, {"final_obs": final, "_final_obs": terminated | truncated}

    def close(self, **kwargs: Any) -> None:
        for e in self.envs:
            e.close()
        super().close()


__all__ = ["MT_PREFIX", "TASK_SETS", "Task", "TaskSetConfig", "TaskSetEnv", "task_set"]
