"""In-memory replay of per-world transition streams for model learning (TD-MPC2, PWM online).

Vectorised envs produce one transition per world per step and reset finished worlds in place, so
episodes of different worlds interleave. :class:`WindowReplay` keeps each world's stream in time
order and samples windows of ``H`` consecutive transitions that never cross an episode end, which is
what multi-step latent-consistency training needs. Shapes: ``N`` worlds, ``O`` obs size, ``A``
action size, ``B`` batch, ``H`` window length.
"""

from __future__ import annotations

from typing import Any

import torch


class WindowReplay:
    """Per-world streams of transitions; samples windows of ``H`` transitions inside one episode.

    Row ``t`` of world ``w`` holds ``obs_t``, the action taken, the reward, the observation that
    followed (the final observation when the episode ended there) and the termination/end flags.
    A window starting at row ``t`` is valid when rows ``t..t+H-2`` did not end an episode.
    """

    def __init__(self, capacity: int, num_worlds: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
        self.rows = max(1, capacity // num_worlds)
        self.n = num_worlds
        shape = (self.rows, num_worlds)
        self.obs = torch.zeros(*shape, obs_dim, device=device)
        self.next_obs = torch.zeros(*shape, obs_dim, device=device)
        self.action = torch.zeros(*shape, act_dim, device=device)
        self.reward = torch.zeros(shape, device=device)
        self.terminated = torch.zeros(shape, device=device)
        self.ended = torch.zeros(shape, dtype=torch.bool, device=device)
        self.pos = 0
        self.size = 0
        self._valid_cache: tuple[int, torch.Tensor] | None = None  # (horizon, mask) since the last add

    def __len__(self) -> int:
        return self.size * self.n

    def add(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        ended: torch.Tensor,
    ) -> None:
        """Append one vectorised step: ``obs (N, O)``, ``action (N, A)``, ``reward (N,)``, ...

        ``next_obs`` is the observation the transition led to (the final one if the episode ended);
        ``ended`` marks terminated or truncated worlds.
        """
        i = self.pos
        self.obs[i], self.action[i], self.reward[i], self.next_obs[i] = obs, action, reward, next_obs
        self.terminated[i], self.ended[i] = terminated.float(), ended
        self.pos = (self.pos + 1) % self.rows
        self.size = min(self.size + 1, self.rows)
        self._valid_cache = None

    def can_sample(self, horizon: int) -> bool:
        """Whether at least one valid window of ``horizon`` transitions exists."""
        if self.size < horizon:
            return False
        return bool(self._valid(horizon).any())

    def _valid(self, horizon: int) -> torch.Tensor:
        """``(size - H + 1, N)`` mask of valid window starts, in chronological order of rows.

        Computed once per added step (it scans the whole buffer) and reused by the updates in between.
        """
        if self._valid_cache is not None and self._valid_cache[0] == horizon:
            return self._valid_cache[1]
        valid = self._compute_valid(horizon)
        self._valid_cache = (horizon, valid)
        return valid

    def _compute_valid(self, horizon: int) -> torch.Tensor:
        first = self.pos if self.size == self.rows else 0
        order = (torch.arange(self.size, device=self.obs.device) + first) % self.rows
        ended = self.ended[order].float()  # (size, N), oldest first
        starts = self.size - horizon + 1
        if horizon == 1:
            return torch.ones(starts, self.n, dtype=torch.bool, device=ended.device)
        cum = torch.cat([torch.zeros(1, self.n, device=ended.device), ended.cumsum(0)])
        # ends among rows t..t+H-2
        return (cum[horizon - 1 : horizon - 1 + starts] - cum[:starts]) == 0

    def sample(self, batch: int, horizon: int) -> tuple[torch.Tensor, ...]:
        """``obs (H+1, B, O)``, ``action (H, B, A)``, ``reward (H, B)``, ``terminated (H, B)``."""
        valid = self._valid(horizon).flatten()
        idx = torch.multinomial(valid.float(), batch, replacement=True)
        start, world = idx // self.n, idx % self.n
        first = self.pos if self.size == self.rows else 0
        rows = (first + start.unsqueeze(0) + torch.arange(horizon, device=idx.device).unsqueeze(1)) % self.rows
        w = world.unsqueeze(0).expand_as(rows)
        obs = torch.cat([self.obs[rows[:1], w[:1]], self.next_obs[rows, w]])
        return obs, self.action[rows, w], self.reward[rows, w], self.terminated[rows, w]

    def sample_partial(self, batch: int, horizon: int) -> tuple[torch.Tensor, ...]:
        """Like :meth:`sample`, plus ``mask (H, B)``; every row with ``horizon - 1`` rows after it starts
        a window, and a window that reaches its episode's end stops there (the mask is 0 after the
        end, whose rows belong to the next episode). See :meth:`EpisodeDataset.sample`'s ``partial``."""
        starts = self.size - horizon + 1
        if starts < 1:
            raise ValueError(f"the replay holds {self.size} rows per world, fewer than the window ({horizon})")
        idx = torch.randint(0, starts * self.n, (batch,), device=self.obs.device)
        start, world = idx // self.n, idx % self.n
        first = self.pos if self.size == self.rows else 0
        rows = (first + start.unsqueeze(0) + torch.arange(horizon, device=idx.device).unsqueeze(1)) % self.rows
        w = world.unsqueeze(0).expand_as(rows)
        ended = self.ended[rows, w].float()
        mask = 1.0 - (ended.cumsum(0) - ended).clamp(max=1.0)  # 1 up to and including the first end
        obs = torch.cat([self.obs[rows[:1], w[:1]], self.next_obs[rows, w]])
        return obs, self.action[rows, w], self.reward[rows, w], self.terminated[rows, w], mask

    def latest(self, horizon: int) -> tuple[torch.Tensor, ...] | None:
        """The newest window of every world whose last ``horizon`` transitions lie inside one episode.

        Same layout as :meth:`sample` with ``B`` the number of such worlds (None if there is none),
        e.g. to measure a model on the data it has not been trained on yet.
        """
        if self.size < horizon:
            return None
        ok = self._valid(horizon)[-1]  # windows that end at the newest row
        if not bool(ok.any()):
            return None
        world = ok.nonzero().squeeze(-1)
        first = self.pos if self.size == self.rows else 0
        steps = torch.arange(horizon, device=world.device).unsqueeze(1)
        rows = ((first + self.size - horizon + steps) % self.rows).expand(-1, world.numel())
        w = world.unsqueeze(0).expand_as(rows)
        obs = torch.cat([self.obs[rows[:1], w[:1]], self.next_obs[rows, w]])
        return obs, self.action[rows, w], self.reward[rows, w], self.terminated[rows, w]

    def state_dict(self) -> dict[str, Any]:
        k = self.size
        return {
            **{name: getattr(self, name)[:k].clone() for name in self._FIELDS},
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = int(state["size"])
        for name in self._FIELDS:
            getattr(self, name)[:k] = state[name].to(self.obs.device)
        self.pos, self.size = int(state["pos"]), k
        self._valid_cache = None

    _FIELDS = ("obs", "next_obs", "action", "reward", "terminated", "ended")


__all__ = ["WindowReplay"]
