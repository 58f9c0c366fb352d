"""The PWM paper's "smooth surrogate" toys: a ball thrown at a wall.

**Optimality gap** (``pwm-bench plot optimality-gap``). The launch angle θ ∈ [-π, π] of a ball
(speed 10 m/s, an extra horizontal acceleration of 1 m/s², gravity 9.81 m/s², 2 s) decides how far
it gets; a wall 5 m away stops it when the ball reaches the wall below its top (height 0) within
the 2 s. ``J(θ) = -x`` is minimised: J* = -21.850 at θ ≈ 0.123 rad, and a plateau at J = -5 (the
ball stuck at the wall) has zero gradient. Models of J regressed on a 1000-point grid are then
optimised instead of J.

- ``protocol="reference"`` repeats the paper's script: a Mish + LayerNorm MLP (labelled "ReLU" in
  the paper) and a SimNorm MLP, trained with torch seed 0 (Adam 2e-3, 100 epochs of 17 batches of 56
  random grid points, MSE), with the reference's quirks kept: the SimNorm model's decoder gradients
  are never zeroed between steps (its ``zero_grad`` covers the encoder only); the true row is the
  fixed grid index 328 (a point on the plateau where gradient descent stalls); the "ReLU" row takes
  the argmin of the model over the first half of the grid only; and both model rows report the
  model's own predicted value there, not the true J. It gives the published table exactly.
- ``protocol="fair"`` drops those choices: each model (the true J, an MLP that really uses ReLU,
  the Mish + LayerNorm MLP, SimNorm) is trained per seed with every gradient zeroed, then handed to
  gradient descent (Adam) from many start angles drawn per seed; the gap is the *true* J at the returned
  angle minus J*, averaged over the starts, reported over seeds as mean and 95 % CI.

**Stochastic smoothing** (``pwm-bench plot wall-toy``). A ball thrown at angle θ with 10 m/s
under g = 10 m/s² flies for 2 s; a wall 5 m away and 2 m high catches it (it sticks) when the ball
reaches the wall below its top. The objective is the distance x reached (maximised). Without
noise the landscape has a jump at the wall's top and zero gradient on the stuck plateau; under
Gaussian noise on θ (a stochastic policy) the expected objective is smooth, and its gradient (what
a zeroth-order method estimates) is informative where the true gradient is zero or misleading.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pwm_bench.world_model import NormedLinear, SimNorm

# --------------------------------------------------------------------------------------------------
# the objective of the optimality-gap toy


@dataclasses.dataclass(frozen=True)
class Throw:
    """A throw at a wall: speed ``v`` [m/s], extra horizontal acceleration ``a`` [m/s²] (0 allowed),
    gravity ``g`` [m/s², positive down], duration ``t`` [s], wall distance ``wall`` [m] and height
    ``height`` [m]."""

    v: float = 10.0
    a: float = 1.0
    g: float = 9.81
    t: float = 2.0
    wall: float = 5.0
    height: float = 0.0
    a_wall_factor: float = 1.0
    """Time to reach the wall solves ``a/2 t² + v cosθ t = wall``, i.e. ``t = (-v cosθ + √(v² cos²θ
    + 2 a wall)) / a``; the paper's script writes ``a·wall`` instead of ``2 a wall`` (factor 0.5)."""

    def distance(self, theta: torch.Tensor) -> torch.Tensor:
        """Horizontal position [m] after ``t`` seconds, for launch angles ``theta`` [rad] (any shape)."""
        free = self.v * torch.cos(theta) * self.t + 0.5 * self.a * self.t**2
        return torch.where(self.stuck(theta), torch.full_like(free, self.wall), free)

    def time_to_wall(self, theta: torch.Tensor) -> torch.Tensor:
        """Time [s] at which the ball's horizontal position reaches the wall (inf if never)."""
        c = torch.cos(theta)
        if self.a != 0:
            disc = (self.v * c) ** 2 + 2 * self.a_wall_factor * self.a * self.wall
            return (-self.v * c + disc**0.5) / self.a
        # uniform horizontal motion: only throws toward the wall reach it
        return torch.where(c > 0, self.wall / (self.v * c.clamp_min(1e-9)), torch.full_like(c, math.inf))

    def stuck(self, theta: torch.Tensor) -> torch.Tensor:
        """Whether the wall stops the throw: it reaches the wall within ``t``, below its top."""
        t_wall = self.time_to_wall(theta)
        y_wall = self.v * torch.sin(theta) * t_wall - self.g / 2 * t_wall**2
        return (y_wall < self.height) & (t_wall < self.t)


GAP_THROW = Throw(a_wall_factor=0.5)
"""The optimality-gap toy exactly as the paper's script computes it."""
GRID_POINTS = 1000
REFERENCE_TRUE_INDEX = 328
"""The paper's hard-coded grid index for the true row (θ ≈ -1.079 rad, on the plateau)."""


def gap_objective(theta: torch.Tensor) -> torch.Tensor:
    """``J(θ) = -x(θ)`` of the optimality-gap toy (to be minimised)."""
    return -GAP_THROW.distance(theta)


def grid() -> tuple[torch.Tensor, torch.Tensor]:
    """``(θ (1000,), J(θ) (1000,))`` on the uniform grid over [-π, π]."""
    theta = torch.linspace(-math.pi, math.pi, GRID_POINTS)
    return theta, gap_objective(theta)


# --------------------------------------------------------------------------------------------------
# models of J


class _Composed(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def make_model(kind: str) -> nn.Module:
    """A model of J mapping ``(N, 1)`` angles to ``(N, 1)`` values, created with torch's default init
    (in the layer order of the paper's script, so a seed gives the same weights):

    - ``mish``: Linear → LayerNorm → Mish, twice (32 units), then Linear (the paper's "ReLU" row);
    - ``relu``: Linear → ReLU, twice (32 units), then Linear (a real ReLU MLP);
    - ``simnorm``: Linear → LayerNorm → Mish (32), Linear → LayerNorm → SimNorm(8) (32), then a
      Linear decoder.
    """
    if kind == "mish":
        return nn.Sequential(NormedLinear(1, 32, nn.Mish()), NormedLinear(32, 32, nn.Mish()), nn.Linear(32, 1))
    if kind == "relu":
        return nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    if kind == "simnorm":
        encoder = nn.Sequential(NormedLinear(1, 32, nn.Mish()), NormedLinear(32, 32, SimNorm(8)))
        return _Composed(encoder, nn.Sequential(nn.Linear(32, 1)))
    raise ValueError(f"unknown model kind {kind!r}")


def train_model(
    kind: str, seed: int, *, reference_quirks: bool = False, epochs: int = 100, batch: int = 56, lr: float = 2e-3
) -> nn.Module:
    """Regress J on the grid: Adam, MSE, ``epochs`` × (1000 // batch) steps of ``batch`` random grid
    points (with replacement), torch seed ``seed`` for the init and the batches.

    ``reference_quirks``: for ``simnorm``, zero only the encoder's gradients between steps, so the
    decoder's accumulate (what the paper's script does).
    """
    theta, target = grid()
    torch.manual_seed(seed)
    model = make_model(kind)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    zero = model.encoder.zero_grad if (reference_quirks and kind == "simnorm") else model.zero_grad
    for _ in range(epochs):
        for _ in range(GRID_POINTS // batch):
            idx = torch.randint(0, GRID_POINTS, (batch,))
            loss = torch.mean((model(theta[idx].unsqueeze(1)) - target[idx].unsqueeze(1)) ** 2)
            zero()
            loss.backward()
            opt.step()
    return model.eval()


def predict(model: nn.Module, theta: torch.Tensor) -> torch.Tensor:
    """Model values ``(N,)`` at angles ``theta (N,)`` (no gradient)."""
    with torch.no_grad():
        return model(theta.unsqueeze(1)).flatten()


def model_error(model: nn.Module) -> float:
    """RMSE between the model and J over the grid."""
    theta, target = grid()
    return float(torch.sqrt(torch.mean((predict(model, theta) - target) ** 2)))


# --------------------------------------------------------------------------------------------------
# the reference protocol

REFERENCE_TABLE = {"true": (0.000, 16.850), "ReLU": (0.707, 16.046), "SimNorm": (1.131, 3.473)}
"""The paper's published table: model error / optimality gap."""


def reference_protocol(models: dict[str, nn.Module] | None = None) -> dict[str, dict[str, float]]:
    """The paper's rows ``{name: {model_error, gap, theta}}``, computed as its script does (the
    trained models go into ``models`` when given)."""
    theta, target = grid()
    best = float(target.min())
    rows = {"true": {"model_error": 0.0, "gap": float(target[REFERENCE_TRUE_INDEX]) - best}}
    rows["true"]["theta"] = float(theta[REFERENCE_TRUE_INDEX])
    for name, kind, half in (("ReLU", "mish", True), ("SimNorm", "simnorm", False)):
        model = train_model(kind, seed=0, reference_quirks=True)
        if models is not None:
            models[name] = model
        est = predict(model, theta)
        k = int(torch.argmin(est[: GRID_POINTS // 2] if half else est))
        rows[name] = {"model_error": model_error(model), "gap": float(est[k]) - best, "theta": float(theta[k])}
    return rows


# --------------------------------------------------------------------------------------------------
# the fair protocol

FAIR_MODELS = ("true", "relu", "mish", "simnorm")
FAIR_LABELS = {"true": "true J", "relu": "ReLU MLP", "mish": "Mish+LN MLP ('ReLU' in the paper)", "simnorm": "SimNorm"}


def descend(
    fn: Callable[[torch.Tensor], torch.Tensor], starts: torch.Tensor, steps: int = 500, lr: float = 0.02
) -> torch.Tensor:
    """Minimise ``fn`` with Adam (``lr`` [rad], ``steps`` steps) from every start angle at once,
    angles clamped to [-π, π]; returns the final angles ``(K,)``.

    Adam acts on each coordinate alone, so the K starts are K independent descents. Its step size
    is bounded by about ``lr`` however steep the model is: plain gradient steps bounce out of the
    narrow, steep dip that a regression puts where J jumps.
    """
    theta = starts.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        fn(theta).sum().backward()
        opt.step()
        with torch.no_grad():
            theta.clamp_(-math.pi, math.pi)
    return theta.detach()


def fair_protocol(
    seeds: Sequence[int] = tuple(range(10)), starts: int = 64, steps: int = 500, lr: float = 0.02, epochs: int = 100
) -> dict[str, Any]:
    """Per model: model error and the optimality gap (true J at the point gradient descent returns,
    minus J*, averaged over ``starts`` start angles drawn uniformly per seed), over ``seeds``.

    Returns ``{"per_seed": {model: [(error, gap), ...]}, "summary": {model: {...}}, "endpoints":
    {model: (starts, ends) of the first seed}, "models": {model: the first seed's trained model}}``;
    the summary gives mean and a 95 % Student-t CI over the seeds.
    """
    import scipy.stats

    _, target = grid()
    best = float(target.min())
    per_seed: dict[str, list[tuple[float, float]]] = {m: [] for m in FAIR_MODELS}
    endpoints: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first_models: dict[str, nn.Module] = {}
    for seed in seeds:
        gen = torch.Generator().manual_seed(10_000 + seed)
        start = (torch.rand(starts, generator=gen) * 2 - 1) * math.pi
        for m in FAIR_MODELS:
            if m == "true":
                fn, err = gap_objective, 0.0
            else:
                model = train_model(m, seed, epochs=epochs)
                err = model_error(model)
                for p in model.parameters():
                    p.requires_grad_(False)

                def fn(th: torch.Tensor, model: nn.Module = model) -> torch.Tensor:
                    return model(th.unsqueeze(1)).flatten()

            end = descend(fn, start, steps, lr)
            gap = float(gap_objective(end).mean()) - best
            per_seed[m].append((err, gap))
            if seed == seeds[0]:
                endpoints[m] = (start.numpy(), end.numpy())
                if m != "true":
                    first_models[m] = model
    summary = {}
    for m, rows in per_seed.items():
        errs, gaps = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        n = len(gaps)
        half = float(scipy.stats.t.ppf(0.975, n - 1) * gaps.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        summary[m] = {
            "model_error": float(errs.mean()),
            "gap_mean": float(gaps.mean()),
            "gap_ci": [float(gaps.mean()) - half, float(gaps.mean()) + half],
            "seeds": n,
        }
    return {"per_seed": per_seed, "summary": summary, "endpoints": endpoints, "models": first_models, "j_star": best}


# --------------------------------------------------------------------------------------------------
# the wall toy: stochastic smoothing

WALL_THROW = Throw(v=10.0, a=0.0, g=10.0, t=2.0, wall=5.0, height=2.0)
"""The talk's wall toy: 10 m/s, g = 10 m/s², 2 s, a wall 5 m away and 2 m high where the ball sticks."""
WALL_NOISE = (0.05, 0.1, 0.2)
"""Standard deviations [rad] of the Gaussian policy noise on θ."""


def smoothed(
    fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, sigma: float, points: int = 4001
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[f(θ + σε)], d/dθ E[f(θ + σε)])`` for ε ~ N(0, 1) at each angle of ``theta (N,)``.

    Both are integrals against the Gaussian density on a dense grid of ``points`` values of ε in
    [-5, 5] (Gauss-Hermite nodes would alias the jumps of ``f`` into steps). The derivative is the
    zeroth-order (score-function) form ``E[f(θ + σε) ε] / σ``: it needs no gradient of ``f`` and
    exists where ``f`` jumps.
    """
    eps = torch.linspace(-5.0, 5.0, points, dtype=theta.dtype)
    w = torch.exp(-0.5 * eps**2)
    w = w / w.sum()
    vals = fn(theta[:, None] + sigma * eps[None, :])
    return vals @ w, (vals * eps[None, :]) @ w / sigma


def wall_toy(points: int = 2001) -> dict[str, Any]:
    """The wall toy's landscape on ``points`` angles in [0, π/2]: the distance, its autograd
    gradient, and the expected distance and its gradient under each noise level of
    :data:`WALL_NOISE`; plus where each one's gradient ascent from θ = 0.2 rad ends."""
    theta = torch.linspace(0.0, math.pi / 2, points, dtype=torch.float64)
    th = theta.clone().requires_grad_(True)
    x = WALL_THROW.distance(th)
    (grad,) = torch.autograd.grad(x.sum(), th)
    out: dict[str, Any] = {"theta": theta.numpy(), "x": x.detach().numpy(), "grad": grad.numpy(), "smoothed": {}}
    for s in WALL_NOISE:
        mean, g = smoothed(WALL_THROW.distance, theta, s)
        out["smoothed"][s] = (mean.numpy(), g.numpy())
    stuck = WALL_THROW.stuck(theta).numpy()
    out["stuck"] = stuck
    out["stuck_share"] = float(stuck.mean())
    out["grad_on_plateau"] = float(np.abs(grad.numpy()[stuck]).max()) if stuck.any() else float("nan")
    out["ascent"] = _wall_ascent()
    return out


def _wall_ascent(start: float = 0.2, steps: int = 300, lr: float = 0.01) -> dict[str, float]:
    """Final distance of gradient ascent from ``start`` [rad] on the true landscape (first order)
    and on each smoothed one (zeroth-order gradient)."""
    res = {}
    th = torch.tensor([start], dtype=torch.float64, requires_grad=True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(WALL_THROW.distance(th).sum(), th)
        with torch.no_grad():
            th += lr * g
    res["first-order"] = float(WALL_THROW.distance(th.detach()))
    for s in WALL_NOISE:
        t = torch.tensor([start], dtype=torch.float64)
        for _ in range(steps):
            _, g = smoothed(WALL_THROW.distance, t, s)
            t = (t + lr * g).clamp(0.0, math.pi / 2)
        res[f"sigma={s}"] = float(WALL_THROW.distance(t))
    return res
