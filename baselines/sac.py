"""Soft Actor-Critic (Haarnoja et al., 2018) with automatic entropy tuning, on vectorised envs.

A tanh-squashed Gaussian actor, twin Q networks with Polyak-averaged targets and a learned
temperature α (target entropy ``-act_dim``). All worlds step together; transitions go to a replay
buffer that lives on the env's device, and ``updates_per_env_step`` gradient updates are taken per
env step counted over all worlds (rl_games, which ran the PWM/SHAC baselines, takes one update per
vectorised step: ``1 / num_envs``). Time-limit truncations bootstrap from the final observation;
terminations do not. Observations are stored raw and normalised at sampling time with running
statistics (as rl_games' ``normalize_input``).

Shapes in comments: ``B`` batch, ``N`` worlds, ``O`` obs size, ``A`` action size.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig
from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError
from pwm_bench.nn import NormalizedPolicy, RunningMeanStd, mlp
from pwm_bench.run import Run

# DiffRL's rl_games SAC configs (examples/cfg/sac/*.yaml): (actors, batch, actor/critic lr, α lr, MLP,
# max epochs, seed epochs); an epoch is 128 vectorised steps with one update each, and the first
# seed epochs act uniformly at random without updates
_PAPER_TABLE: dict[str, tuple[int, int, float, float, tuple[int, ...], int, int]] = {
    "hopper": (64, 2048, 5e-4, 5e-3, (256, 128, 64), 5000, 5),
    "ant": (128, 4096, 5e-4, 5e-3, (256, 128, 64), 5000, 5),
    "humanoid": (64, 2048, 3e-4, 2e-4, (512, 256), 5000, 2),
    "snu_humanoid": (256, 4096, 3e-4, 2e-4, (512, 512, 512, 256), 10000, 2),
    "muscle_humanoid": (256, 4096, 3e-4, 2e-4, (512, 512, 512, 256), 10000, 2),
}
_STEPS_PER_EPOCH = 128
LOG_STD_RANGE = (-5.0, 2.0)
"""Clamp of the actor's log standard deviation."""


@dataclasses.dataclass
class SACConfig(TrainConfig):
    """SAC hyperparameters (budgets in env steps over all worlds)."""

    total_steps: int = 1_000_000
    """Environment-step budget of the run (all worlds together)."""
    num_envs: int = 8
    """Parallel worlds used for collection."""
    eval_every: int = 20_000
    """Evaluate the deterministic policy (and checkpoint) every this many env steps."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (oldest are overwritten)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    learning_starts: int = 5_000
    """Env steps of uniformly random actions before the first update."""
    updates_per_env_step: float = 1.0
    """Gradient updates per env step over all worlds (1/num_envs = one per vectorised step)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin Q networks."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log α."""
    init_alpha: float = 1.0
    """Initial entropy temperature α."""
    target_entropy_scale: float = 1.0
    """Target entropy is ``-target_entropy_scale · act_dim``."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target Q networks."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the actor and of each Q network."""
    activation: Literal["relu", "elu", "tanh", "mish"] = "relu"
    """Hidden activation (relu, elu, tanh, mish)."""
    normalize_obs: bool = False
    """Normalise observations with running statistics (stored raw, normalised when sampled)."""
    max_grad_norm: float = 0.0
    """Gradient-norm clip of every network (0 disables it)."""

    def preset_overrides(self, preset: str, env: str) -> dict[str, Any]:
        if preset == "smoke":
            return {
                "total_steps": 2048,
                "num_envs": 4,
                "batch_size": 64,
                "learning_starts": 256,
                "updates_per_env_step": 0.25,
                "hidden": (64, 64),
                "eval_every": 1024,
                "eval_episodes": 2,
            }
        row = _PAPER_TABLE.get(env)
        if preset == "cpu":
            if row is None:  # gym control tasks and the toy envs: standard single-machine SAC
                return {
                    "total_steps": 30_000,
                    "num_envs": 4,
                    "batch_size": 256,
                    "learning_starts": 2_000,
                    "updates_per_env_step": 1.0,
                    "hidden": (256, 256),
                    "actor_lr": 1e-3,
                    "critic_lr": 1e-3,
                    "alpha_lr": 1e-3,
                    "eval_every": 2_000,
                    "eval_episodes": 10,
                }
            # 16 worlds, one update per 16 env steps (4x the published update-to-data ratio):
            # at the published ratio (one update per vectorised step of 64 worlds) SAC barely
            # learns within a CPU budget (hopper: eval return ~170 after 460k env steps)
            _, _, lr, alpha_lr, hidden, _, _ = row
            return {
                "total_steps": 1_000_000,
                "num_envs": 16,
                "batch_size": 512,
                "learning_starts": 25_000,
                "updates_per_env_step": 1 / 16,
                "hidden": hidden,
                "activation": "relu",
                "actor_lr": lr,
                "critic_lr": lr,
                "alpha_lr": alpha_lr,
                "normalize_obs": True,
                "eval_every": 50_000,
                "eval_episodes": 8,
            }
        if preset == "paper" and row is not None:
            actors, batch, lr, alpha_lr, hidden, epochs, seed_epochs = row
            return {
                "num_envs": actors,
                "batch_size": batch,
                "total_steps": actors * _STEPS_PER_EPOCH * epochs,
                "learning_starts": actors * _STEPS_PER_EPOCH * seed_epochs,
                "updates_per_env_step": 1.0 / actors,
                "hidden": hidden,
                "activation": "relu",
                "actor_lr": lr,
                "critic_lr": lr,
                "alpha_lr": alpha_lr,
                "init_alpha": 1.0,
                "tau": 0.005,
                "buffer_size": 1_000_000,
                "normalize_obs": True,
                "eval_every": actors * _STEPS_PER_EPOCH * 25,
            }
        return {}

    def validate(self) -> None:
        super().validate()
        for name in ("buffer_size", "batch_size", "actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            if getattr(self, name) <= 0:
                raise UsageError(f"config '{name}' must be positive, got {getattr(self, name)}")
        if self.updates_per_env_step < 0 or self.learning_starts < 0:
            raise UsageError("config 'updates_per_env_step' and 'learning_starts' must be non-negative")
        if not 0.0 < self.tau <= 1.0:
            raise UsageError(f"config 'tau' must be in (0, 1], got {self.tau}")


class TanhGaussianActor(nn.Module):
    """``a = tanh(μ(o) + σ(o) ε)`` with state-dependent ``log σ`` clamped to :data:`LOG_STD_RANGE`."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.net = mlp(obs_dim, cfg.hidden, 2 * act_dim, cfg.activation, out_gain=0.01)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``(B, A)`` in (-1, 1) and their log-probabilities ``(B,)`` (tanh-corrected)."""
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mu), torch.zeros(obs.shape[:-1], device=obs.device)
        log_std = log_std.clamp(*LOG_STD_RANGE)
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)
        logp = (-0.5 * ((u - mu) / std).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        logp = logp - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), logp


class TwinQ(nn.Module):
    """Two independent ``Q(o, a)`` networks; returns both ``(B,)`` values."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, cfg.hidden, 1, cfg.activation)
        self.q2 = mlp(obs_dim + act_dim, cfg.hidden, 1, cfg.activation)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ReplayBuffer:
    """Circular transition store on one device (raw observations, float32)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.act = torch.zeros(capacity, act_dim, device=device)
        self.rew = torch.zeros(capacity, device=device)
        self.term = torch.zeros(capacity, device=device)
        self.pos = 0
        self.size = 0

    def add(
        self, obs: torch.Tensor, act: torch.Tensor, rew: torch.Tensor, next_obs: torch.Tensor, term: torch.Tensor
    ) -> None:
        """Append a batch of ``N`` transitions (``obs (N, O)``, ``act (N, A)``, ``rew (N,)``...)."""
        n = obs.shape[0]
        idx = (torch.arange(n, device=obs.device) + self.pos) % self.capacity
        self.obs[idx], self.act[idx], self.rew[idx] = obs, act, rew
        self.next_obs[idx], self.term[idx] = next_obs, term.float()
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch: int, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch,), device=self.obs.device, generator=gen)
        return {
            "obs": self.obs[idx],
            "act": self.act[idx],
            "rew": self.rew[idx],
            "next_obs": self.next_obs[idx],
            "term": self.term[idx],
        }

    def state_dict(self) -> dict[str, Any]:
        k = self.size
        return {
            "obs": self.obs[:k].clone(),
            "next_obs": self.next_obs[:k].clone(),
            "act": self.act[:k].clone(),
            "rew": self.rew[:k].clone(),
            "term": self.term[:k].clone(),
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = int(state["size"])
        for name in ("obs", "next_obs", "act", "rew", "term"):
            getattr(self, name)[:k] = state[name].to(self.obs.device)
        self.pos, self.size = int(state["pos"]), k


class SACPolicy(NormalizedPolicy):
    """The trained policy: observation normalisation + tanh-Gaussian actor."""

    def __init__(self, actor: TanhGaussianActor, obs_rms: RunningMeanStd | None) -> None:
        super().__init__(obs_rms)
        self.actor = actor

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A)`` in [-1, 1] for raw observations ``(N, O)``."""
        return self.actor(self.normalize(obs), deterministic=deterministic)[0]


def train(env: VecEnv, cfg: SACConfig, run: Run) -> SACPolicy:
    """Train SAC on ``env`` within ``cfg.total_steps`` env steps, reporting through ``run``."""
    device = run.device
    n, obs_dim, act_dim = env.num_envs, env.obs_dim, env.act_dim
    actor = TanhGaussianActor(obs_dim, act_dim, cfg).to(device)
    q = TwinQ(obs_dim, act_dim, cfg).to(device)
    q_target = copy.deepcopy(q).requires_grad_(False)
    log_alpha = torch.tensor(math.log(cfg.init_alpha), device=device, requires_grad=True)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr)
    q_opt = torch.optim.Adam(q.parameters(), lr=cfg.critic_lr)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.alpha_lr)
    target_entropy = -cfg.target_entropy_scale * act_dim
    obs_rms = RunningMeanStd((obs_dim,), clip=10.0).to(device) if cfg.normalize_obs else None
    buffer = ReplayBuffer(min(cfg.buffer_size, cfg.total_steps), obs_dim, act_dim, device)
    policy = SACPolicy(actor, obs_rms)
    update_credit = 0.0
    updates = 0

    state = run.restore()
    if state is not None:
        actor.load_state_dict(state["actor"])
        q.load_state_dict(state["q"])
        q_target.load_state_dict(state["q_target"])
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        actor_opt.load_state_dict(state["actor_opt"])
        q_opt.load_state_dict(state["q_opt"])
        alpha_opt.load_state_dict(state["alpha_opt"])
        if obs_rms is not None:
            obs_rms.load_state_dict(state["obs_rms"])
        buffer.load_state_dict(state["buffer"])
        update_credit, updates = float(state["update_credit"]), int(state["updates"])

    def state_fn() -> dict[str, Any]:
        return {
            "actor": actor.state_dict(),
            "q": q.state_dict(),
            "q_target": q_target.state_dict(),
            "log_alpha": log_alpha.detach().clone(),
            "actor_opt": actor_opt.state_dict(),
            "q_opt": q_opt.state_dict(),
            "alpha_opt": alpha_opt.state_dict(),
            "obs_rms": obs_rms.state_dict() if obs_rms is not None else None,
            "buffer": buffer.state_dict(),
            "update_credit": update_credit,
            "updates": updates,
        }

    def update() -> dict[str, torch.Tensor]:
        b = buffer.sample(cfg.batch_size)
        obs_b, next_b = policy.normalize(b["obs"]), policy.normalize(b["next_obs"])
        alpha = log_alpha.detach().exp()
        with torch.no_grad():
            next_a, next_logp = actor(next_b)
            tq1, tq2 = q_target(next_b, next_a)
            target = b["rew"] + cfg.gamma * (1.0 - b["term"]) * (torch.min(tq1, tq2) - alpha * next_logp)
        q1, q2 = q(obs_b, b["act"])
        q_loss = 0.5 * ((q1 - target).square().mean() + (q2 - target).square().mean())
        q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(q.parameters(), cfg.max_grad_norm)
        q_opt.step()

        a, logp = actor(obs_b)
        q.requires_grad_(False)
        pq1, pq2 = q(obs_b, a)
        q.requires_grad_(True)
        actor_loss = (alpha * logp - torch.min(pq1, pq2)).mean()
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(
            actor.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        )
        actor_opt.step()

        alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
        alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(q.parameters(), q_target.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        return {
            "loss/actor": actor_loss.detach(),
            "loss/critic": q_loss.detach(),
            "grad_norm/actor": grad_norm.detach(),
            "sac/alpha": alpha,
            "sac/entropy": -logp.detach().mean(),
            "sac/q": torch.min(q1, q2).detach().mean(),
        }

    # iterations of this many vectorised steps (at least one update's worth, at most ~1000 steps)
    steps_per_iter = max(1, min(math.ceil(1000 / n), math.ceil(cfg.eval_every / n)))
    obs, _ = env.reset(seed=run.env_seed)
    while not run.done:
        sums: dict[str, torch.Tensor] = {}
        n_upd = 0
        for _ in range(steps_per_iter):
            with torch.no_grad():
                if run.env_steps < cfg.learning_starts:
                    action = torch.rand(n, act_dim, device=device) * 2.0 - 1.0
                else:
                    action = actor(policy.normalize(obs))[0]
                next_obs, reward, terminated, truncated, info = env.step(action)
                real_next = torch.where((terminated | truncated).unsqueeze(-1), info["final_obs"], next_obs)
                buffer.add(obs, action, reward, real_next, terminated)
                if obs_rms is not None:
                    obs_rms.update(obs)
            run.add_env_steps(n)
            run.record_episodes(info)
            obs = next_obs
            if run.env_steps >= cfg.learning_starts and buffer.size >= cfg.batch_size:
                update_credit += cfg.updates_per_env_step * n
                while update_credit >= 1.0:
                    update_credit -= 1.0
                    stats = update()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n_upd += 1
                    updates += 1
            if run.done:
                break
        metrics: dict[str, Any] = {k: v / n_upd for k, v in sums.items()}
        metrics["sac/updates"] = updates
        run.log(metrics)
        run.end_iteration(policy, state_fn)
    return policy


ALGORITHM = Algorithm(
    name="sac",
    config=SACConfig,
    train=train,
    description="SAC: tanh-Gaussian actor, twin Q, automatic entropy tuning (Haarnoja et al. 2018)",
)
