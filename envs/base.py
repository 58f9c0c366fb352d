"""Batched torch environment base class shared by every pwm-bench environment.

One :class:`VecEnv` simulates ``num_envs`` worlds and speaks torch tensors on its device, following
Gymnasium's vector conventions with same-step autoreset:

- ``reset(seed=...) -> (obs, info)``; ``obs`` has shape ``(num_envs, obs_dim)``, dtype float32.
- ``step(actions) -> (obs, reward, terminated, truncated, info)`` with ``actions`` of shape
  ``(num_envs, act_dim)`` in ``[-1, 1]`` (clamped), ``reward`` float32 ``(num_envs,)`` and boolean
  ``terminated`` / ``truncated`` ``(num_envs,)``. Worlds that finish are reset inside the same step:
  ``obs`` holds their first observation of the new episode and ``info["final_obs"]`` (shape
  ``(num_envs, obs_dim)``, a batched tensor unlike SyncVectorEnv's object array) holds the last one,
  valid where ``info["_final_obs"]`` is True.
- Finished episodes are reported as ``info["episode"] = {"r": returns, "l": lengths}`` (both
  ``(num_envs,)``) valid where ``info["_episode"]`` is True.

Subclasses implement :meth:`_reset` and :meth:`_step`; the base class clamps actions, keeps the
episode statistics and checks observations for NaN/inf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from pwm_bench.errors import NonFiniteError, UsageError


class VecEnv(gym.vector.VectorEnv):
    """Base class: ``num_envs`` worlds on one device, torch in and out.

    Attributes:
        name: registry name of the environment (e.g. ``"gym:Pendulum-v1"``).
        num_envs: number of parallel worlds.
        obs_dim: observation size per world.
        act_dim: action size per world.
        device: torch device of every tensor the env returns.
        max_episode_steps: time limit in control steps (``None`` if the env has none).
        differentiable: whether outputs stay connected to the autograd graph of the actions.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012
    supports_gradients: bool = False
    """Whether the env can be built with ``differentiable=True``."""

    def __init__(
        self,
        *,
        name: str,
        num_envs: int,
        obs_dim: int,
        act_dim: int,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        differentiable: bool = False,
        check_finite: bool = True,
    ) -> None:
        if differentiable and not self.supports_gradients:
            raise UsageError(f"env '{name}' has no simulator gradients (differentiable=True not supported)")
        if num_envs <= 0:
            raise UsageError(f"num_envs must be positive, got {num_envs}")
        self.name = name
        self.num_envs = num_envs
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.device = torch.device(device)
        self.max_episode_steps = max_episode_steps
        self.differentiable = differentiable
        self.check_finite = check_finite
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._ep_return = torch.zeros(num_envs, device=self.device)
        self._ep_length = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._steps_taken = 0

    # -- to implement -------------------------------------------------------------------------------

    def _reset(self, seed: int | None) -> torch.Tensor:
        """Reset every world; return observations ``(num_envs, obs_dim)``."""
        raise NotImplementedError

    def _step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance every world one control step with actions in ``[-1, 1]``; reset finished ones.

        Must return ``(obs, reward, terminated, truncated, info)`` as described in the module
        docstring, with ``info["final_obs"]`` set.
        """
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset all worlds (seeded if ``seed`` is given); returns ``(obs, info)``."""
        obs = self._reset(seed)
        self._ep_return.zero_()
        self._ep_length.zero_()
        self._check(obs, "reset")
        return obs, {}

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance all worlds one control step; see the module docstring for shapes."""
        actions = torch.as_tensor(actions, device=self.device)
        if actions.shape != (self.num_envs, self.act_dim):
            raise ValueError(
                f"env '{self.name}': actions must have shape {(self.num_envs, self.act_dim)}, "
                f"got {tuple(actions.shape)}"
            )
        obs, reward, terminated, truncated, info = self._step(actions.clamp(-1.0, 1.0))
        self._steps_taken += 1
        done = terminated | truncated
        with torch.no_grad():
            self._ep_return += reward.detach()
            self._ep_length += 1
            info["episode"] = {"r": self._ep_return.clone(), "l": self._ep_length.clone()}
            info["_episode"] = done
            self._ep_return.masked_fill_(done, 0.0)
            self._ep_length.masked_fill_(done, 0)
        self._check(obs, "step")
        return obs, reward, terminated, truncated, info

    def detach(self) -> None:
        """Cut the autograd graph of the simulator state (window boundary); worlds are not reset."""

    _no_resets: bool = False
    """Set by :meth:`resets_suspended`; envs that support it skip their auto-reset while it is True."""

    @contextlib.contextmanager
    def resets_suspended(self) -> Iterator[None]:
        """Within the block, finished worlds are reported but not reset (gradient checks, diagnostics).

        Only envs whose ``_step`` honours ``_no_resets`` support it (the Warp envs and the point mass).
        """
        self._no_resets = True
        try:
            yield
        finally:
            self._no_resets = False

    def close(self, **kwargs: Any) -> None:
        self.closed = True

    def _check(self, obs: torch.Tensor, where: str) -> None:
        if not self.check_finite:
            return
        bad = ~torch.isfinite(obs)
        if bool(bad.any()):
            world, index = (int(i) for i in bad.nonzero()[0])
            raise NonFiniteError(
                f"non-finite observation from env '{self.name}' after {where} "
                f"(control step {self._steps_taken}, world {world}, obs index {index})"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, num_envs={self.num_envs}, obs_dim={self.obs_dim}, "
            f"act_dim={self.act_dim}, device={self.device})"
        )
