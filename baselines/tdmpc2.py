"""TD-MPC2 (Hansen, Su, Wang, ICLR 2024): an implicit world model with MPPI planning, on vectorised envs.

The agent follows the reference implementation (``nicklashansen/tdmpc2``):

- **World model** :class:`~pwm_bench.world_model.WorldModel` with a 101-bin two-hot reward, an
  ensemble of Q functions (dropout 0.01 in their first layer), a policy prior and, in episodic mode,
  a termination head. Encoder LR is ``0.3 ×`` the model LR; gradient-norm clip 20.
- **Model update** on windows of ``H + 1`` observations: ``20 · consistency + 0.1 · reward + 0.1 ·
  value (+ 1 · termination)``, each ``ρ^t``-weighted (ρ = 0.5) and averaged over the horizon; reward
  and Q are predicted on the *rolled-out* latents with the data's actions; TD targets
  ``r + γ (1 - term) · min(2 random target Qs)(z', a' ~ π(z'))``; target Qs are an EMA (τ = 0.01).
- **Policy prior** on the detached latents ``z_0..z_H``: maximise ``Q_avg / S + α · H̃`` with the
  running value scale ``S`` (5th-95th percentile range of the t = 0 values, floor 1, τ = 0.01), the
  action-dimension-scaled entropy ``H̃ = -A · log N(u; μ, σ)`` of the current reference code and
  ``α = 1e-4``; own Adam (eps 1e-5).
- **MPPI** (:func:`mppi`): 512 action sequences of length 3, 24 of them rolled out by the policy
  prior, 6 iterations (8 when ``A ≥ 20``), 64 elites weighted by ``exp(0.5 · (G - max G))``, std in
  ``[0.05, 2]`` starting at 2, mean warm-started from the previous step's plan, the executed
  sequence drawn in proportion to its weight, ``std[0]`` exploration noise in training only.
  **Planning is batched over all parallel worlds** of the vectorised env.
- **Schedule**: ``seed_steps`` uniformly random env steps (default ``max(1000, 5 T)`` for
  episodes of ``T`` steps), then a burst of as many updates, then ``updates_per_env_step`` updates
  per env step counted over all worlds (UTD 1, as the reference's single-env trainer). Discount
  ``γ = clip((T/5 - 1) / (T/5), 0.95, 0.995)``.

Deliberate differences from the reference, documented where they act:

- Replay stores per-world streams of transitions as they happen and samples windows that never
  cross an episode boundary, instead of adding whole episodes when they end; with uniform sampling
  over valid windows this is the same distribution once the episodes have finished.
- ``episodic`` defaults to ``True``: the Warp locomotion envs terminate when the robot falls, which
  the reference's default (non-episodic) mode rejects. Termination flags from the data always cut
  the TD target; the learned termination head masks planned returns.

**Policy-only mode** (``policy_only=true``): the paper's baseline for its world-model-budget ablation
(the TD-MPC2 fork's policy-training branch). A pretrained PWM world model is loaded and frozen; its
encoder, dynamics and reward (decoded to env units) drive the model rollouts of the updates and of
MPPI, and only the Q ensemble (value loss alone: consistency and reward losses are removed) and
the policy prior learn, on data the agent collects as usual. The model is ``world_model`` (a
folder, or a name under the results root's ``world_models/``) or, when that is unset, PWM's own
pipeline model for the run's env, seed and preset (built and cached exactly as ``pwm`` builds it,
so a ``pwm`` run with the same ``pretrain_steps`` uses the same file), pretrained for
``pwm_pretrain_steps`` steps. Planned returns are cut at predicted terminations only when that
model has a termination head (PWM's ``wm_termination``); TD targets use the data's terminations.

Shapes in comments: ``N`` worlds, ``S`` planning samples, ``P`` policy samples, ``E`` elites, ``H``
horizon, ``A`` action size, ``L`` latent size, ``B`` batch, ``O`` obs size.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig, neutral
from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError, unknown_choice
from pwm_bench.nn import adam
from pwm_bench.replay import WindowReplay
from pwm_bench.run import Run
from pwm_bench.world_model import (
    MODEL_SIZES,
    WorldModel,
    consistency_loss,
    reward_loss,
    rho_weights,
    sized_config,
    two_hot_inv,
)

# --------------------------------------------------------------------------------------------------
# configuration

_LOCOMOTION = ("hopper", "ant", "humanoid", "snu_humanoid", "muscle_humanoid")


@dataclasses.dataclass
class TDMPC2Config(TrainConfig):
    """TD-MPC2 hyperparameters (budgets in env steps over all worlds)."""

    total_steps: int = 1_000_000
    """Environment-step budget of the run (all worlds together)."""
    num_envs: int = 1
    """Parallel worlds used for collection (planning is batched over them)."""
    eval_every: int = 50_000
    """Evaluate (with planning, no exploration noise) and checkpoint every this many env steps."""
    model_size: str = "5M"
    """Named world-model size: 1M, 5M, 19M or 48M (see ``pwm_bench.world_model.MODEL_SIZES``)."""
    latent_dim: int | None = None
    """Override of the size's latent dimension."""
    mlp_dim: int | None = None
    """Override of the size's hidden width of dynamics, reward, Q and policy (two layers)."""
    enc_dim: int | None = None
    """Override of the size's encoder hidden width."""
    num_q: int | None = None
    """Override of the size's number of Q functions."""
    horizon: int = 3
    """Model rollout horizon H of training windows and of planning."""
    batch_size: int = 256
    """Windows per update."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (over all worlds)."""
    lr: float = 3e-4
    """Adam learning rate of the model and of the policy prior."""
    enc_lr_scale: float = 0.3
    """Encoder LR factor."""
    grad_clip: float = 20.0
    """Gradient-norm clip of the model and of the policy prior."""
    rho: float = 0.5
    """Per-step weight base of the model losses."""
    consistency_coef: float = 20.0
    """Weight of the latent consistency loss."""
    reward_coef: float = 0.1
    """Weight of the reward loss."""
    value_coef: float = 0.1
    """Weight of the Q loss."""
    termination_coef: float = 1.0
    """Weight of the termination loss (episodic mode)."""
    entropy_coef: float = 1e-4
    """Weight α of the scaled entropy in the policy-prior loss."""
    tau: float = 0.01
    """EMA rate of the target Qs and of the value scale."""
    discount: float | None = None
    """Discount γ; None uses the episode-length heuristic (clipped to [discount_min, discount_max])."""
    discount_min: float = 0.95
    """Lower clip of the discount heuristic."""
    discount_max: float = 0.995
    """Upper clip of the discount heuristic."""
    episodic: bool = True
    """Learn a termination head and mask planned returns after predicted terminations."""
    seed_steps: int | None = None
    """Uniformly random env steps before learning; None means max(1000, 5 · episode length)."""
    updates_per_env_step: float = 1.0
    """Gradient updates per env step over all worlds after the seed phase (the reference's UTD is 1)."""
    mpc: bool = True
    """Act by MPPI planning; False acts with the policy prior (a sample in training, tanh(mean) in eval)."""
    iterations: int | None = None
    """MPPI iterations; None means 6, or 8 when the action has at least 20 dimensions."""
    num_samples: int = 512
    """Action sequences per MPPI iteration (including the policy's)."""
    num_pi_trajs: int = 24
    """Sequences rolled out by the policy prior."""
    num_elites: int = 64
    """Elite sequences that define the next Gaussian."""
    temperature: float = 0.5
    """Multiplier of the elite values inside the exponential weights."""
    min_std: float = 0.05
    """Lower clamp of the MPPI standard deviation."""
    max_std: float = 2.0
    """Initial and upper clamp of the MPPI standard deviation."""
    policy_only: bool = neutral(False)
    """Train only the Qs and the policy prior on a frozen pretrained PWM world model (see the module doc)."""
    world_model: str | None = neutral(None)
    """Policy-only mode: the frozen PWM world model (folder, or name under the root's ``world_models/``);
    None takes PWM's pipeline model for this env, seed and preset."""
    pwm_pretrain_steps: int | None = neutral(None)
    """Policy-only mode without ``world_model``: pretraining steps of PWM's pipeline model (None: PWM's preset)."""

    def preset_overrides(self, preset: str, env: str) -> dict[str, Any]:
        if preset == "smoke":
            return {
                "total_steps": 1024,
                "num_envs": 4,
                "seed_steps": 256,
                "updates_per_env_step": 0.25,
                "model_size": "1M",
                "latent_dim": 64,
                "mlp_dim": 64,
                "enc_dim": 64,
                "batch_size": 64,
                "num_samples": 64,
                "num_pi_trajs": 8,
                "num_elites": 8,
                "iterations": 2,
                "eval_every": 512,
                "eval_episodes": 2,
            }
        if preset == "cpu":
            # the reference algorithm, shrunk to what two CPU cores plan and update in minutes:
            # a narrower model (latent 64, width 128) with 5 Qs, and 256 samples x 4 iterations instead of 512 x 6
            small = {
                "model_size": "1M",
                "latent_dim": 64,
                "mlp_dim": 128,
                "enc_dim": 128,
                "num_q": 5,
                "num_samples": 256,
                "num_pi_trajs": 24,
                "num_elites": 32,
                "iterations": 4,
            }
            if env in _LOCOMOTION:
                return {
                    **small,
                    "total_steps": 60_000,
                    "num_envs": 8,
                    "seed_steps": 5_000,
                    "updates_per_env_step": 0.25,
                    "eval_every": 20_000,
                    "eval_episodes": 4,
                }
            return {
                **small,
                "total_steps": 20_000,
                "num_envs": 4,
                "eval_every": 2_000,
                "eval_episodes": 10,
            }
        if preset == "paper":
            # the reference's single-task defaults (5M model, UTD 1), one world as its trainer
            return {"total_steps": 1_000_000 if env in _LOCOMOTION else 100_000, "num_envs": 1}
        return {}

    def validate(self) -> None:
        super().validate()
        if self.model_size not in MODEL_SIZES or MODEL_SIZES[self.model_size].get("num_bins", 0) == 0:
            raise unknown_choice("TD-MPC2 model_size", self.model_size, [k for k in MODEL_SIZES if k != "pwm"])
        for name in ("horizon", "batch_size", "buffer_size", "lr", "num_samples", "num_elites", "temperature"):
            if getattr(self, name) <= 0:
                raise UsageError(f"config '{name}' must be positive, got {getattr(self, name)}")
        if not 0 <= self.num_pi_trajs < self.num_samples:
            raise UsageError("config 'num_pi_trajs' must be in [0, num_samples)")
        if not 0 < self.num_elites <= self.num_samples:
            raise UsageError("config 'num_elites' must be in (0, num_samples]")
        if not 0 < self.min_std <= self.max_std:
            raise UsageError("config 'min_std' and 'max_std' need 0 < min_std <= max_std")
        if self.num_q is not None and self.num_q < 2:
            raise UsageError(f"config 'num_q' must be at least 2 (targets take the min of two), got {self.num_q}")
        if self.discount is not None and not 0.0 < self.discount <= 1.0:
            raise UsageError(f"config 'discount' must be in (0, 1], got {self.discount}")
        if self.updates_per_env_step < 0 or (self.seed_steps is not None and self.seed_steps < 0):
            raise UsageError("config 'updates_per_env_step' and 'seed_steps' must be non-negative")
        if self.iterations is not None and self.iterations < 1:
            raise UsageError(f"config 'iterations' must be at least 1, got {self.iterations}")
        if not self.policy_only and (self.world_model is not None or self.pwm_pretrain_steps is not None):
            raise UsageError("config 'world_model' and 'pwm_pretrain_steps' need policy_only=true")
        if self.pwm_pretrain_steps is not None and self.pwm_pretrain_steps <= 0:
            raise UsageError(f"config 'pwm_pretrain_steps' must be positive, got {self.pwm_pretrain_steps}")

    def world_model_config(self) -> Any:
        """The :class:`~pwm_bench.world_model.WorldModelConfig` this agent builds."""
        over: dict[str, Any] = {"termination": self.episodic, "policy_prior": True}
        if self.num_q is not None:
            over["num_q"] = self.num_q
        return sized_config(
            self.model_size, latent_dim=self.latent_dim, mlp_dim=self.mlp_dim, enc_dim=self.enc_dim, **over
        )


def discount_heuristic(episode_length: int | None, lo: float = 0.95, hi: float = 0.995) -> float:
    """TD-MPC2's discount ``clip((T/5 - 1) / (T/5), lo, hi)`` for episodes of ``T`` steps (``hi`` if unknown)."""
    if not episode_length:
        return hi
    frac = episode_length / 5
    return float(min(max((frac - 1) / frac, lo), hi))


# --------------------------------------------------------------------------------------------------
# MPPI


@dataclasses.dataclass
class MPPIConfig:
    """Knobs of :func:`mppi` (TD-MPC2's defaults)."""

    iterations: int = 6
    """Refinements of the sampling Gaussian per planning call."""
    num_samples: int = 512
    """Action sequences evaluated per iteration and world (policy proposals included)."""
    num_elites: int = 64
    """Best sequences that define the next mean and std."""
    temperature: float = 0.5
    """Multiplier of the elite values in the exponential weights."""
    min_std: float = 0.05
    """Lower clamp of the std (action units)."""
    max_std: float = 2.0
    """Initial std and its upper clamp (action units)."""


def mppi(
    value_fn: Callable[[torch.Tensor], torch.Tensor],
    policy_actions: torch.Tensor | None,
    cfg: MPPIConfig,
    *,
    num_worlds: int,
    horizon: int,
    act_dim: int,
    prev_mean: torch.Tensor | None = None,
    explore: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model-predictive path integral planning over action sequences, batched over worlds.

    Args:
        value_fn: maps action sequences ``(N, S, H, A)`` in [-1, 1] to their estimated returns ``(N, S)``.
        policy_actions: ``(N, P, H, A)`` sequences proposed by a policy, kept in every iteration (or None).
        cfg: MPPI settings.
        num_worlds: N.
        horizon: H.
        act_dim: A.
        prev_mean: ``(N, H, A)`` last step's final mean, shifted by one step as the warm start (or None).
        explore: add ``std[0]`` Gaussian noise to the executed action (training).
        generator: RNG for the samples.
        device: where to plan.

    Returns:
        ``(action (N, A), mean (N, H, A), std (N, H, A))``: the first action of a sequence drawn from
        the elites in proportion to their weights, and the final Gaussian.
    """
    n, h, a = num_worlds, horizon, act_dim
    p = 0 if policy_actions is None else policy_actions.shape[1]
    mean = torch.zeros(n, h, a, device=device)
    if prev_mean is not None:
        mean[:, :-1] = prev_mean[:, 1:]
    std = torch.full((n, h, a), cfg.max_std, device=device)
    actions = torch.empty(n, cfg.num_samples, h, a, device=device)
    if p:
        actions[:, :p] = policy_actions
    k = min(cfg.num_elites, cfg.num_samples)
    for _ in range(cfg.iterations):
        noise = torch.randn(n, cfg.num_samples - p, h, a, device=device, generator=generator)
        actions[:, p:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1.0, 1.0)
        value = torch.nan_to_num(value_fn(actions), nan=0.0)  # (N, S)
        elite_value, elite_idx = torch.topk(value, k, dim=1)
        elite = torch.gather(actions, 1, elite_idx[:, :, None, None].expand(n, k, h, a))  # (N, E, H, A)
        score = torch.exp(cfg.temperature * (elite_value - elite_value.max(dim=1, keepdim=True).values))
        score = score / score.sum(dim=1, keepdim=True)
        w = score[:, :, None, None]
        mean = (w * elite).sum(dim=1)
        std = ((w * (elite - mean.unsqueeze(1)).square()).sum(dim=1)).sqrt().clamp(cfg.min_std, cfg.max_std)
    pick = torch.multinomial(score, 1, generator=generator).squeeze(1)
    action = elite[torch.arange(n, device=elite.device), pick, 0]
    if explore:
        action = action + std[:, 0] * torch.randn(n, a, device=device, generator=generator)
    return action.clamp(-1.0, 1.0), mean, std


# --------------------------------------------------------------------------------------------------
# the agent


class RunningScale(nn.Module):
    """Running 5th-95th percentile range of values (floor 1), EMA rate ``tau``; divides the policy's Q."""

    def __init__(self, tau: float = 0.01) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("value", torch.ones(()))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold in the percentile range of the values ``x (...)``."""
        q = torch.quantile(x.detach().float().flatten(), torch.tensor([0.05, 0.95], device=x.device))
        self.value.lerp_((q[1] - q[0]).clamp_min(1.0), self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value


class FrozenLatentModel(nn.Module):
    """A pretrained PWM world model as TD-MPC2's latent dynamics, never trained (policy-only mode).

    ``encode``, ``next`` and ``termination_logit`` are the model's; ``reward`` is decoded to env units
    (the model predicts ``(r - shift) / scale``), as TD-MPC2's two-hot reward is.
    """

    def __init__(self, wm: WorldModel) -> None:
        super().__init__()
        self.wm = wm.requires_grad_(False).eval()

    @property
    def has_termination(self) -> bool:
        return self.wm.term_head is not None

    def train(self, mode: bool = True) -> FrozenLatentModel:
        return super().train(False)  # always in eval mode (no dropout)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., L)`` of observations ``(..., O)``."""
        return self.wm.encode(obs)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Next latents ``(..., L)``."""
        return self.wm.next(z, a)

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Predicted rewards ``(...)`` in env units."""
        return self.wm.reward_to_env(self.wm.reward(z, a))

    def termination_logit(self, z: torch.Tensor) -> torch.Tensor:
        """Logit ``(...)`` of the model's termination head."""
        return self.wm.termination_logit(z)


class TDMPC2Agent(nn.Module):
    """World model, target Qs, value scale, optimisers and the update/plan steps of TD-MPC2.

    Args:
        obs_dim: observation size O.
        act_dim: action size A.
        cfg: hyperparameters.
        discount: discount γ.
        frozen: policy-only mode: the pretrained PWM world model that encodes, rolls out and predicts
            rewards (frozen); the agent's own model then trains only its Qs and policy prior.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: TDMPC2Config, discount: float, frozen: WorldModel | None = None
    ) -> None:
        super().__init__()
        self.cfg, self.discount, self.act_dim = cfg, discount, act_dim
        wm_cfg = cfg.world_model_config()
        self.frozen: FrozenLatentModel | None = None
        if frozen is not None:
            if (frozen.obs_dim, frozen.act_dim) != (obs_dim, act_dim):
                raise UsageError(
                    f"the frozen world model is for observations of {frozen.obs_dim} and actions of "
                    f"{frozen.act_dim}; this env has {obs_dim} and {act_dim}"
                )
            if frozen.task_emb is not None:
                raise UsageError("policy-only TD-MPC2 takes a single-task world model, not a multi-task one")
            # the Qs and the prior read the frozen model's latents; no termination head of their own
            wm_cfg = dataclasses.replace(wm_cfg, latent_dim=frozen.cfg.latent_dim, termination=False)
            self.frozen = FrozenLatentModel(frozen)
        self.model = WorldModel(obs_dim, act_dim, wm_cfg)
        self.target_qs = copy.deepcopy(self.model.qs).requires_grad_(False).eval()
        self.scale = RunningScale(cfg.tau)
        m = self.model
        if self.frozen is not None:
            # TD-MPC2's policy-only training: the value loss alone, on the Qs alone
            self.optim = adam(m.qs.parameters(), lr=cfg.lr)
        else:
            enc = list(m.encoder.parameters())
            enc_ids = {id(p) for p in enc}
            pi_ids = {id(p) for p in m.pi.parameters()}
            rest = [p for p in m.parameters() if id(p) not in enc_ids and id(p) not in pi_ids]
            self.optim = adam([{"params": enc, "lr": cfg.lr * cfg.enc_lr_scale}, {"params": rest}], lr=cfg.lr)
        self.pi_optim = adam(m.pi.parameters(), lr=cfg.lr, eps=1e-5)
        iters = cfg.iterations if cfg.iterations is not None else (8 if act_dim >= 20 else 6)
        self.mppi_cfg = MPPIConfig(iters, cfg.num_samples, cfg.num_elites, cfg.temperature, cfg.min_std, cfg.max_std)
        self.model.eval()

    @property
    def dyn(self) -> Any:
        """What encodes, rolls out and predicts rewards: the frozen model, else the agent's own."""
        return self.frozen if self.frozen is not None else self.model

    @property
    def masks_terminations(self) -> bool:
        """Whether planned returns stop at predicted terminations (episodic, and a head to predict them)."""
        return self.cfg.episodic and (self.frozen is None or self.frozen.has_termination)

    # -- value estimates ----------------------------------------------------------------------------

    def q_value(self, z: torch.Tensor, a: torch.Tensor, mode: str, target: bool = False) -> torch.Tensor:
        """Scalar Q ``(...)`` from two random heads: their ``min`` (TD targets) or ``avg`` (planning, policy)."""
        heads = self.target_qs if target else self.model.qs
        pick = torch.randperm(len(heads))[:2].tolist()
        logits = self.model.q_logits(z, a, heads=[heads[i] for i in pick])
        q = two_hot_inv(logits, self.model.cfg.vmin, self.model.cfg.vmax)
        return q.min(0).values if mode == "min" else q.mean(0)

    def sample_policy(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised prior sample ``tanh(u) (..., A)`` and its scaled entropy ``-A log N(u; μ, σ) (...)``."""
        mean, log_std = self.model.policy_dist(z)
        eps = torch.randn_like(mean)
        u = mean + eps * log_std.exp()
        log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.tanh(u), -self.act_dim * log_prob

    @torch.no_grad()
    def estimate_value(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Planned return ``(M,)`` of sequences ``actions (M, H, A)`` from latents ``z (M, L)``.

        ``Σ_t γ^t R(z_t, a_t) + γ^H Q_avg(z_H, π(z_H))``, cut after a predicted termination.
        """
        g = torch.zeros(z.shape[0], device=z.device)
        disc = 1.0
        alive = torch.ones_like(g)
        dyn, mask = self.dyn, self.masks_terminations
        for t in range(actions.shape[1]):
            r = dyn.reward(z, actions[:, t])
            z = dyn.next(z, actions[:, t])
            g = g + disc * alive * r
            disc *= self.discount
            if mask:
                alive = alive * (dyn.termination_logit(z) <= 0).float()
        a_h, _ = self.model.policy(z)
        return g + disc * alive * self.q_value(z, a_h, "avg")

    @torch.no_grad()
    def plan(
        self, obs: torch.Tensor, prev_mean: torch.Tensor | None, explore: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MPPI action ``(N, A)`` and final mean ``(N, H, A)`` for observations ``obs (N, O)``."""
        n, h, a = obs.shape[0], self.cfg.horizon, self.act_dim
        z = self.dyn.encode(obs)
        p = self.cfg.num_pi_trajs
        pi_actions = None
        if p:
            zp = z.repeat_interleave(p, dim=0)
            seq = []
            for t in range(h):
                act, _ = self.model.policy(zp)
                seq.append(act)
                if t < h - 1:
                    zp = self.dyn.next(zp, act)
            pi_actions = torch.stack(seq, 1).reshape(n, p, h, a)
        s = self.mppi_cfg.num_samples
        zs = z.repeat_interleave(s, dim=0)

        def value_fn(actions: torch.Tensor) -> torch.Tensor:
            return self.estimate_value(zs, actions.reshape(n * s, h, a)).reshape(n, s)

        action, mean, _ = mppi(
            value_fn,
            pi_actions,
            self.mppi_cfg,
            num_worlds=n,
            horizon=h,
            act_dim=a,
            prev_mean=prev_mean,
            explore=explore,
            device=obs.device,
        )
        return action, mean

    @torch.no_grad()
    def act(self, obs: torch.Tensor, prev_mean: torch.Tensor | None, explore: bool) -> tuple[torch.Tensor, Any]:
        """Action ``(N, A)`` (planned, or from the prior when ``mpc`` is off) and the new planner memory."""
        if self.cfg.mpc:
            return self.plan(obs, prev_mean, explore)
        action, _ = self.model.policy(self.dyn.encode(obs), deterministic=not explore)
        return action, None

    # -- learning -----------------------------------------------------------------------------------

    def update(
        self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One model update and one policy-prior update on windows ``obs (H+1, B, O)``, ``action (H, B, A)``,
        ``reward (H, B)``, ``terminated (H, B)``; returns detached scalar metrics.

        In policy-only mode the latents come from the frozen model and the update is the Q (value)
        loss alone, on the Qs alone."""
        cfg, m, dyn = self.cfg, self.model, self.dyn
        full = self.frozen is None
        with torch.no_grad():
            next_z = dyn.encode(obs[1:])
            next_a, _ = m.policy(next_z)
            td = reward + self.discount * (1.0 - terminated) * self.q_value(next_z, next_a, "min", target=True)

        m.train()
        with torch.set_grad_enabled(full):
            z = dyn.encode(obs[0])
            zs = [z]
            for t in range(action.shape[0]):
                z = dyn.next(z, action[t])
                zs.append(z)
            z_all = torch.stack(zs)  # (H+1, B, L)
        losses: dict[str, torch.Tensor] = {}
        if full:
            losses["consistency"] = consistency_loss(z_all[1:], next_z, cfg.rho)
            losses["reward"] = reward_loss(m, m.reward_logits(z_all[:-1], action), reward, cfg.rho)
        q_logits = m.q_logits(z_all[:-1], action)  # (Q, H, B, K)
        value = torch.stack([reward_loss(m, q, td, cfg.rho) for q in q_logits]).mean()
        losses["value"] = value
        total = cfg.value_coef * value
        if full:
            total = cfg.consistency_coef * losses["consistency"] + cfg.reward_coef * losses["reward"] + total
            losses["termination"] = torch.zeros((), device=obs.device)
            if cfg.episodic:
                losses["termination"] = F.binary_cross_entropy_with_logits(m.termination_logit(z_all[1:]), terminated)
                total = total + cfg.termination_coef * losses["termination"]
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = nn.utils.clip_grad_norm_(m.parameters() if full else m.qs.parameters(), cfg.grad_clip)
        self.optim.step()

        pi_loss, pi_grad, entropy = self._update_pi(z_all.detach())
        with torch.no_grad():
            for p, tp in zip(m.qs.parameters(), self.target_qs.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        m.eval()
        return {
            **{f"loss/{k}": v.detach() for k, v in losses.items()},
            "loss/total": total.detach(),
            "loss/actor": pi_loss,
            "grad_norm/model": grad_norm.detach(),
            "grad_norm/actor": pi_grad,
            "tdmpc2/entropy": entropy,
            "tdmpc2/value_scale": self.scale.value.detach().clone(),
            "tdmpc2/td_target": td.detach().mean(),
        }

    def _update_pi(self, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy-prior step on detached latents ``zs (H+1, B, L)``; Q parameters get no gradient."""
        cfg = self.cfg
        self.model.qs.requires_grad_(False)
        try:
            action, scaled_entropy = self.sample_policy(zs)
            q = self.q_value(zs, action, "avg")  # (H+1, B)
            self.scale.update(q[0])
            q = self.scale(q)
            w = rho_weights(zs.shape[0], cfg.rho, zs.device)
            loss = ((-(cfg.entropy_coef * scaled_entropy + q)).mean(dim=1) * w).mean()
            self.pi_optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.pi.parameters(), cfg.grad_clip)
            self.pi_optim.step()
        finally:
            self.model.qs.requires_grad_(True)
        return loss.detach(), grad_norm.detach(), scaled_entropy.detach().mean() / self.act_dim


class TDMPC2Policy:
    """The trained agent as a policy: plans with MPPI (no exploration noise) and keeps each world's warm start."""

    def __init__(self, agent: TDMPC2Agent) -> None:
        self.agent = agent
        self.prev_mean: torch.Tensor | None = None

    def reset_episodes(self, mask: torch.Tensor) -> None:
        """Forget the warm start of the worlds in ``mask (N,)`` whose episode begins anew."""
        if self.prev_mean is not None and self.prev_mean.shape[0] != mask.shape[0]:
            self.prev_mean = None
        self.prev_mean = forget_warm_start(self.prev_mean, mask)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A)`` in [-1, 1] for observations ``(N, O)``."""
        prev = self.prev_mean if self.prev_mean is not None and self.prev_mean.shape[0] == obs.shape[0] else None
        action, self.prev_mean = self.agent.act(obs, prev, explore=not deterministic)
        return action


def forget_warm_start(prev: torch.Tensor | None, ended: torch.Tensor) -> torch.Tensor | None:
    """The planner memory ``(N, H, A)`` without the worlds in ``ended (N,)`` (None once none is left).

    A zero mean is what a first step plans from, so zeroing a world's rows forgets its warm start.
    """
    if prev is None or not bool(ended.any()):
        return prev
    if bool(ended.all()):
        return None
    prev = prev.clone()
    prev[ended.to(prev.device)] = 0.0
    return prev


# --------------------------------------------------------------------------------------------------
# training loop


def train(env: VecEnv, cfg: TDMPC2Config, run: Run) -> TDMPC2Policy:
    """Train TD-MPC2 on ``env`` within ``cfg.total_steps`` env steps, reporting through ``run``."""
    device = run.device
    n, obs_dim, act_dim = env.num_envs, env.obs_dim, env.act_dim
    episode_length = env.max_episode_steps
    discount = (
        cfg.discount
        if cfg.discount is not None
        else discount_heuristic(episode_length, cfg.discount_min, cfg.discount_max)
    )
    seed_steps = cfg.seed_steps if cfg.seed_steps is not None else max(1000, 5 * (episode_length or 200))
    frozen = None
    if cfg.policy_only:
        from pwm_bench.pretrain import load_world_model

        if cfg.world_model is None:
            raise UsageError("policy-only TD-MPC2 needs a world model: run through pwm-bench or set world_model")
        frozen = load_world_model(cfg.world_model, device)
    agent = TDMPC2Agent(obs_dim, act_dim, cfg, discount, frozen).to(device)
    model_error = _frozen_model_error(frozen, run)
    replay = WindowReplay(min(cfg.buffer_size, cfg.total_steps), n, obs_dim, act_dim, device)
    policy = TDMPC2Policy(agent)
    update_credit, updates, seeded = 0.0, 0, False

    state = run.restore()
    if state is not None:
        agent.load_state_dict(state["agent"])
        agent.optim.load_state_dict(state["optim"])
        agent.pi_optim.load_state_dict(state["pi_optim"])
        replay.load_state_dict(state["replay"])
        update_credit, updates, seeded = float(state["update_credit"]), int(state["updates"]), bool(state["seeded"])

    def state_fn() -> dict[str, Any]:
        return {
            "agent": agent.state_dict(),
            "optim": agent.optim.state_dict(),
            "pi_optim": agent.pi_optim.state_dict(),
            "replay": replay.state_dict(),
            "update_credit": update_credit,
            "updates": updates,
            "seeded": seeded,
        }

    def one_update(sums: dict[str, torch.Tensor]) -> None:
        nonlocal updates
        stats = agent.update(*replay.sample(cfg.batch_size, cfg.horizon))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        updates += 1

    steps_per_iter = max(1, min(math.ceil(1000 / n), math.ceil(cfg.eval_every / n)))
    obs, _ = env.reset(seed=run.env_seed)
    prev_mean: torch.Tensor | None = None
    while not run.done:
        sums: dict[str, torch.Tensor] = {}
        n_upd0, plan_time, plan_calls, update_time = updates, 0.0, 0, 0.0
        for _ in range(steps_per_iter):
            if run.env_steps < seed_steps:
                action = torch.rand(n, act_dim, device=device) * 2.0 - 1.0
            else:
                t0 = time.perf_counter()
                action, prev_mean = agent.act(obs, prev_mean, explore=True)
                plan_time += time.perf_counter() - t0
                plan_calls += 1
            with torch.no_grad():
                next_obs, reward, terminated, truncated, info = env.step(action)
                ended = terminated | truncated
                real_next = torch.where(ended.unsqueeze(-1), info["final_obs"], next_obs)
                replay.add(obs, action, reward, real_next, terminated, ended)
            prev_mean = forget_warm_start(prev_mean, ended)
            run.add_env_steps(n)
            run.record_episodes(info)
            obs = next_obs
            if run.env_steps >= seed_steps and replay.can_sample(cfg.horizon):
                t0 = time.perf_counter()
                if not seeded:
                    seeded = True
                    burst = int(seed_steps * cfg.updates_per_env_step)
                    with run.phase("TD-MPC2 pretraining on seed data", burst) as advance:
                        for _ in range(burst):
                            one_update(sums)
                            advance(1)
                else:
                    update_credit += cfg.updates_per_env_step * n
                    while update_credit >= 1.0:
                        update_credit -= 1.0
                        one_update(sums)
                update_time += time.perf_counter() - t0
            if run.done:
                break
        n_upd = updates - n_upd0
        metrics: dict[str, Any] = {k: v / n_upd for k, v in sums.items()} if n_upd else {}
        metrics["tdmpc2/updates"] = updates
        if plan_calls:
            metrics["time/plan_ms"] = 1000.0 * plan_time / plan_calls
        if n_upd and update_time > 0:
            metrics["time/updates_per_s"] = n_upd / update_time
        if model_error is not None:
            metrics.update(model_error(replay))
        run.log(metrics)
        run.end_iteration(policy, state_fn)
    return policy


def _frozen_model_error(frozen: WorldModel | None, run: Run) -> Callable[[WindowReplay], dict[str, float]] | None:
    """Policy-only mode: the frozen PWM model's losses on the newest windows of every world, measured
    as a ``pwm`` run of the same preset measures them (``wm/newest_consistency``, ``wm/newest_reward``)."""
    record = run.config_record or {}
    if frozen is None or "preset" not in record or "env" not in record:
        return None
    from pwm_bench.pwm import PWMConfig
    from pwm_bench.pwm.single_task import newest_data_losses

    pwm_cfg = PWMConfig.from_preset(record["preset"], record["env"])
    return lambda replay: newest_data_losses(frozen, replay, pwm_cfg)


def prepare(cfg: TDMPC2Config, ctx: Any) -> TDMPC2Config:
    """Policy-only mode: resolve ``world_model``, or build (or reuse) PWM's pipeline model for the run's
    env, seed and preset with ``pwm_pretrain_steps`` of pretraining. Other runs are left as they are."""
    if not cfg.policy_only:
        return cfg
    from pathlib import Path

    from pwm_bench.pwm import PWMConfig, resolve_artefact
    from pwm_bench.pwm import prepare as pwm_prepare

    cfg = copy.deepcopy(cfg)
    if cfg.world_model is not None:
        cfg.world_model = str(resolve_artefact(cfg.world_model, "world_models", Path(ctx.out)))
        return cfg
    if ctx.env.startswith("mt:"):
        raise UsageError("policy-only TD-MPC2 trains on one env, not a task set")
    pwm_cfg = PWMConfig.from_preset(ctx.preset, ctx.env)
    if cfg.pwm_pretrain_steps is not None:
        pwm_cfg.pretrain_steps = cfg.pwm_pretrain_steps
    pwm_cfg.validate()
    cfg.world_model = pwm_prepare(pwm_cfg, ctx).world_model
    return cfg


ALGORITHM = Algorithm(
    name="tdmpc2",
    config=TDMPC2Config,
    train=train,
    prepare=prepare,
    description="TD-MPC2: implicit world model + MPPI planning, batched over worlds (Hansen et al. 2024)",
)
