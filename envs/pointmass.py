"""A tiny differentiable torch environment: a point mass (2-D by default) pushed toward a goal.

It exists so that tests, smoke runs and new algorithms have an env that starts instantly, runs
thousands of worlds per millisecond on a CPU and has exact gradients through its dynamics.

Dynamics per world (SI units, ``dt`` seconds per control step, semi-implicit Euler)::

    v' = (1 - damping * dt) * v + dt * max_force * a / mass
    p' = p + dt * v'

Observation ``(p, v)`` (``2·dims`` values, m and m/s). Reward ``-(|p' - g|^2 + 0.1 |v'|^2 + 0.01 |a|^2)``
with the goal ``g`` (the origin by default). A world terminates when ``|p'| > bound`` and is truncated
after ``episode_length`` steps. ``dims`` and ``goal`` make cheap task variants of different sizes
for multi-task tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pwm_bench.envs.base import VecEnv


@dataclasses.dataclass
class PointMassConfig:
    """Knobs of the point-mass env."""

    episode_length: int = 100
    """Time limit in control steps."""
    dt: float = 0.05
    """Control step [s]."""
    mass: float = 1.0
    """Mass [kg]."""
    max_force: float = 2.0
    """Force at action 1 [N]."""
    damping: float = 0.5
    """Linear velocity damping [1/s]."""
    init_range: float = 2.0
    """Initial positions are uniform in [-init_range, init_range]^2 [m]."""
    bound: float = 5.0
    """Leaving the disc of this radius [m] terminates the episode."""
    dims: int = 2
    """Spatial dimensions (observation 2·dims, action dims)."""
    goal: tuple[float, ...] = ()
    """Goal position [m], ``dims`` values; empty means the origin."""

    def validate(self) -> None:
        from pwm_bench.errors import UsageError

        if self.dims < 1:
            raise UsageError(f"env.dims must be >= 1, got {self.dims}")
        if self.goal and len(self.goal) != self.dims:
            raise UsageError(f"env.goal needs {self.dims} values (env.dims), got {len(self.goal)}")


class PointMassEnv(VecEnv):
    """Batched differentiable point mass; see the module docstring."""

    supports_gradients = True

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        differentiable: bool = False,
        cfg: PointMassConfig | None = None,
    ) -> None:
        self.cfg = cfg or PointMassConfig()
        self.cfg.validate()
        d = self.cfg.dims
        super().__init__(
            name="pointmass",
            num_envs=num_envs,
            obs_dim=2 * d,
            act_dim=d,
            device=device,
            max_episode_steps=self.cfg.episode_length,
            differentiable=differentiable,
        )
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(0)
        self.pos = torch.zeros(num_envs, d, device=self.device)
        self.vel = torch.zeros(num_envs, d, device=self.device)
        self.goal = torch.tensor(self.cfg.goal or (0.0,) * d, dtype=torch.float32, device=self.device)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def _sample_pos(self, n: int) -> torch.Tensor:
        u = torch.rand(n, self.cfg.dims, generator=self._gen, device=self.device)
        return (2.0 * u - 1.0) * self.cfg.init_range

    def _reset(self, seed: int | None) -> torch.Tensor:
        if seed is not None:
            self._gen.manual_seed(seed)
        self.pos = self._sample_pos(self.num_envs)
        self.vel = torch.zeros(self.num_envs, self.cfg.dims, device=self.device)
        self.t.zero_()
        return torch.cat([self.pos, self.vel], dim=-1)

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        c = self.cfg
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            vel = (1.0 - c.damping * c.dt) * self.vel + c.dt * c.max_force * actions / c.mass
            pos = self.pos + c.dt * vel
            reward = -(
                (pos - self.goal).square().sum(-1) + 0.1 * vel.square().sum(-1) + 0.01 * actions.square().sum(-1)
            )
            self.t += 1
            terminated = pos.detach().norm(dim=-1) > c.bound
            truncated = (self.t >= c.episode_length) & ~terminated
            done = terminated | truncated
            final_obs = torch.cat([pos, vel], dim=-1)
            if bool(done.any()) and not self._no_resets:
                n = int(done.sum())
                keep = (~done).unsqueeze(-1)
                new_pos = torch.zeros_like(pos)
                new_pos[done] = self._sample_pos(n)
                pos = torch.where(keep, pos, new_pos)
                vel = torch.where(keep, vel, torch.zeros_like(vel))
                self.t.masked_fill_(done, 0)
            self.pos, self.vel = pos, vel
            obs = torch.cat([pos, vel], dim=-1)
        info: dict[str, Any] = {"final_obs": final_obs, "_final_obs": done}
        return obs, reward, terminated, truncated, info

    def detach(self) -> None:
        """Cut the autograd graph at the current state without resetting any world."""
        self.pos = self.pos.detach()
        self.vel = self.vel.detach()

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copy of the simulator state: positions, velocities, episode clocks."""
        return {"pos": self.pos.detach().clone(), "vel": self.vel.detach().clone(), "t": self.t.clone()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`get_state`."""
        self.pos, self.vel, self.t = state["pos"].clone(), state["vel"].clone(), state["t"].clone()
