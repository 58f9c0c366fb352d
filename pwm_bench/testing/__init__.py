"""Testing helpers users can call on their own code: finite-difference gradient checks.

Every differentiable path of pwm-bench (environments, world models, losses) is checked with
:func:`fd_gradient_check`, which compares autograd's gradient of a scalar function with central
finite differences along random directions (or along every coordinate for small inputs).
:func:`env_gradient_check` applies it to a differentiable environment: a rollout of a few control
steps from the env's current state, differentiated with respect to the actions and/or that state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass
class GradCheckReport:
    """Result of :func:`fd_gradient_check`.

    Attributes:
        analytic: directional derivatives from autograd, shape ``(K,)``.
        numeric: the same from central differences, shape ``(K,)``.
        max_abs_error: ``max |analytic - numeric|``.
        max_rel_error: ``max |analytic - numeric| / max(|analytic|, |numeric|, atol)``.
        cosine: cosine similarity of the vectors ``analytic`` and ``numeric`` (1 = same direction).
        rel_error: ``||analytic - numeric|| / max(||numeric||, atol)`` over all directions; less
            sensitive than ``max_rel_error`` to a direction whose derivative happens to be near zero.
    """

    analytic: torch.Tensor
    numeric: torch.Tensor
    max_abs_error: float
    max_rel_error: float
    cosine: float = float("nan")
    rel_error: float = float("nan")

    def __str__(self) -> str:
        return (
            f"GradCheckReport(max_rel_error={self.max_rel_error:.3e}, max_abs_error={self.max_abs_error:.3e}, "
            f"rel_error={self.rel_error:.3e}, cosine={self.cosine:.6f}, "
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
    cosine = float(torch.nn.functional.cosine_similarity(a, n, dim=0, eps=1e-30))
    rel_norm = float((a - n).norm() / max(float(n.norm()), atol))
    return GradCheckReport(a, n, float(err.max()), float(rel.max()), cosine, rel_norm)


def env_gradient_check(
    env: Any,
    *,
    steps: int = 1,
    wrt: str = "actions",
    eps: float = 1e-3,
    n_directions: int = 8,
    action_scale: float = 0.5,
    seed: int = 0,
) -> GradCheckReport:
    """Finite-difference check of a differentiable env's gradients over a ``steps``-step rollout.

    From the env's current state, ``steps`` control steps are taken with fixed random actions
    (uniform in ``[-action_scale, action_scale]``). The scalar checked is
    ``sum_t <w_t, reward_t> + <W, obs_T>`` with fixed random weights, so every reward and every
    observation entry of the last step matters. Its derivative is compared with central differences
    along ``n_directions`` random unit directions of the inputs chosen by ``wrt``.

    The env must be built with ``differentiable=True`` and provide ``get_state()``,
    ``set_state(state)`` and ``resets_suspended()`` (the Warp envs do): worlds are not reset during
    the check, so an early termination inside the window does not cut the function. The env's state
    is restored afterwards. Warp simulates in float32; the scalar is accumulated in float64.

    Args:
        env: a differentiable env (:class:`~pwm_bench.envs.locomotion.WarpArticulationEnv`).
        steps: rollout length in control steps.
        wrt: ``"actions"`` (all actions of the window), ``"state"`` (the incoming ``q`` and ``qd``)
            or ``"both"``.
        eps: finite-difference step along a unit direction of the whole input.
        n_directions: number of random directions.
        action_scale: magnitude of the random actions.
        seed: seed of the actions, weights and directions.

    Returns:
        A :class:`GradCheckReport` (``max_rel_error`` and ``cosine`` are the usual pass criteria).
    """
    if not getattr(env, "differentiable", False):
        raise ValueError(f"env {getattr(env, 'name', env)!r} was not built with differentiable=True")
    if wrt not in ("actions", "state", "both"):
        raise ValueError(f"wrt must be one of actions, state, both; got {wrt!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, a_dim, dev = env.num_envs, env.act_dim, env.device
    state0 = env.get_state()
    nq, nqd = state0["q"].shape[1], state0["qd"].shape[1]
    actions = ((torch.rand(steps, n, a_dim, generator=gen) * 2 - 1) * action_scale).to(dev)
    w_rew = torch.randn(steps, n, generator=gen).to(dev)
    w_obs = torch.randn(n, env.obs_dim, generator=gen).to(dev)
    n_act = actions.numel()

    def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        acts, q, qd = actions, state0["q"], state0["qd"]
        off = 0
        if wrt in ("actions", "both"):
            acts = x[:n_act].reshape(actions.shape).float()
            off = n_act
        if wrt in ("state", "both"):
            q = x[off : off + n * nq].reshape(n, nq).float()
            qd = x[off + n * nq :].reshape(n, nqd).float()
        return acts, q, qd

    def fn(x: torch.Tensor) -> torch.Tensor:
        acts, q, qd = unpack(x)
        env.set_state({**state0, "q": q, "qd": qd})
        total = torch.zeros((), dtype=torch.float64, device=dev)
        obs = None
        with env.resets_suspended():
            for t in range(steps):
                obs, reward, *_ = env.step(acts[t])
                total = total + (reward.double() * w_rew[t]).sum()
        assert obs is not None
        return total + (obs.double() * w_obs).sum()

    parts = []
    if wrt in ("actions", "both"):
        parts.append(actions.reshape(-1))
    if wrt in ("state", "both"):
        parts += [state0["q"].reshape(-1), state0["qd"].reshape(-1)]
    x0 = torch.cat(parts).double()
    try:
        with torch.enable_grad():
            return fd_gradient_check(fn, x0, eps=eps, n_directions=n_directions, atol=1e-6, seed=seed)
    finally:
        env.set_state(state0)


__all__ = ["GradCheckReport", "env_gradient_check", "fd_gradient_check"]
