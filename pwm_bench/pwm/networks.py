"""PWM's networks: the latent actor, the critic ensemble, and the policies returned by training."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from pwm_bench.nn import ln_mlp
from pwm_bench.world_model import WorldModel

log = logging.getLogger(__name__)


class LatentActor(nn.Module):
    """Gaussian ``N(μ(z), exp(log_std))`` on latents; the model and the env get ``tanh`` of a sample.

    The log std is a state-independent parameter; training clamps it in place to at least
    :data:`LOG_STD_MIN` after every step (as the reference does), so it keeps its gradient.
    """

    def __init__(self, latent_dim: int, act_dim: int, hidden: Sequence[int], init_log_std: float = -1.0) -> None:
        super().__init__()
        self.mu = ln_mlp(latent_dim, hidden, act_dim, "mish")
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, z: torch.Tensor, deterministic: bool = False, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Actions ``tanh(μ + σ ε)`` ``(..., A)`` for latents ``(..., L)`` (reparameterised); ``noise`` is
        ``ε`` (same shape as the actions) when given, else drawn from the global generator."""
        mu = self.mu(z)
        if deterministic:
            return torch.tanh(mu)
        return torch.tanh(mu + self.log_std.exp() * (torch.randn_like(mu) if noise is None else noise))


class CriticEnsemble(nn.Module):
    """``K`` value networks ``V_k(z)``, orthogonal init (gain √2, zero bias)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], num: int = 3) -> None:
        super().__init__()
        self.nets = nn.ModuleList(ln_mlp(latent_dim, hidden, 1, "mish", orthogonal=True) for _ in range(num))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Values ``(K, ...)`` of latents ``(..., L)``."""
        return torch.stack([net(z).squeeze(-1) for net in self.nets])

    def min(self, z: torch.Tensor) -> torch.Tensor:
        """``min_k V_k(z)`` ``(...)``."""
        return self(z).min(dim=0).values


class PWMPolicy:
    """Encoder + actor mean: ``a = tanh(μ(h(o)))`` (no planning).

    For one task of a multi-task model, ``task`` is its id; observations smaller than the model's
    are zero-padded and only the task's first ``act_dim`` action entries are returned.
    """

    def __init__(self, wm: WorldModel, actor: LatentActor, task: int | None = None, act_dim: int | None = None) -> None:
        self.wm, self.actor, self.task = wm, actor, task
        self.act_dim = act_dim or wm.act_dim

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A_task)`` in [-1, 1] for raw observations ``(N, O_task)``."""
        obs = nn.functional.pad(obs, (0, self.wm.obs_dim - obs.shape[-1]))
        task = None if self.task is None else torch.full((obs.shape[0],), self.task, device=obs.device)
        return self.actor(self.wm.encode(obs, task), deterministic=deterministic)[:, : self.act_dim]


class MultiTaskPolicy:
    """One actor per task on a shared model, acting on a :class:`~pwm_bench.envs.multitask.TaskSetEnv`'s
    task-major worlds: rows ``k·n .. k·n+n-1`` of a batch of ``T·n`` observations belong to task ``k``."""

    def __init__(self, wm: WorldModel, actors: Sequence[LatentActor], action_mask: torch.Tensor) -> None:
        self.wm, self.actors, self.action_mask = wm, list(actors), action_mask

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Padded actions ``(T·n, A)`` for padded observations ``(T·n, O)``; unused entries are 0."""
        t_count = len(self.actors)
        if obs.shape[0] % t_count:
            raise ValueError(f"{obs.shape[0]} observations do not split into {t_count} task blocks")
        n = obs.shape[0] // t_count
        out = []
        for k, actor in enumerate(self.actors):
            task = torch.full((n,), k, dtype=torch.long, device=obs.device)
            a = actor(self.wm.encode(obs[k * n : (k + 1) * n], task), deterministic=deterministic)
            out.append(a * self.action_mask[k])
        return torch.cat(out)
