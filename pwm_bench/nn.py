"""Small network building blocks shared by the algorithms."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU, "mish": nn.Mish}


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
