"""Small network building blocks shared by the algorithms."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn


class _MishFunction(torch.autograd.Function):
    """``x · tanh(softplus(x))`` and its derivative from one ``exp``.

    With ``e = exp(x)`` and ``n = e (e + 2)``, ``tanh(softplus(x)) = n / (n + 2)``, and
    ``d/dx mish(x) = t + x σ(x) (1 - t²)`` with ``t = tanh(softplus(x))``. PyTorch's CPU kernels
    evaluate ``tanh``, ``log1p`` and ``exp`` separately in the forward and again in the backward
    (about 12 ns per element on one core, 36 % of a world-model update); this form keeps ``t`` for
    the backward and runs in about half the time. ``x`` is clamped at 20 inside the ``exp``, where
    ``t`` is 1 in float32 and float64 alike, so large inputs neither overflow nor lose the identity.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        e = torch.exp(x.clamp(max=20.0))
        n = e * (e + 2.0)
        t = n / (n + 2.0)
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, t = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (t + x * torch.sigmoid(x) * (1.0 - t * t))


class Mish(nn.Module):
    """Mish, ``x · tanh(softplus(x))``, as :class:`torch.nn.Mish` computes it (to float rounding:
    within 2e-6 of it in float32, values and gradients), about twice as fast on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise Mish of ``x`` (any shape)."""
        return _MishFunction.apply(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU, "mish": Mish}


def adam(
    params: Iterable[torch.Tensor] | Iterable[dict],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel where the parameters' device has one (CPU, CUDA).

    The default single-tensor Adam launches about ten elementwise ops per parameter tensor and step;
    for small networks on a CPU that was 15 % of a PWM epoch. The fused kernel computes the same
    update in one pass (equal to float rounding). A checkpoint of a run that used the
    single-tensor path restores it (``load_state_dict`` takes the saved ``fused`` flag).
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=fused or None)


def clip_grad_norm_(
    params: Iterable[torch.Tensor], max_norm: float, *, nonfinite_to_zero: bool = False
) -> torch.Tensor:
    """Clip the gradients' total 2-norm to ``max_norm`` in place and return the norm before clipping.

    ``nonfinite_to_zero`` first replaces NaN and ±inf gradient entries by 0, but only when the norm
    is not finite: the result is the same as zeroing them entry by entry before every clip, without
    an elementwise pass over every parameter on every step. Same numbers as
    :func:`torch.nn.utils.clip_grad_norm_` otherwise.
    """
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    if not grads:
        return torch.zeros(())
    norm = nn.utils.get_total_norm(grads)
    if nonfinite_to_zero and not torch.isfinite(norm):
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        norm = nn.utils.get_total_norm(grads)
    nn.utils.clip_grads_with_norm_(with_grad, max_norm, norm)
    return norm


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str = "tanh",
    *,
    out_gain: float = 1.0,
) -> nn.Sequential:
    """MLP ``in_dim -> hidden... -> out_dim`` with orthogonal init.

    Hidden layers use gain sqrt(2) and zero bias; the output layer uses ``out_gain`` (small values,
    e.g. 0.01, make a policy start near zero mean).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in itertools.pairwise(dims):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, gain=2**0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin, ACTIVATIONS[activation]()]
    out = nn.Linear(dims[-1], out_dim)
    nn.init.orthogonal_(out.weight, gain=out_gain)
    nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


def ln_mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "elu", *, orthogonal: bool = False
) -> nn.Sequential:
    """DiffRL/PWM MLP: ``Linear → activation → LayerNorm`` per hidden layer, then a linear head.

    ``orthogonal`` re-initialises every linear layer with gain √2 and zero bias (DiffRL's and PWM's
    critics); otherwise PyTorch's default init is kept (their stochastic actors).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation](), nn.LayerNorm(b)]
    layers.append(nn.Linear(dims[-1], out_dim))
    if orthogonal:
        for m in layers:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=2**0.5)
                nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (float64 buffers, saved in state_dict).

    Args:
        shape: shape of one sample (``()`` for scalars).
        clip: normalised values are clamped to ``[-clip, clip]``.
        eps: added to the variance before the square root.
    """

    def __init__(self, shape: Sequence[int] = (), clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(tuple(shape), dtype=torch.float64))
        self.register_buffer("var", torch.ones(tuple(shape), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip = clip
        self.eps = eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``(B, *shape)`` into the statistics (parallel-variance formula)."""
        x = x.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean += delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta.square() * self.count * b_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``, clamped; same dtype as ``x``; differentiable in ``x``."""
        mean, std = self.mean.to(x.dtype), (self.var + self.eps).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (without the clamp)."""
        return x * (self.var + self.eps).sqrt().to(x.dtype) + self.mean.to(x.dtype)


class NormalizedPolicy:
    """Base of the trained policies: optional running observation normalisation before the actor."""

    def __init__(self, obs_rms: RunningMeanStd | None) -> None:
        self.obs_rms = obs_rms

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations ``(N, O)`` in the units the networks see."""
        return self.obs_rms.normalize(obs) if self.obs_rms is not None else obs
