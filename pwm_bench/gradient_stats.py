"""Statistics of stochastic gradients: variance and expected signal-to-noise ratio (ESNR).

The PWM paper compares first-order gradients through a simulator and through world models by
their variance and ESNR over the policy's noise. :func:`gradient_stats` estimates both for any
differentiable loss whose randomness is drawn inside ``loss_fn``::

    stats = gradient_stats(lambda i: -rollout_return(env, policy, horizon=h, seed=i), policy.parameters(), 100)
    stats.variance, stats.esnr

Definitions (per parameter over the samples, then averaged over the parameters):
``Var = mean_p var_s(g[s, p])`` (unbiased sample variance) and
``ESNR = mean_p E_s[g]² / (var_s(g) + eps)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch


@dataclasses.dataclass
class GradientStats:
    """Gradient statistics over samples.

    Attributes:
        grads: ``(S, P)`` the per-sample gradients, flattened over all parameters (float64, CPU).
        mean: ``(P,)`` the sample mean per parameter.
        var: ``(P,)`` the unbiased sample variance per parameter.
        variance: mean of ``var`` over the parameters.
        esnr: mean over the parameters of ``mean² / (var + eps)``.
    """

    grads: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    variance: float
    esnr: float


def stats_of(grads: torch.Tensor, eps: float = 1e-9) -> GradientStats:
    """:class:`GradientStats` of recorded gradients ``grads (S, P)`` (S >= 2)."""
    if grads.ndim != 2 or grads.shape[0] < 2:
        raise ValueError(f"need gradients of shape (samples >= 2, params), got {tuple(grads.shape)}")
    g = grads.detach().to("cpu", torch.float64)
    mean, var = g.mean(0), g.var(0, unbiased=True)
    return GradientStats(g, mean, var, float(var.mean()), float((mean**2 / (var + eps)).mean()))


def gradient_stats(
    loss_fn: Callable[[int], torch.Tensor],
    params: Iterable[torch.nn.Parameter],
    samples: int,
    eps: float = 1e-9,
) -> GradientStats:
    """Gradient of ``loss_fn(i)`` w.r.t. ``params`` for ``i = 0 .. samples-1``, and its statistics.

    Args:
        loss_fn: ``loss_fn(i) -> scalar tensor``; sample ``i`` draws its own randomness (seed it
            with ``i`` for reproducible statistics). Parameters it does not reach get gradient 0.
        params: the parameters (e.g. ``policy.parameters()``).
        samples: number of samples S (at least 2).
        eps: added to the variance in the ESNR's denominator.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires a gradient")
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    rows = []
    for i in range(samples):
        loss = loss_fn(i)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
            )
        )
    return stats_of(torch.stack(rows), eps)


__all__ = ["GradientStats", "gradient_stats", "stats_of"]
