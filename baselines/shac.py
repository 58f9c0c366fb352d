"""Short-Horizon Actor-Critic (Xu et al., 2022), as in DiffRL's ``algorithms/shac.py``.

Each epoch rolls the stochastic actor out for ``horizon`` control steps through the differentiable
env from the worlds' current states (episodes continue across windows) and takes one actor step on
the analytic gradient of

    loss = -(1 / (h N)) Σ_segments [ Σ_k γ^k r_k + γ^(k_end + 1) V̄(s_end) ],

where a segment ends at an episode end inside the window or at the window end: an early
termination bootstraps with 0, a time limit with the target critic's value of the final
observation, the window end with the value of the current one. Observations are normalised with
running statistics frozen for the window (a fixed affine map that gradients pass through). The
critic then regresses TD(λ) targets over the window (16 passes × 4 minibatches) and the target
critic tracks it with ``θ̄ ← α θ̄ + (1 − α) θ``. Both learning rates decay linearly to 1e-5.

Shapes in comments: ``h`` window steps, ``N`` worlds, ``O`` obs size, ``A`` action size.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig
from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import NonFiniteError, UsageError
from pwm_bench.nn import NormalizedPolicy, RunningMeanStd, ln_mlp
from pwm_bench.run import Run

log = logging.getLogger(__name__)

# DiffRL examples/cfg/shac/*.yaml: (num_actors, actor MLP, critic MLP, actor lr, critic lr, target α)
_PAPER_TABLE: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], float, float, float]] = {
    "hopper": (256, (128, 64, 32), (64, 64), 2e-3, 2e-4, 0.2),
    "ant": (64, (128, 64, 32), (64, 64), 2e-3, 2e-3, 0.2),
    "humanoid": (64, (256, 128), (128, 128), 2e-3, 5e-4, 0.995),
    "snu_humanoid": (64, (512, 256), (256, 256), 2e-3, 5e-4, 0.995),
    "muscle_humanoid": (64, (512, 256), (256, 256), 2e-3, 5e-4, 0.995),  # SNU humanoid's
    "double_pendulum": (64, (64, 64), (64, 64), 1e-2, 1e-3, 0.2),
}
_PAPER_EPOCHS = 2000
CPU_BUDGET: dict[str, int] = {
    "hopper": 1_024_000,
    "ant": 1_024_000,
    "humanoid": 131_072,
    "snu_humanoid": 131_072,
    "muscle_humanoid": 131_072,
}
"""Env-step budgets of the ``cpu`` presets, set when the differentiable humanoid ran at ~90 steps/s on
2 cores (64 worlds); the humanoid-class envs have since become faster (docs/performance.md)."""
MIN_LR = 1e-5
"""Both learning rates decay linearly from their initial value to this over the run."""
GRAD_LIMIT = 1e6
"""An actor gradient norm above this (or NaN) stops the run: the simulator gradient exploded."""


@dataclasses.dataclass
class SHACConfig(TrainConfig):
    """SHAC hyperparameters (DiffRL defaults; budgets in env steps over all worlds)."""

    total_steps: int = 2000 * 64 * 32
    """Environment-step budget (epochs = total_steps / (num_envs · horizon))."""
    num_envs: int = 64
    """Parallel differentiable worlds."""
    eval_every: int = 64 * 32 * 25
    """Evaluate the deterministic policy (and checkpoint) every this many env steps."""
    horizon: int = 32
    """Control steps per window (the gradient is truncated at window boundaries)."""
    actor_hidden: tuple[int, ...] = (128, 64, 32)
    """Actor MLP hidden sizes (Linear → ELU → LayerNorm each)."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """Critic MLP hidden sizes (Linear → ELU → LayerNorm each)."""
    actor_lr: float = 2e-3
    """Initial actor learning rate (Adam); decays linearly to 1e-5."""
    critic_lr: float = 2e-3
    """Initial critic learning rate (Adam); decays linearly to 1e-5."""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """'linear' (to 1e-5 over the budget) or 'constant'."""
    betas: tuple[float, ...] = (0.7, 0.95)
    """Adam betas of both optimisers."""
    gamma: float = 0.99
    """Discount factor."""
    lam: float = 0.95
    """λ of the critic's TD(λ) targets."""
    critic_iterations: int = 16
    """Passes over the window's (obs, target) pairs per epoch."""
    num_batch: int = 4
    """Minibatches per critic pass (minibatch = h · N / num_batch)."""
    target_alpha: float = 0.2
    """Target critic update θ̄ ← α θ̄ + (1 − α) θ (DiffRL's inverted convention: small α is fast)."""
    actor_grad_norm: float = 1.0
    """Clip of the actor's gradient norm."""
    critic_grad_norm: float = 1.0
    """Clip of the critic's gradient norm."""
    normalize_obs: bool = True
    """Normalise observations with running statistics (frozen within each window)."""
    init_log_std: float = -1.0
    """Initial (state-independent) log standard deviation of the actor."""

    def preset_overrides(self, preset: str, env: str) -> dict[str, Any]:
        if preset == "smoke":
            return {
                "total_steps": 4 * 8 * 16,
                "num_envs": 4,
                "horizon": 8,
                "critic_iterations": 2,
                "num_batch": 2,
                "eval_every": 4 * 8 * 8,
                "eval_episodes": 2,
            }
        row = _PAPER_TABLE.get(env)
        common: dict[str, Any] = {}
        if row is not None:
            _, actor, critic, alr, clr, alpha = row
            common = {"actor_hidden": actor, "critic_hidden": critic, "actor_lr": alr, "critic_lr": clr}
            common["target_alpha"] = alpha
        if preset == "cpu":
            # DiffRL's per-env config (worlds, networks, learning rates) with a budget that fits 2 CPU
            # cores: about 16 min (hopper, 256 worlds) to 30 min (humanoid, 64 worlds, 131k steps)
            n = row[0] if row is not None else 64
            return {
                **common,
                "num_envs": n,
                "total_steps": CPU_BUDGET.get(env, 1_024_000),
                "eval_every": 16_384 if "humanoid" in env else 51_200,
                "eval_episodes": 8,
            }
        if preset == "paper":
            n = row[0] if row is not None else 64
            return {**common, "num_envs": n, "total_steps": n * 32 * _PAPER_EPOCHS, "eval_every": n * 32 * 25}
        return {}

    def validate(self) -> None:
        super().validate()
        for name in ("horizon", "critic_iterations", "num_batch", "actor_lr", "critic_lr"):
            if getattr(self, name) <= 0:
                raise UsageError(f"config '{name}' must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.target_alpha < 1.0:
            raise UsageError(f"config 'target_alpha' must be in [0, 1), got {self.target_alpha}")
        if len(self.betas) != 2:
            raise UsageError(f"config 'betas' must have two values, got {list(self.betas)}")
        if self.num_batch > self.num_envs * self.horizon:
            raise UsageError(f"num_batch {self.num_batch} exceeds the window's num_envs*horizon pairs")


class StochasticActor(nn.Module):
    """Gaussian ``N(μ(o), exp(log_std))`` with a state-independent log std; the env gets ``tanh(a)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], init_log_std: float) -> None:
        super().__init__()
        self.mu = ln_mlp(obs_dim, hidden, act_dim, "elu")
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Pre-tanh actions ``(N, A)`` for normalised observations ``(N, O)`` (reparameterised)."""
        mu = self.mu(obs)
        if deterministic:
            return mu
        return mu + self.log_std.exp() * torch.randn_like(mu)


class Critic(nn.Module):
    """State value ``V(o)`` of normalised observations ``(..., O) -> (...)``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = ln_mlp(obs_dim, hidden, 1, "elu", orthogonal=True)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class SHACPolicy(NormalizedPolicy):
    """The trained policy: observation normalisation, actor mean, tanh."""

    def __init__(self, actor: StochasticActor, obs_rms: RunningMeanStd | None) -> None:
        super().__init__(obs_rms)
        self.actor = actor

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A)`` in [-1, 1] for raw observations ``(N, O)``."""
        return torch.tanh(self.actor(self.normalize(obs), deterministic=deterministic))


def td_lambda_targets(
    rewards: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor, gamma: float | torch.Tensor, lam: float
) -> torch.Tensor:
    """Truncated TD(λ) returns over a window, computed backwards.

    ``G_i = r_i + γ V_{i+1}`` where ``dones[i]`` (the segment ends after step ``i``), else
    ``G_i = r_i + γ [(1 − λ) V_{i+1} + λ G_{i+1}]``. The last step must be marked done (the window
    is cut there); ``next_values[i]`` is the bootstrap value of the state after step ``i`` (0 after
    an early termination).

    Args:
        rewards: ``(h, N)``.
        next_values: ``(h, N)``.
        dones: ``(h, N)`` booleans or 0/1 floats.
        gamma: discount, or per-step discounts ``(h, N)`` (e.g. γ times a continuation probability).
        lam: λ.

    Returns:
        Targets ``(h, N)``.
    """
    h = rewards.shape[0]
    done = dones.to(rewards.dtype)
    out = torch.empty_like(rewards)
    g = next_values[h - 1]
    for i in range(h - 1, -1, -1):
        bootstrap = done[i] * next_values[i] + (1.0 - done[i]) * ((1.0 - lam) * next_values[i] + lam * g)
        g = rewards[i] + (gamma[i] if isinstance(gamma, torch.Tensor) else gamma) * bootstrap
        out[i] = g
    return out


@dataclasses.dataclass
class Window:
    """One SHAC window: the actor loss (on the autograd graph) and the critic's training data.

    Attributes:
        loss: scalar actor loss, averaged over ``h · N``.
        obs: normalised observations the actor saw ``(h, N, O)`` (detached).
        rewards: ``(h, N)`` (detached).
        next_values: bootstrap value after each step ``(h, N)``: 0 after a termination, V̄ of the
            final observation after a time limit (detached).
        dones: ``(h, N)`` floats, 1 where a segment ends (an episode end, and every world at ``h - 1``).
        last_obs: raw observations after the window ``(N, O)`` (still on the graph).
    """

    loss: torch.Tensor
    obs: torch.Tensor
    rewards: torch.Tensor
    next_values: torch.Tensor
    dones: torch.Tensor
    last_obs: torch.Tensor


def actor_window(
    env: VecEnv,
    actor: StochasticActor,
    value: nn.Module,
    obs: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None,
    horizon: int,
    gamma: float,
    on_step: Callable[[torch.Tensor, dict[str, Any]], None] | None = None,
) -> Window:
    """Roll ``actor`` through the differentiable ``env`` for ``horizon`` steps; SHAC's actor loss.

    Per segment (from the window start or an episode start to an episode end or the window end)
    the loss is ``-[Σ_k γ^k r_k + γ^(k+1) V(s_end)]``, with ``V = 0`` after a termination and
    ``V(final obs)`` after a time limit; the sum over segments is divided by ``h · N``.

    Args:
        env: differentiable env whose current state starts the window (call ``env.detach()`` first
            to cut the graph at the window boundary).
        actor: stochastic actor; the env receives ``tanh`` of its sample.
        value: bootstrap value network on normalised observations (SHAC's target critic).
        obs: current raw observations ``(N, O)``.
        normalize: fixed observation normalisation (gradients pass through it), or None.
        horizon: control steps ``h``.
        gamma: discount.
        on_step: called after every env step with the raw observation and the step's info.
    """
    n = env.num_envs
    device = obs.device
    norm = normalize or (lambda x: x)
    obs_buf = torch.zeros(horizon, n, env.obs_dim, device=device)
    rew_buf = torch.zeros(horizon, n, device=device)
    done_buf = torch.zeros(horizon, n, device=device)
    next_v_buf = torch.zeros(horizon, n, device=device)
    obs_n = norm(obs)
    rew_acc = torch.zeros(n, device=device)
    discount = torch.ones(n, device=device)
    loss = torch.zeros((), device=device)
    for i in range(horizon):
        obs_buf[i] = obs_n.detach()
        obs, reward, terminated, truncated, info = env.step(torch.tanh(actor(obs_n)))
        if on_step is not None:
            on_step(obs.detach(), info)
        obs_n = norm(obs)
        done = terminated | truncated
        next_v = value(obs_n)
        if bool(done.any()):
            # episode ends: 0 after a termination, V(final obs) after a time limit
            final = torch.nan_to_num(info["final_obs"], nan=0.0, posinf=0.0, neginf=0.0)
            next_v = torch.where(truncated, value(norm(final)), next_v)
            next_v = torch.where(terminated, torch.zeros_like(next_v), next_v)
        if not bool(torch.isfinite(next_v).all()) or bool((next_v.abs() > GRAD_LIMIT).any()):
            raise NonFiniteError(
                f"SHAC: bootstrap value exploded (|V| > {GRAD_LIMIT:g} or non-finite); lower critic_lr or actor_lr"
            )
        rew_acc = rew_acc + discount * reward
        seg_end = done if i < horizon - 1 else torch.ones_like(done)
        seg_return = rew_acc + gamma * discount * next_v
        loss = loss - torch.where(seg_end, seg_return, torch.zeros_like(seg_return)).sum()
        discount = torch.where(done, torch.ones_like(discount), discount * gamma)
        rew_acc = torch.where(done, torch.zeros_like(rew_acc), rew_acc)
        rew_buf[i] = reward.detach()
        done_buf[i] = seg_end.float()
        next_v_buf[i] = next_v.detach()
    return Window(loss / (horizon * n), obs_buf, rew_buf, next_v_buf, done_buf, obs)


def train(env: VecEnv, cfg: SHACConfig, run: Run) -> SHACPolicy:
    """Train SHAC on the differentiable ``env`` within ``cfg.total_steps`` env steps."""
    if not env.differentiable:
        raise UsageError(f"SHAC needs a differentiable env; '{env.name}' was built without gradients")
    device = run.device
    n, h = env.num_envs, cfg.horizon
    actor = StochasticActor(env.obs_dim, env.act_dim, cfg.actor_hidden, cfg.init_log_std).to(device)
    critic = Critic(env.obs_dim, cfg.critic_hidden).to(device)
    target_critic = copy.deepcopy(critic).requires_grad_(False)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, betas=betas)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, betas=betas)
    # DiffRL normalises with (x - mean) / sqrt(var + 1e-5) and no clipping
    obs_rms = RunningMeanStd((env.obs_dim,), clip=math.inf, eps=1e-5).to(device) if cfg.normalize_obs else None
    policy = SHACPolicy(actor, obs_rms)
    max_epochs = max(1, math.ceil(cfg.total_steps / (n * h)))
    epoch = 0

    state = run.restore()
    if state is not None:
        actor.load_state_dict(state["actor"])
        critic.load_state_dict(state["critic"])
        target_critic.load_state_dict(state["target_critic"])
        actor_opt.load_state_dict(state["actor_opt"])
        critic_opt.load_state_dict(state["critic_opt"])
        if obs_rms is not None:
            obs_rms.load_state_dict(state["obs_rms"])
        epoch = int(state["epoch"])

    def state_fn() -> dict[str, Any]:
        return {
            "actor": actor.state_dict(),
            "critic": critic.state_dict(),
            "target_critic": target_critic.state_dict(),
            "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict(),
            "obs_rms": obs_rms.state_dict() if obs_rms is not None else None,
            "epoch": epoch,
        }

    obs, _ = env.reset(seed=run.env_seed)
    while not run.done:
        if cfg.lr_schedule == "linear":
            frac = min(epoch / max_epochs, 1.0)
            a_lr = cfg.actor_lr + (MIN_LR - cfg.actor_lr) * frac
            c_lr = cfg.critic_lr + (MIN_LR - cfg.critic_lr) * frac
        else:
            a_lr, c_lr = cfg.actor_lr, cfg.critic_lr
        for group in actor_opt.param_groups:
            group["lr"] = a_lr
        for group in critic_opt.param_groups:
            group["lr"] = c_lr

        # ---- actor: one window through the simulator ----------------------------------------------
        env.detach()
        frozen = copy.deepcopy(obs_rms) if obs_rms is not None else None
        if obs_rms is not None:
            obs_rms.update(obs)

        def on_step(raw_obs: torch.Tensor, info: dict[str, Any]) -> None:
            run.add_env_steps(n)
            run.record_episodes(info)
            if obs_rms is not None:
                obs_rms.update(raw_obs)

        window = actor_window(
            env,
            actor,
            target_critic,
            obs.detach(),
            frozen.normalize if frozen is not None else None,
            h,
            cfg.gamma,
            on_step,
        )
        actor_loss, obs = window.loss, window.last_obs
        if not actor_loss.requires_grad:
            raise UsageError(f"SHAC: env '{env.name}' returned rewards and observations without gradients")
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        # the norm before clipping; the step is skipped (the run stops) when it exploded
        grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), cfg.actor_grad_norm)
        if not bool(torch.isfinite(grad_norm)) or float(grad_norm) > GRAD_LIMIT:
            raise NonFiniteError(
                f"SHAC: actor gradient norm {float(grad_norm):.3g} at env step {run.env_steps} "
                f"(limit {GRAD_LIMIT:g}): the simulator gradient exploded; lower actor_lr, shorten the horizon "
                "or soften the contacts (env.contact_ke)"
            )
        actor_opt.step()
        env.detach()
        obs = obs.detach()

        # ---- critic: TD(λ) regression over the window ---------------------------------------------
        with torch.no_grad():
            targets = td_lambda_targets(window.rewards, window.next_values, window.dones, cfg.gamma, cfg.lam)
        targets = targets.reshape(-1)
        flat_obs = window.obs.reshape(-1, env.obs_dim)
        batch = flat_obs.shape[0] // cfg.num_batch
        critic_loss = torch.zeros(())
        for _ in range(cfg.critic_iterations):
            total = torch.zeros((), device=device)
            for b in range(cfg.num_batch):
                sl = slice(b * batch, (b + 1) * batch)
                loss = (critic(flat_obs[sl]) - targets[sl]).square().mean()
                critic_opt.zero_grad(set_to_none=True)
                loss.backward()
                for p in critic.parameters():
                    if p.grad is not None:
                        torch.nan_to_num_(p.grad, nan=0.0)
                nn.utils.clip_grad_norm_(critic.parameters(), cfg.critic_grad_norm)
                critic_opt.step()
                total = total + loss.detach()
            critic_loss = total / cfg.num_batch
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), target_critic.parameters(), strict=True):
                tp.mul_(cfg.target_alpha).add_(p, alpha=1.0 - cfg.target_alpha)
        epoch += 1

        run.log(
            {
                "loss/actor": actor_loss.detach(),
                "loss/critic": critic_loss,
                "grad_norm/actor": grad_norm,
                "shac/value": window.next_values.mean(),
                "shac/actor_lr": a_lr,
                "shac/action_std": actor.log_std.detach().exp().mean(),
            }
        )
        run.end_iteration(policy, state_fn)
    return policy


ALGORITHM = Algorithm(
    name="shac",
    config=SHACConfig,
    train=train,
    description="SHAC: short-horizon actor-critic through the differentiable simulator (Xu et al. 2022)",
    requires_gradients=True,
)
