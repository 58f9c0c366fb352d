"""Testing helpers users can call on their own code: finite-difference gradient checks.

Every differentiable path of pwm-bench (environments, world models, losses) is checked with
:func:`fd_gradient_check`, which compares autograd's gradient of a scalar function with central
finite differences along random directions (or along every coordinate for small inputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass
class GradCheckReport:
    """Result of :func:`fd_gradient_check`.

    Attributes:
        analytic: directional derivatives from autograd, shape ``(K,)``.
        numeric: the same from central differences, shape ``(K,)``.
        max_abs_error: ``max |analytic - numeric|``.
        max_rel_error: ``max |analytic - numeric| / max(|analytic|, |numeric|, atol)``.
    """

    analytic: torch.Tensor
    numeric: torch.Tensor
    max_abs_error: float
    max_rel_error: float

    def __str__(self) -> str:
        return (
            f"GradCheckReport(max_rel_error={self.max_rel_error:.3e}, max_abs_error={self.max_abs_error:.3e}, "
            f"analytic={self.analytic.tolist()}, numeric={self.numeric.tolist()})"
        )


def fd_gradient_check(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eps: float = 1e-3,
    n_directions: int | None = 16,
    atol: float = 1e-6,
    seed: int = 0,
) -> GradCheckReport:
    """Compare the autograd gradient of scalar ``fn`` at ``x`` with central finite differences.

    Args:
        fn: maps a tensor shaped like ``x`` to a scalar tensor; must be deterministic.
        x: the point of the check (any shape; float64 gives the tightest comparison).
        eps: finite-difference step, in the units of ``x``.
        n_directions: number of random unit directions ``v`` along which ``<grad, v>`` is compared
            with ``(fn(x + eps v) - fn(x - eps v)) / (2 eps)``; ``None`` checks every coordinate.
        atol: floor of the denominator of the relative error (ignores derivatives near zero).
        seed: seed of the random directions.

    Returns:
        A :class:`GradCheckReport`; assert on ``max_rel_error`` with a tolerance that fits the
        function (near-exact for smooth float64 code, looser through contacts).
    """
    x = x.detach()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(xg), xg)
    if n_directions is None:
        dirs = torch.eye(x.numel(), dtype=x.dtype, device=x.device).reshape(-1, *x.shape)
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        dirs = torch.randn(n_directions, *x.shape, generator=gen, dtype=x.dtype).to(x.device)
        dirs = dirs / dirs.flatten(1).norm(dim=1).reshape(-1, *([1] * x.dim()))
    analytic, numeric = [], []
    with torch.no_grad():
        for v in dirs:
            analytic.append(float((grad * v).sum()))
            numeric.append(float((fn(x + eps * v) - fn(x - eps * v)) / (2 * eps)))
    a, n = torch.tensor(analytic, dtype=torch.float64), torch.tensor(numeric, dtype=torch.float64)
    err = (a - n).abs()
    rel = err / torch.maximum(torch.maximum(a.abs(), n.abs()), torch.tensor(atol, dtype=torch.float64))
    return GradCheckReport(a, n, float(err.max()), float(rel.max()))


__all__ = ["GradCheckReport", "fd_gradient_check"]
