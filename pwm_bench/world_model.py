"""The implicit (decoder-free) latent world model shared by PWM and TD-MPC2.

Components, each an MLP of ``NormedLinear`` blocks (``Linear → [Dropout] → LayerNorm → Mish``):

- encoder ``h(o, e) -> z``, ending in ``Linear → LayerNorm → SimNorm``;
- latent dynamics ``d(z, a, e) -> z'`` (predicts the next latent directly, not a residual), same ending;
- reward ``R(z, a, e)``: a scalar (PWM single-task, MSE) or ``num_bins`` logits of a two-hot
  distribution over symlog rewards in ``[vmin, vmax]`` (TD-MPC2, soft cross-entropy);
- optional Q ensemble ``Q_i(z, a, e)`` (dropout in the first layer, ``num_bins`` logits each) and
  policy prior ``π(z, e)`` (TD-MPC2 only; PWM drops both);
- optional task embedding ``e`` (multi-task), concatenated to every component's input.

SimNorm splits the latent into groups of ``simnorm_dim`` (8) and applies a softmax inside each, so a
latent is a concatenation of probability vectors. For the paper's world-model-type ablation the
``variant`` swaps that for a Mish output (``"mish"``: TD-MPC2's architecture without SimNorm) or uses
plain ReLU MLPs without normalisation (``"relu"``).

Init follows TD-MPC2: linear weights ``N(0, 0.02²)`` (truncated at ±2, i.e. in practice untruncated),
zero biases, and zero weights in the last layer of the reward and Q heads (they start out predicting
a uniform distribution over bins, or 0). Shapes: ``B`` batch, ``O`` obs size, ``A`` action size,
``L`` latent size, ``K`` bins.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pwm_bench.errors import UsageError, unknown_choice
from pwm_bench.nn import Mish

# --------------------------------------------------------------------------------------------------
# scalar transforms and two-hot regression


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: ``sign(x) (exp|x| - 1)``."""
    return torch.sign(x) * torch.expm1(x.abs())


def bin_centers(
    num_bins: int, vmin: float, vmax: float, device: Any = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``num_bins`` evenly spaced centres in ``[vmin, vmax]`` (symlog units)."""
    return torch.linspace(vmin, vmax, num_bins, device=device, dtype=dtype)


def two_hot(y: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Two-hot encoding ``(..., K)`` of raw scalars ``y (...)`` over symlog bins.

    ``symlog(y)`` is clamped to ``[vmin, vmax]`` and split between its two neighbouring bins in
    proportion to the distance, so ``Σ_k p_k c_k = clamp(symlog(y))`` exactly.
    """
    x = symlog(y).clamp(vmin, vmax)
    size = (vmax - vmin) / (num_bins - 1)
    pos = (x - vmin) / size
    k = pos.floor().clamp(0, num_bins - 1)
    f = (pos - k).unsqueeze(-1)
    k = k.long().unsqueeze(-1)
    out = torch.zeros(*y.shape, num_bins, dtype=y.dtype, device=y.device)
    out.scatter_(-1, k, 1.0 - f)
    out.scatter_add_(-1, (k + 1).clamp_max(num_bins - 1), f)  # at vmax f = 0: nothing moves
    return out


def two_hot_inv(logits: torch.Tensor, vmin: float, vmax: float, symlog_space: bool = False) -> torch.Tensor:
    """Expected value ``(...)`` of bin logits ``(..., K)``: raw units (symexp), or symlog units.

    ``symlog_space=True`` is PWM's multi-task reward decode (``softmax · centres`` without symexp).
    Differentiable in ``logits``.
    """
    centers = bin_centers(logits.shape[-1], vmin, vmax, logits.device, logits.dtype)
    x = (F.softmax(logits, dim=-1) * centers).sum(-1)
    return x if symlog_space else symexp(x)


def soft_ce(logits: torch.Tensor, y: torch.Tensor, vmin: float, vmax: float) -> torch.Tensor:
    """Soft cross-entropy ``(...)`` between bin logits ``(..., K)`` and two-hot targets of raw ``y (...)``."""
    target = two_hot(y, logits.shape[-1], vmin, vmax)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


# --------------------------------------------------------------------------------------------------
# building blocks


class SimNorm(nn.Module):
    """Softmax within consecutive groups of ``dim`` entries of the last axis (simplicial normalisation)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.reshape(*shape[:-1], -1, self.dim), dim=-1).reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NormedLinear(nn.Sequential):
    """``Linear → [Dropout] → LayerNorm → activation``."""

    def __init__(self, in_dim: int, out_dim: int, act: nn.Module, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.LayerNorm(out_dim), act]
        super().__init__(*layers)


Variant = Literal["simnorm", "mish", "relu"]
VARIANTS: tuple[str, ...] = ("simnorm", "mish", "relu")


def build_mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    head: Literal["linear", "latent"],
    variant: Variant = "simnorm",
    simnorm_dim: int = 8,
    dropout: float = 0.0,
) -> nn.Sequential:
    """MLP of the world model: hidden blocks, then a linear head or a latent head.

    ``variant`` ``"simnorm"``/``"mish"``: NormedLinear (Mish) hidden blocks; a latent head is
    ``Linear → LayerNorm → SimNorm`` (or ``→ Mish`` for ``"mish"``). ``"relu"``: ``Linear → ReLU``
    blocks without LayerNorm and a plain linear latent head. ``dropout`` applies to the first block.
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        p = dropout if i == 0 else 0.0
        if variant == "relu":
            layers += [nn.Linear(a, b), *([nn.Dropout(p)] if p > 0 else []), nn.ReLU()]
        else:
            layers.append(NormedLinear(a, b, Mish(), p))
    if head == "linear" or variant == "relu":
        layers.append(nn.Linear(dims[-1], out_dim))
    else:
        layers.append(NormedLinear(dims[-1], out_dim, SimNorm(simnorm_dim) if variant == "simnorm" else Mish()))
    return nn.Sequential(*layers)


def _last_linear(seq: nn.Module) -> nn.Linear:
    return [m for m in seq.modules() if isinstance(m, nn.Linear)][-1]


# --------------------------------------------------------------------------------------------------
# the model


@dataclasses.dataclass
class WorldModelConfig:
    """Architecture of a :class:`WorldModel` (sizes of the named presets in :data:`MODEL_SIZES`)."""

    latent_dim: int = 512
    """Latent size L (a multiple of simnorm_dim)."""
    enc_hidden: tuple[int, ...] = (256,)
    """Encoder hidden layers."""
    mlp_hidden: tuple[int, ...] = (512, 512)
    """Hidden layers of dynamics, reward, Q and policy."""
    simnorm_dim: int = 8
    """Group size V of SimNorm."""
    num_bins: int = 0
    """Reward/Q bins K: 0 for a scalar reward (MSE), else two-hot symlog regression (TD-MPC2: 101)."""
    vmin: float = -10.0
    """Lowest bin centre (symlog units)."""
    vmax: float = 10.0
    """Highest bin centre (symlog units)."""
    num_q: int = 0
    """Q-ensemble members (0: none, as in PWM; TD-MPC2: 5, or 2 at size 1M)."""
    q_dropout: float = 0.01
    """Dropout in the first layer of each Q network."""
    policy_prior: bool = False
    """Include TD-MPC2's policy prior π(z)."""
    termination: bool = False
    """Include a termination head ``p(done | z')`` (TD-MPC2's episodic mode; masks planned returns)."""
    log_std_min: float = -10.0
    """Lower bound of the policy prior's log std."""
    log_std_max: float = 2.0
    """Upper bound of the policy prior's log std."""
    num_tasks: int = 1
    """Tasks of a multi-task model (embedding rows)."""
    task_dim: int = 0
    """Task-embedding size (0: single-task, no embedding)."""
    variant: Variant = "simnorm"
    """Latent heads: 'simnorm' (default), 'mish' (no SimNorm) or 'relu' (plain ReLU MLPs)."""

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise unknown_choice("world-model variant", self.variant, VARIANTS)
        if self.latent_dim <= 0 or self.latent_dim % self.simnorm_dim:
            raise UsageError(
                f"latent_dim {self.latent_dim} must be a positive multiple of simnorm_dim {self.simnorm_dim}"
            )
        if self.num_bins == 1 or self.num_bins < 0:
            raise UsageError(f"num_bins must be 0 (scalar reward) or at least 2, got {self.num_bins}")
        if self.num_q and not self.num_bins:
            raise UsageError("a Q ensemble needs num_bins > 0 (two-hot value regression)")
        if self.task_dim < 0 or self.num_tasks < 1:
            raise UsageError("task_dim must be >= 0 and num_tasks >= 1")


def _tdmpc2_size(enc_dim: int, mlp_dim: int, latent: int, enc_layers: int, num_q: int) -> dict[str, Any]:
    return {
        "latent_dim": latent,
        "enc_hidden": (enc_dim,) * max(enc_layers - 1, 1),
        "mlp_hidden": (mlp_dim, mlp_dim),
        "num_bins": 101,
        "num_q": num_q,
        "policy_prior": True,
    }


MODEL_SIZES: dict[str, dict[str, Any]] = {
    # PWM's single-task dflex model: scalar reward, no Q or π (about 1.5 M parameters)
    "pwm": {"latent_dim": 512, "enc_hidden": (256,), "mlp_hidden": (512, 512), "num_bins": 0, "num_q": 0},
    # TD-MPC2's sizes (full agent: 101-bin reward and Qs, policy prior)
    "1M": _tdmpc2_size(256, 384, 128, 2, 2),
    "5M": _tdmpc2_size(256, 512, 512, 2, 5),
    "19M": _tdmpc2_size(1024, 1024, 768, 3, 5),
    "48M": _tdmpc2_size(1792, 1792, 768, 4, 5),
}
"""Named architectures: ``WorldModelConfig(**MODEL_SIZES[name])``."""


def model_config(size: str, **overrides: Any) -> WorldModelConfig:
    """The config of a named size (see :data:`MODEL_SIZES`) with field overrides."""
    if size not in MODEL_SIZES:
        raise unknown_choice("world-model size", size, list(MODEL_SIZES))
    cfg = WorldModelConfig(**{**MODEL_SIZES[size], **overrides})
    cfg.validate()
    return cfg


def sized_config(
    size: str,
    *,
    latent_dim: int | None = None,
    mlp_dim: int | None = None,
    enc_dim: int | None = None,
    **overrides: Any,
) -> WorldModelConfig:
    """:func:`model_config` of a named size with its widths optionally changed (same layer counts)."""
    base = MODEL_SIZES.get(size, {})
    if latent_dim is not None:
        overrides["latent_dim"] = latent_dim
    if mlp_dim is not None:
        overrides["mlp_hidden"] = (mlp_dim,) * len(base.get("mlp_hidden", (0, 0)))
    if enc_dim is not None:
        overrides["enc_hidden"] = (enc_dim,) * len(base.get("enc_hidden", (0,)))
    return model_config(size, **overrides)


class WorldModel(nn.Module):
    """Encoder, latent dynamics and reward (plus optional Q ensemble, policy prior, task embedding).

    Args:
        obs_dim: observation size O.
        act_dim: action size A.
        cfg: architecture.
    """

    def __init__(self, obs_dim: int, act_dim: int, cfg: WorldModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or WorldModelConfig()
        cfg.validate()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        L, T, v = cfg.latent_dim, cfg.task_dim, cfg.variant
        kw = {"variant": v, "simnorm_dim": cfg.simnorm_dim}
        self.task_emb = nn.Embedding(cfg.num_tasks, T, max_norm=1.0) if T > 0 else None
        self.encoder = build_mlp(obs_dim + T, cfg.enc_hidden, L, head="latent", **kw)
        self.dynamics = build_mlp(L + act_dim + T, cfg.mlp_hidden, L, head="latent", **kw)
        self.reward_head = build_mlp(L + act_dim + T, cfg.mlp_hidden, max(cfg.num_bins, 1), head="linear", **kw)
        self.qs = nn.ModuleList(
            build_mlp(L + act_dim + T, cfg.mlp_hidden, cfg.num_bins, head="linear", dropout=cfg.q_dropout, **kw)
            for _ in range(cfg.num_q)
        )
        self.pi = build_mlp(L + T, cfg.mlp_hidden, 2 * act_dim, head="linear", **kw) if cfg.policy_prior else None
        self.term_head = build_mlp(L + T, cfg.mlp_hidden, 1, head="linear", **kw) if cfg.termination else None
        # reward units of a scalar head: it predicts clamp((r - shift) / scale, ±clip) (set before pretraining)
        self.register_buffer("reward_shift", torch.zeros(()))
        self.register_buffer("reward_scale", torch.ones(()))
        self.register_buffer("reward_clip", torch.full((), math.inf))
        self.reset_parameters()

    @torch.no_grad()
    def set_reward_stats(self, shift: float, scale: float, clip: float = math.inf) -> None:
        """Fix the reward units of a scalar head: it predicts ``clamp((r - shift) / scale, ±clip)``."""
        if not scale > 0 or not clip > 0:
            raise ValueError(f"reward scale and clip must be positive, got {scale} and {clip}")
        self.reward_shift.fill_(float(shift))
        self.reward_scale.fill_(float(scale))
        self.reward_clip.fill_(float(clip))

    def reward_target(self, reward: torch.Tensor) -> torch.Tensor:
        """Env rewards ``(...)`` in the units the reward head is trained on (two-hot heads: unchanged)."""
        if self.cfg.num_bins:
            return reward
        return torch.maximum(
            torch.minimum((reward - self.reward_shift) / self.reward_scale, self.reward_clip), -self.reward_clip
        )

    def reward_to_env(self, reward: torch.Tensor) -> torch.Tensor:
        """Model rewards ``(...)`` back in env units (inverse of :meth:`reward_target` inside the clip)."""
        if self.cfg.num_bins:
            return reward
        return reward * self.reward_scale + self.reward_shift

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """TD-MPC2 init: linear weights N(0, 0.02²), zero biases, zero last reward/Q weights."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.uniform_(m.weight, -0.02, 0.02)
        for head in [self.reward_head, *self.qs]:
            _last_linear(head).weight.zero_()

    # -- components -------------------------------------------------------------------------------

    def _cat(self, parts: list[torch.Tensor], task: torch.Tensor | None) -> torch.Tensor:
        if self.task_emb is not None:
            if task is None:
                raise ValueError("multi-task world model: pass the task ids")
            e = self.task_emb(task)
            parts.append(e.expand(*parts[0].shape[:-1], e.shape[-1]))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def encode(self, obs: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``(..., L)`` of observations ``(..., O)``."""
        return self.encoder(self._cat([obs], task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Next latent ``(..., L)`` from latent ``(..., L)`` and action ``(..., A)``."""
        return self.dynamics(self._cat([z, a], task))

    def reward_logits(self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Raw reward-head output ``(..., K)`` (``K = 1`` for a scalar reward)."""
        return self.reward_head(self._cat([z, a], task))

    def reward(
        self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None, symlog_space: bool = False
    ) -> torch.Tensor:
        """Predicted reward ``(...)`` in model units (see :meth:`reward_target`), differentiable.

        Two-hot models decode the expected value (raw units, or symlog units with ``symlog_space``).
        """
        out = self.reward_logits(z, a, task)
        if self.cfg.num_bins == 0:
            return out.squeeze(-1)
        return two_hot_inv(out, self.cfg.vmin, self.cfg.vmax, symlog_space=symlog_space)

    def q_logits(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        task: torch.Tensor | None = None,
        heads: Sequence[nn.Module] | None = None,
    ) -> torch.Tensor:
        """Logits ``(num_q, ..., K)`` of all Q heads (or of ``heads``, e.g. target copies of :attr:`qs`)."""
        heads = self.qs if heads is None else heads
        if not heads:
            raise ValueError("this world model has no Q ensemble (num_q = 0)")
        x = self._cat([z, a], task)
        return torch.stack([q(x) for q in heads])

    def termination_logit(self, z: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Logit ``(...)`` of the probability that the transition into latent ``z (..., L)`` ended the episode."""
        if self.term_head is None:
            raise ValueError("this world model has no termination head (termination = False)")
        return self.term_head(self._cat([z], task)).squeeze(-1)

    def policy_dist(self, z: torch.Tensor, task: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy prior's pre-tanh Gaussian: mean and log std, each ``(..., A)``.

        ``log_std = min + (max - min) (tanh(x) + 1) / 2`` as in TD-MPC2.
        """
        if self.pi is None:
            raise ValueError("this world model has no policy prior (policy_prior = False)")
        mean, x = self.pi(self._cat([z], task)).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        return mean, lo + 0.5 * (hi - lo) * (torch.tanh(x) + 1.0)

    def policy(
        self, z: torch.Tensor, task: torch.Tensor | None = None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy prior: ``tanh``-squashed action ``(..., A)`` (a sample, or ``tanh(mean)``) and the mean."""
        mean, log_std = self.policy_dist(z, task)
        if deterministic:
            return torch.tanh(mean), mean
        return torch.tanh(mean + torch.randn_like(mean) * log_std.exp()), mean


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# losses


def rho_weights(horizon: int, rho: float, device: Any = None) -> torch.Tensor:
    """Per-step weights ``ρ^t`` for ``t = 0..H-1`` ``(H,)``."""
    return rho ** torch.arange(horizon, dtype=torch.float32, device=device)


def _batch_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(H, B)`` → ``(H,)``: the mean over the batch, masked entries counting as 0 (a partial window's
    steps past its episode's end); with a mask of ones it is the plain mean."""
    return x.mean(dim=1) if mask is None else (x * mask).sum(dim=1) / x.shape[1]


def consistency_loss(
    z_pred: torch.Tensor, z_target: torch.Tensor, rho: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``Σ_t ρ^t MSE(ẑ_{t+1}, z⁺_t) / H`` over predicted and target latents ``(H, B, L)``; ``mask (H, B)``
    zeroes the steps of partial windows past their episode's end.

    The target is detached here (stop-gradient), as in TD-MPC2 and PWM.
    """
    sq = (z_pred - z_target.detach()).square()
    mse = sq.mean(dim=(1, 2)) if mask is None else _batch_mean(sq.mean(dim=2), mask)
    return (rho_weights(z_pred.shape[0], rho, z_pred.device) * mse).sum() / z_pred.shape[0]


def reward_loss(
    model: WorldModel, pred: torch.Tensor, target: torch.Tensor, rho: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``Σ_t ρ^t mean_B ℓ(R_t, r_t) / H`` for reward-head outputs ``(H, B, K)`` and rewards ``(H, B)``;
    ``mask (H, B)`` as in :func:`consistency_loss`.

    ``ℓ`` is the squared error for a scalar head and the soft cross-entropy for a two-hot head.
    """
    cfg = model.cfg
    if cfg.num_bins == 0:
        per = _batch_mean((pred.squeeze(-1) - target).square(), mask)
    else:
        per = _batch_mean(soft_ce(pred, target, cfg.vmin, cfg.vmax), mask)
    return (rho_weights(pred.shape[0], rho, pred.device) * per).sum() / pred.shape[0]


@dataclasses.dataclass
class ModelLosses:
    """Scalar losses of one world-model batch (``total`` carries the gradient)."""

    total: torch.Tensor
    consistency: torch.Tensor
    reward: torch.Tensor
    termination: torch.Tensor | None = None


def world_model_loss(
    model: WorldModel,
    obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    *,
    rho: float = 0.99,
    consistency_coef: float = 1.0,
    reward_coef: float = 1.0,
    task: torch.Tensor | None = None,
    terminated: torch.Tensor | None = None,
    termination_coef: float = 1.0,
    mask: torch.Tensor | None = None,
) -> ModelLosses:
    """Multi-step latent consistency and reward loss over sub-trajectories.

    The model rolls its own latent forward from ``h(o_0)`` with the dataset's actions; targets are
    ``h(o_{t+1})`` from the same (online) encoder without gradient. With ``C = Σ_t ρ^t MSE(ẑ_{t+1},
    z⁺_t) / H`` and ``R = Σ_t ρ^t mean_B ℓ(R_t, r_t) / H`` (rewards in the head's units,
    :meth:`WorldModel.reward_target`), the loss is ``consistency_coef · C + reward_coef · R``.
    PWM's reference loss ``[Σ_t ρ^t MSE_t + mean_t ρ^t (R_t − r_t)²] / H`` is ``consistency_coef = 1``,
    ``reward_coef = 1 / H`` with ``ρ = 0.99`` and H = 16; TD-MPC2 weighs them 20 and 0.1 with
    ``ρ = 0.5``. ``ModelLosses.consistency`` and ``.reward`` report ``C`` and ``R`` unweighted.

    Args:
        model: the world model.
        obs: ``(H+1, B, O)``.
        action: ``(H, B, A)``; ``action[t]`` was taken at ``obs[t]``.
        reward: ``(H, B)`` env rewards; ``reward[t]`` followed ``action[t]``.
        rho: per-step weight base.
        consistency_coef: weight of the consistency term.
        reward_coef: weight of the reward term.
        task: task ids ``(B,)`` of a multi-task model.
        terminated: ``(H, B)`` termination flags; with a model that has a termination head, adds
            ``termination_coef ×`` the binary cross-entropy of its predictions on the rolled-out latents.
        mask: ``(H, B)`` 1 on the steps inside the episode, for partial windows (every term counts
            the steps past an episode's end as 0); None: every step counts.
    """
    horizon = action.shape[0]
    with torch.no_grad():
        targets = model.encode(obs[1:], task)
    z = model.encode(obs[0], task)
    zs, logits = [], []
    for t in range(horizon):
        logits.append(model.reward_logits(z, action[t], task))
        z = model.next(z, action[t], task)
        zs.append(z)
    cons = consistency_loss(torch.stack(zs), targets, rho, mask)
    rew = reward_loss(model, torch.stack(logits), model.reward_target(reward), rho, mask)
    total = consistency_coef * cons + reward_coef * rew
    term = None
    if model.term_head is not None and terminated is not None:
        logit = model.termination_logit(torch.stack(zs), task)
        if mask is None:
            term = F.binary_cross_entropy_with_logits(logit, terminated.float())
        else:
            term = (F.binary_cross_entropy_with_logits(logit, terminated.float(), reduction="none") * mask).mean()
        total = total + termination_coef * term
        term = term.detach()
    return ModelLosses(total, cons.detach(), rew.detach(), term)


__all__ = [
    "MODEL_SIZES",
    "VARIANTS",
    "ModelLosses",
    "NormedLinear",
    "SimNorm",
    "WorldModel",
    "WorldModelConfig",
    "bin_centers",
    "build_mlp",
    "consistency_loss",
    "model_config",
    "parameter_count",
    "reward_loss",
    "rho_weights",
    "sized_config",
    "soft_ce",
    "symexp",
    "symlog",
    "two_hot",
    "two_hot_inv",
    "world_model_loss",
]
