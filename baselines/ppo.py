"""Proximal Policy Optimization for continuous actions (Schulman et al., 2017).

A Gaussian policy with a state-independent log standard deviation and a separate value network,
trained on vectorised rollouts with GAE(λ) and the clipped surrogate objective. Options follow the
rl_games setup used for the PWM/SHAC baselines: observation normalisation, value-target
normalisation, optional value clipping, advantage normalisation and an adaptive (KL-targeting)
learning rate. Time-limit truncations are bootstrapped with the value of the final observation;
terminations are not.

Tensor shapes in comments: ``T`` rollout steps, ``N`` worlds, ``O`` obs size, ``A`` action size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig
from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import NonFiniteError, UsageError
from pwm_bench.nn import ACTIVATIONS, NormalizedPolicy, RunningMeanStd, mlp
from pwm_bench.run import Run

# rl_games PPO settings of the DiffRL/PWM baselines: (actors, minibatch, mini-epochs, max epochs, MLP)
_PAPER_TABLE: dict[str, tuple[int, int, int, int, tuple[int, ...]]] = {
    "hopper": (1024, 8192, 5, 5000, (128, 64, 32)),
    "ant": (2048, 16384, 5, 5000, (128, 64, 32)),
    "humanoid": (1024, 8192, 5, 5000, (256, 128, 64)),
    "snu_humanoid": (1024, 8192, 6, 20000, (512, 512, 256)),
    "muscle_humanoid": (1024, 8192, 6, 20000, (512, 512, 256)),
}

CPU_BUDGET: dict[str, int] = {
    "hopper": 1_024_000,
    "ant": 1_024_000,
    "humanoid": 524_288,
    "snu_humanoid": 524_288,
    "muscle_humanoid": 524_288,
}
"""Env-step budgets of the ``cpu`` presets on the Warp envs (about 30 minutes or less on 2 CPU cores)."""

# settings shared by DiffRL's rl_games PPO configs (examples/cfg/ppo/*.yaml): one network with two
# heads, rewards scaled by 0.01, critic_coef 4 on the unhalved squared error (= 4 on half of it here),
# value clipping, and the bounds loss on the action means
_RL_GAMES: dict[str, Any] = {
    "shared_trunk": True,
    "reward_scale": 0.01,
    "value_coef": 4.0,
    "clip_value": True,
    "bounds_loss_coef": 1e-4,
    "entropy_coef": 0.0,
    "init_log_std": 0.0,
    "normalize_obs": True,
    "normalize_value": True,
    "normalize_advantage": True,
    "max_grad_norm": 1.0,
}


@dataclasses.dataclass
class PPOConfig(TrainConfig):
    """PPO hyperparameters (budgets in env steps over all worlds)."""

    total_steps: int = 1_000_000
    """Environment-step budget of the run (all worlds together)."""
    num_envs: int = 8
    """Number of parallel worlds used for training."""
    eval_every: int = 20_000
    """Evaluate the deterministic policy (and checkpoint) every this many env steps."""
    rollout_steps: int = 256
    """Control steps per world per iteration (the rollout horizon)."""
    epochs: int = 10
    """Passes over each rollout batch."""
    minibatch_size: int = 256
    """Transitions per gradient step."""
    lr: float = 3e-4
    """Adam learning rate (initial value for the linear and adaptive schedules)."""
    lr_schedule: Literal["constant", "linear", "adaptive"] = "linear"
    """'linear' anneals to 0 over the budget; 'adaptive' scales by 1.5 to keep the KL near target_kl."""
    target_kl: float = 0.008
    """KL target of the adaptive schedule."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip_coef: float = 0.2
    """Clip range of the probability ratio (and of the value update when clip_value)."""
    clip_value: bool = True
    """Clip the value update around the rollout's value prediction."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    normalize_obs: bool = True
    """Normalise observations with running statistics."""
    normalize_value: bool = True
    """Regress the critic on running-normalised returns."""
    normalize_advantage: bool = True
    """Standardise advantages per minibatch."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy and of the value network."""
    activation: Literal["tanh", "elu", "relu"] = "tanh"
    """Hidden activation."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy."""
    shared_trunk: bool = False
    """Actor and critic share the hidden layers (two linear heads), as rl_games' ``separate: False``."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (rl_games' reward_shaper); reported returns are raw."""
    bounds_loss_coef: float = 0.0
    """Weight of rl_games' penalty on action means outside [-1.1, 1.1]."""

    def preset_overrides(self, preset: str, env: str) -> dict[str, Any]:
        if preset == "smoke":
            return {
                "total_steps": 4096,
                "num_envs": 4,
                "rollout_steps": 128,
                "epochs": 2,
                "minibatch_size": 128,
                "eval_every": 2048,
                "eval_episodes": 2,
            }
        if preset == "cpu" and env in _PAPER_TABLE:
            # the published rl_games setup (actors, 32-step rollouts, minibatch, mini-epochs) with a
            # budget that fits 2 CPU cores: the update-to-data ratio, which decides sample
            # efficiency, stays the published one (a 64-world PPO takes 16x more updates per sample)
            actors, minibatch, mini_epochs, _, hidden = _PAPER_TABLE[env]
            return {
                "total_steps": CPU_BUDGET.get(env, 1_024_000),
                "num_envs": actors,
                "rollout_steps": 32,
                "epochs": mini_epochs,
                "minibatch_size": minibatch,
                "lr": 3e-4,
                "lr_schedule": "adaptive",
                "target_kl": 0.008,
                "hidden": hidden,
                "activation": "elu",
                **_RL_GAMES,
                "eval_every": 51_200,
                "eval_episodes": 8,
            }
        if preset == "cpu":
            return {
                "total_steps": 400_000,
                "num_envs": 16,
                "rollout_steps": 256,
                "epochs": 10,
                "minibatch_size": 512,
                "lr": 1e-3,
                "lr_schedule": "linear",
                "eval_every": 20_480,
                "eval_episodes": 10,
            }
        if preset == "paper":
            if env in _PAPER_TABLE:
                actors, minibatch, mini_epochs, max_epochs, hidden = _PAPER_TABLE[env]
                return {
                    "num_envs": actors,
                    "rollout_steps": 32,
                    "total_steps": actors * 32 * max_epochs,
                    "minibatch_size": minibatch,
                    "epochs": mini_epochs,
                    "lr": 3e-4,
                    "lr_schedule": "adaptive",
                    "target_kl": 0.008,
                    "hidden": hidden,
                    "activation": "elu",
                    **_RL_GAMES,
                    "eval_every": actors * 32 * 50,
                }
            # PPO paper (Schulman et al. 2017) MuJoCo settings, for envs outside the PWM suite
            return {
                "total_steps": 1_000_000,
                "num_envs": 1,
                "rollout_steps": 2048,
                "epochs": 10,
                "minibatch_size": 64,
                "lr": 3e-4,
                "lr_schedule": "linear",
                "hidden": (64, 64),
                "activation": "tanh",
                "eval_every": 20_480,
            }
        return {}

    def validate(self) -> None:
        super().validate()
        if self.minibatch_size > self.num_envs * self.rollout_steps:
            raise UsageError(
                f"minibatch_size {self.minibatch_size} exceeds the rollout batch "
                f"num_envs*rollout_steps = {self.num_envs * self.rollout_steps}"
            )
        for name in ("rollout_steps", "epochs", "minibatch_size", "lr", "reward_scale"):
            if getattr(self, name) <= 0:
                raise UsageError(f"config '{name}' must be positive, got {getattr(self, name)}")
        if self.shared_trunk and not self.hidden:
            raise UsageError("config 'shared_trunk' needs at least one hidden layer")


class ActorCritic(nn.Module):
    """Gaussian policy ``N(mu(o), exp(log_std))`` and value ``v(o)``: separate MLPs, or one shared
    trunk with two linear heads (``cfg.shared_trunk``)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: PPOConfig) -> None:
        super().__init__()
        self.shared = cfg.shared_trunk
        if self.shared:
            body = mlp(obs_dim, cfg.hidden[:-1], cfg.hidden[-1], cfg.activation, out_gain=2**0.5)
            self.trunk = nn.Sequential(*body, ACTIVATIONS[cfg.activation]())
            self.actor = nn.Linear(cfg.hidden[-1], act_dim)
            self.critic = nn.Linear(cfg.hidden[-1], 1)
            nn.init.orthogonal_(self.actor.weight, gain=0.01)
            nn.init.zeros_(self.actor.bias)
            nn.init.orthogonal_(self.critic.weight, gain=1.0)
            nn.init.zeros_(self.critic.bias)
        else:
            self.trunk = nn.Identity()
            self.actor = mlp(obs_dim, cfg.hidden, act_dim, cfg.activation, out_gain=0.01)
            self.critic = mlp(obs_dim, cfg.hidden, 1, cfg.activation, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), cfg.init_log_std))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """Action distribution for normalised observations ``(..., O)``."""
        return self.dist_value(obs)[0]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """Value prediction ``(...,)`` (in normalised units when value normalisation is on)."""
        return self.critic(self.trunk(obs)).squeeze(-1)

    def dist_value(self, obs: torch.Tensor) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """Both heads with one pass through the trunk."""
        h = self.trunk(obs)
        mu = self.actor(h)
        std = self.log_std.exp().expand_as(mu)
        if not (bool(torch.isfinite(mu).all()) and bool(torch.isfinite(std).all()) and bool((std > 0).all())):
            # a diverged update (a far too large lr): stop with the same message kind as SHAC's
            raise NonFiniteError(
                "PPO: the policy's mean or std is nan/inf (or the std is 0): training diverged; "
                "lower the learning rate (lr) or the gradient clip (max_grad_norm)"
            )
        dist = torch.distributions.Normal(mu, std)
        return dist, self.critic(h).squeeze(-1)


class PPOPolicy(NormalizedPolicy):
    """The trained policy: observation normalisation + Gaussian actor."""

    def __init__(self, agent: ActorCritic, obs_rms: RunningMeanStd | None) -> None:
        super().__init__(obs_rms)
        self.agent = agent

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A)`` in [-1, 1]: the mean if deterministic, else a sample."""
        dist = self.agent.dist(self.normalize(obs))
        action = dist.mean if deterministic else dist.sample()
        return action.clamp(-1.0, 1.0)


def _gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates ``(T, N)``.

    ``dones[t]`` marks that the episode ended at step ``t`` (the next observation belongs to a new
    episode), so neither the value nor the advantage of ``t + 1`` flows back into ``t``.
    """
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in range(rewards.shape[0] - 1, -1, -1):
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * live - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv


def train(env: VecEnv, cfg: PPOConfig, run: Run) -> PPOPolicy:
    """Train PPO on ``env`` within ``cfg.total_steps`` env steps, reporting through ``run``."""
    device = run.device
    n, horizon = env.num_envs, cfg.rollout_steps
    agent = ActorCritic(env.obs_dim, env.act_dim, cfg).to(device)
    optim = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    obs_rms = RunningMeanStd((env.obs_dim,), clip=5.0).to(device) if cfg.normalize_obs else None
    value_rms = RunningMeanStd(()).to(device) if cfg.normalize_value else None
    lr = cfg.lr

    state = run.restore()
    if state is not None:
        agent.load_state_dict(state["agent"])
        optim.load_state_dict(state["optim"])
        if obs_rms is not None:
            obs_rms.load_state_dict(state["obs_rms"])
        if value_rms is not None:
            value_rms.load_state_dict(state["value_rms"])
        lr = state["lr"]

    def state_fn() -> dict[str, Any]:
        return {
            "agent": agent.state_dict(),
            "optim": optim.state_dict(),
            "obs_rms": obs_rms.state_dict() if obs_rms is not None else None,
            "value_rms": value_rms.state_dict() if value_rms is not None else None,
            "lr": lr,
        }

    policy = PPOPolicy(agent, obs_rms)

    def values_of(obs_n: torch.Tensor) -> torch.Tensor:  # raw-unit values (N,)
        v = agent.value(obs_n)
        return value_rms.denormalize(v) if value_rms is not None else v

    b_obs = torch.zeros(horizon, n, env.obs_dim, device=device)
    b_raw_obs = torch.zeros(horizon, n, env.obs_dim, device=device)
    b_act = torch.zeros(horizon, n, env.act_dim, device=device)
    b_logp = torch.zeros(horizon, n, device=device)
    b_val = torch.zeros(horizon, n, device=device)
    b_rew = torch.zeros(horizon, n, device=device)
    b_done = torch.zeros(horizon, n, device=device)

    obs, _ = env.reset(seed=run.env_seed)
    while not run.done:
        # ---- rollout ----------------------------------------------------------------------------
        with torch.no_grad():
            for t in range(horizon):
                obs_n = policy.normalize(obs)
                dist, v = agent.dist_value(obs_n)
                action = dist.sample()
                b_raw_obs[t], b_obs[t], b_act[t] = obs, obs_n, action
                b_logp[t] = dist.log_prob(action).sum(-1)
                b_val[t] = value_rms.denormalize(v) if value_rms is not None else v
                obs, reward, terminated, truncated, info = env.step(action)
                run.add_env_steps(n)
                run.record_episodes(info)
                reward = reward * cfg.reward_scale
                if bool(truncated.any()):  # bootstrap time limits with the value of the final obs
                    final = info["final_obs"][truncated]
                    reward[truncated] += cfg.gamma * values_of(policy.normalize(final))
                b_rew[t] = reward
                b_done[t] = (terminated | truncated).float()
            last_value = values_of(policy.normalize(obs))
            adv = _gae(b_rew, b_val, b_done, last_value, cfg.gamma, cfg.gae_lambda)
            returns = adv + b_val
            if obs_rms is not None:
                obs_rms.update(b_raw_obs.reshape(-1, env.obs_dim))
            if value_rms is not None:
                value_rms.update(returns.reshape(-1))
                target = value_rms.normalize(returns)
                old_v = value_rms.normalize(b_val)
            else:
                target, old_v = returns, b_val

        # ---- update -----------------------------------------------------------------------------
        flat = {
            "obs": b_obs.reshape(-1, env.obs_dim),
            "act": b_act.reshape(-1, env.act_dim),
            "logp": b_logp.reshape(-1),
            "adv": adv.reshape(-1),
            "target": target.reshape(-1),
            "old_v": old_v.reshape(-1),
        }
        batch = n * horizon
        if cfg.lr_schedule == "linear":
            lr = cfg.lr * max(1.0 - run.env_steps / cfg.total_steps, 0.0)
        stats = {"pg": 0.0, "v": 0.0, "ent": 0.0, "kl": 0.0, "clip": 0.0, "gn": 0.0}
        n_updates = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(batch, device=device)
            for start in range(0, batch - cfg.minibatch_size + 1, cfg.minibatch_size):
                idx = perm[start : start + cfg.minibatch_size]
                mb = {k: v[idx] for k, v in flat.items()}
                dist, v = agent.dist_value(mb["obs"])
                logp = dist.log_prob(mb["act"]).sum(-1)
                log_ratio = logp - mb["logp"]
                ratio = log_ratio.exp()
                a = mb["adv"]
                if cfg.normalize_advantage:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                v_loss = (v - mb["target"]).square()
                if cfg.clip_value:
                    v_clip = mb["old_v"] + (v - mb["old_v"]).clamp(-cfg.clip_coef, cfg.clip_coef)
                    v_loss = torch.max(v_loss, (v_clip - mb["target"]).square())
                v_loss = 0.5 * v_loss.mean()
                entropy = dist.entropy().sum(-1).mean()
                loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
                if cfg.bounds_loss_coef > 0:  # rl_games: keep action means within ±1.1
                    mu = dist.mean
                    bounds = (mu - 1.1).clamp_min(0).square() + (mu + 1.1).clamp_max(0).square()
                    loss = loss + cfg.bounds_loss_coef * bounds.sum(-1).mean()
                for group in optim.param_groups:
                    group["lr"] = lr
                optim.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optim.step()
                with torch.no_grad():
                    kl = ((ratio - 1) - log_ratio).mean()
                    if cfg.lr_schedule == "adaptive":
                        if kl > 2.0 * cfg.target_kl:
                            lr = max(lr / 1.5, 1e-6)
                        elif kl < 0.5 * cfg.target_kl:
                            lr = min(lr * 1.5, 1e-2)
                    stats["pg"] += float(pg_loss)
                    stats["v"] += float(v_loss)
                    stats["ent"] += float(entropy)
                    stats["kl"] += float(kl)
                    stats["clip"] += float(((ratio - 1).abs() > cfg.clip_coef).float().mean())
                    stats["gn"] += float(grad_norm)
                n_updates += 1
        k = max(n_updates, 1)
        run.log(
            {
                "loss/actor": stats["pg"] / k,
                "loss/critic": stats["v"] / k,
                "loss/entropy": stats["ent"] / k,
                "grad_norm/actor": stats["gn"] / k,
                "ppo/approx_kl": stats["kl"] / k,
                "ppo/clip_fraction": stats["clip"] / k,
                "ppo/lr": lr,
                "ppo/action_std": float(agent.log_std.detach().exp().mean()),
            }
        )
        run.end_iteration(policy, state_fn)
    return policy


ALGORITHM = Algorithm(
    name="ppo",
    config=PPOConfig,
    train=train,
    description="PPO: clipped policy gradient with GAE, obs/value normalisation (Schulman et al. 2017)",
)
