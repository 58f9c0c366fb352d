"""Any Gymnasium continuous-control env through the batched torch interface (``gym:<id>``).

Worlds run in a :class:`gymnasium.vector.SyncVectorEnv` with same-step autoreset; actions in
``[-1, 1]`` are mapped linearly onto the env's action bounds. There are no simulator gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError


@dataclasses.dataclass
class GymEnvConfig:
    """Knobs of the gymnasium bridge."""

    max_episode_steps: int | None = None
    """Override the env's registered time limit (control steps); ``None`` keeps it."""


class GymVecEnv(VecEnv):
    """``num_envs`` copies of gymnasium env ``env_id`` (continuous Box actions) on ``device``.

    Observations are flattened to float32 vectors of size ``obs_dim``. Sub-env ``i`` is seeded with
    ``seed + i`` on reset.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        differentiable: bool = False,
        cfg: GymEnvConfig | None = None,
    ) -> None:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        cfg = cfg or GymEnvConfig()
        try:
            spec = gym.spec(env_id)
        except gym.error.Error as exc:
            raise UsageError(f"unknown gymnasium env '{env_id}': {exc}") from None
        kwargs: dict[str, Any] = {}
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        try:
            probe = gym.make(env_id, **kwargs)
        except Exception as exc:  # missing optional dependency (mujoco, box2d, ...)
            raise UsageError(f"cannot create gymnasium env '{env_id}': {exc}") from None
        act_space, obs_space = probe.action_space, probe.observation_space
        max_steps = probe.spec.max_episode_steps if probe.spec else spec.max_episode_steps
        probe.close()
        if not isinstance(act_space, gym.spaces.Box):
            raise UsageError(f"gym:{env_id} has {type(act_space).__name__} actions; only continuous Box is supported")
        if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            raise UsageError(f"gym:{env_id} has unbounded actions; cannot map [-1, 1] onto them")
        self._vec = SyncVectorEnv(
            [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        self._low = act_space.low.astype(np.float64).reshape(-1)
        self._high = act_space.high.astype(np.float64).reshape(-1)
        self._act_shape = act_space.shape
        super().__init__(
            name=f"gym:{env_id}",
            num_envs=num_envs,
            obs_dim=int(gym.spaces.flatdim(obs_space)),
            act_dim=int(np.prod(act_space.shape)),
            device=device,
            max_episode_steps=max_steps,
            differentiable=differentiable,
        )

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1), device=self.device)

    def _reset(self, seed: int | None) -> torch.Tensor:
        obs, _ = self._vec.reset(seed=seed)
        return self._obs(obs)

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        a = actions.detach().cpu().numpy().astype(np.float64)
        scaled = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        obs, rew, term, trunc, info = self._vec.step(scaled.reshape((self.num_envs, *self._act_shape)))
        obs_t = self._obs(obs)
        done = np.logical_or(term, trunc)
        final = obs_t.clone()
        if done.any():
            for i in np.flatnonzero(done):
                final[i] = torch.as_tensor(
                    np.asarray(info["final_obs"][i], dtype=np.float32).reshape(-1), device=self.device
                )
        done_t = torch.as_tensor(done, device=self.device)
        out_info: dict[str, Any] = {"final_obs": final, "_final_obs": done_t}
        return (
            obs_t,
            torch.as_tensor(np.asarray(rew, dtype=np.float32), device=self.device),
            torch.as_tensor(term, device=self.device),
            torch.as_tensor(trunc, device=self.device),
            out_info,
        )

    def close(self, **kwargs: Any) -> None:
        self._vec.close()
        super().close()
