"""Muscle-tendon forces for articulated bodies (the dflex muscle law), as a differentiable Warp kernel.

No Warp-family solver applies muscle forces (Newton's muscle call is disabled), so pwm-bench adds
them itself, as body wrenches next to the ground contacts. The law is dflex's ``eval_muscles``
(linear, no Hill model): a muscle is a polyline of waypoints fixed on bodies; for every pair of
consecutive waypoints on **different** bodies, with world points ``p0`` (body ``i``) and ``p1`` (body
``j``) and unit direction ``n = (p1 - p0) / |p1 - p0|``, body ``i`` is pulled at ``p0`` by
``f = a n`` and body ``j`` at ``p1`` by ``-f``, where ``a`` [N] is the muscle's tension. Pairs on the
same body carry no force (via points act as frictionless pulleys). Every pair's two forces are
equal and opposite, so muscles change no total momentum.

Optionally (:class:`HillParams`, an upgrade that DiffRL does not have) the tension follows a
Hill-type force-length law: the activation is scaled by the active force-length curve of the
normalised fibre length, computed from the muscle's path length with a rigid tendon, and a passive
force resists stretching the fibres past their optimal length. There is no force-velocity term.

Wrenches are written in the convention of the contact kernel in :mod:`pwm_bench.envs.physics`
(Newton's ``body_f``): ``(force, torque about the body's centre of mass)``, world axes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pwm_bench.envs.physics import _warp

_KERNEL: dict[str, Any] = {}


def _pull() -> Any:
    """``pull_segments``: the Warp function that applies one muscle's tension to its segments."""
    if "pull" in _KERNEL:
        return _KERNEL["pull"]
    wp = _warp()

    @wp.func
    def pull_segments(
        body_q: wp.array(dtype=wp.transform),
        body_com: wp.array(dtype=wp.vec3),
        tension: float,
        first: int,
        last: int,
        point_body: wp.array(dtype=wp.int32),
        point_local: wp.array(dtype=wp.vec3),
        base: int,
        body_f: wp.array(dtype=wp.spatial_vector),
    ):
        for w in range(first, last):
            b0 = point_body[w]
            b1 = point_body[w + 1]
            if b0 == b1:
                continue
            i = base + b0
            j = base + b1
            X0 = body_q[i]
            X1 = body_q[j]
            p0 = wp.transform_point(X0, point_local[w])
            p1 = wp.transform_point(X1, point_local[w + 1])
            f = tension * wp.normalize(p1 - p0)
            r0 = p0 - wp.transform_point(X0, body_com[i])
            r1 = p1 - wp.transform_point(X1, body_com[j])
            wp.atomic_add(body_f, i, wp.spatial_vector(f, wp.cross(r0, f)))
            wp.atomic_add(body_f, j, wp.spatial_vector(-f, wp.cross(r1, -f)))

    _KERNEL["pull"] = pull_segments
    return pull_segments


def _kernel() -> Any:
    if "muscle" in _KERNEL:
        return _KERNEL["muscle"]
    wp = _warp()
    pull_segments = _pull()

    @wp.kernel
    def muscle_forces(
        body_q: wp.array(dtype=wp.transform),
        body_com: wp.array(dtype=wp.vec3),
        act: wp.array2d(dtype=float),
        strength: wp.array(dtype=float),
        act_gain: float,
        act_bias: float,
        muscle_start: wp.array(dtype=wp.int32),
        point_body: wp.array(dtype=wp.int32),
        point_local: wp.array(dtype=wp.vec3),
        bodies_per_world: int,
        body_f: wp.array(dtype=wp.spatial_vector),
    ):
        world, m = wp.tid()
        a = strength[m] * (act_gain * act[world, m] + act_bias)
        base = world * bodies_per_world
        pull_segments(
            body_q, body_com, a, muscle_start[m], muscle_start[m + 1] - 1, point_body, point_local, base, body_f
        )

    _KERNEL["muscle"] = muscle_forces
    return muscle_forces


MAX_SEGMENTS = 8
"""Most segments (waypoints - 1) of one muscle under the Hill law (its length loop is unrolled)."""

HILL_GAMMA = 0.45
"""Width of the active force-length Gaussian ``exp(-(x - 1)^2 / γ)`` (Thelen 2003)."""
HILL_KPE = 4.0
"""Shape of the passive force-length exponential (Thelen 2003)."""
HILL_STRAIN = 0.6
"""Passive fibre strain at which the passive force equals the peak force (Thelen 2003)."""


def _hill_kernel() -> Any:
    if "hill" in _KERNEL:
        return _KERNEL["hill"]
    wp = _warp()
    max_seg = wp.constant(MAX_SEGMENTS)
    gamma, kpe, strain = wp.constant(HILL_GAMMA), wp.constant(HILL_KPE), wp.constant(HILL_STRAIN)
    pull_segments = _pull()

    @wp.kernel
    def hill_muscle_forces(
        body_q: wp.array(dtype=wp.transform),
        body_com: wp.array(dtype=wp.vec3),
        act: wp.array2d(dtype=float),
        strength: wp.array(dtype=float),
        act_gain: float,
        act_bias: float,
        muscle_start: wp.array(dtype=wp.int32),
        point_body: wp.array(dtype=wp.int32),
        point_local: wp.array(dtype=wp.vec3),
        rest_length: wp.array(dtype=float),
        fibre_optimal: wp.array(dtype=float),
        tendon_slack: wp.array(dtype=float),
        bodies_per_world: int,
        body_f: wp.array(dtype=wp.spatial_vector),
    ):
        world, m = wp.tid()
        base = world * bodies_per_world
        first = muscle_start[m]
        last = muscle_start[m + 1] - 1
        # path length over all segments, including those within one body (unrolled: differentiable)
        length = wp.float32(0.0)
        p0 = wp.transform_point(body_q[base + point_body[first]], point_local[first])
        for k in range(max_seg):
            w = first + k
            if w < last:
                p1 = wp.transform_point(body_q[base + point_body[w + 1]], point_local[w + 1])
                length = length + wp.length(p1 - p0)
                p0 = p1
        x = (length / rest_length[m] - tendon_slack[m]) / fibre_optimal[m]  # fibre length / optimal
        active = wp.exp(-(x - 1.0) * (x - 1.0) / gamma)
        passive = wp.float32(0.0)
        if x > 1.0:
            passive = (wp.exp(kpe * (x - 1.0) / strain) - 1.0) / (wp.exp(kpe) - 1.0)
        a = strength[m] * ((act_gain * act[world, m] + act_bias) * active + passive)
        pull_segments(body_q, body_com, a, first, last, point_body, point_local, base, body_f)

    _KERNEL["hill"] = hill_muscle_forces
    return hill_muscle_forces


@dataclasses.dataclass
class HillParams:
    """Per-muscle parameters of the Hill-type force-length law (rigid tendon, no force-velocity term).

    With path length ``L`` [m], the normalised fibre length is ``x = (L / rest_length - tendon_slack)
    / fibre_optimal`` and the tension ``strength · (activation · exp(-(x-1)²/0.45) + f_pe(x))``, where
    ``f_pe(x) = (exp(4 (x-1)/0.6) - 1) / (exp(4) - 1)`` for ``x > 1`` and 0 below (Thelen 2003 curves;
    MASS uses the same form). Lengths other than ``rest_length`` are fractions of it, as in MASS.

    Attributes:
        rest_length: ``(M,)`` path length in the rest pose [m].
        fibre_optimal: ``(M,)`` optimal fibre length / rest length (MASS ``lm``).
        tendon_slack: ``(M,)`` tendon length / rest length (MASS ``lt``).
    """

    rest_length: np.ndarray
    fibre_optimal: np.ndarray
    tendon_slack: np.ndarray


@dataclasses.dataclass
class MuscleSet:
    """Muscles of one world: waypoints as ``(body index, point in that body's frame [m])``.

    Attributes:
        start: ``(M + 1,)`` int32, waypoints of muscle ``m`` are ``start[m]:start[m+1]``.
        body: ``(W,)`` int32 body index (within a world) of each waypoint.
        local: ``(W, 3)`` float32 waypoint in its body frame.
        strength: ``(M,)`` float32 tension [N] at full activation.
        hill: force-length parameters; None for the linear dflex law (tension = activation).
    """

    start: np.ndarray
    body: np.ndarray
    local: np.ndarray
    strength: np.ndarray
    hill: HillParams | None = None

    @classmethod
    def from_lists(
        cls, bodies: Sequence[Sequence[int]], points: Sequence[np.ndarray], strength: Sequence[float]
    ) -> MuscleSet:
        """From per-muscle body indices and ``(W_m, 3)`` local points."""
        if not (len(bodies) == len(points) == len(strength)):
            raise ValueError("bodies, points and strength need one entry per muscle")
        counts = [len(b) for b in bodies]
        if any(c < 2 for c in counts):
            raise ValueError("every muscle needs at least 2 waypoints")
        return cls(
            start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
            body=np.concatenate([np.asarray(b, dtype=np.int32) for b in bodies]),
            local=np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 3) for p in points]),
            strength=np.asarray(strength, dtype=np.float32),
        )

    @property
    def count(self) -> int:
        return len(self.strength)


class MuscleForces:
    """Launches the muscle kernel for ``num_worlds`` copies of a :class:`MuscleSet` on one device.

    The tension of muscle ``m`` in world ``w`` is ``strength[m] · (act_gain · act[w, m] + act_bias)``
    [N]: with the defaults the activation ``act`` is the tension in units of ``strength``; DiffRL's
    SNU humanoid maps actions in [-1, 1] to ``[0, 1]`` with gain 0.5 and bias 0.5.
    """

    def __init__(
        self,
        muscles: MuscleSet,
        num_worlds: int,
        bodies_per_world: int,
        device: Any,
        act_gain: float = 1.0,
        act_bias: float = 0.0,
    ) -> None:
        wp = _warp()
        self.muscles = muscles
        self.num_worlds = num_worlds
        self.bodies_per_world = bodies_per_world
        self.device = device
        self.act_gain, self.act_bias = float(act_gain), float(act_bias)
        self._start = wp.array(muscles.start, dtype=wp.int32, device=device)
        self._body = wp.array(muscles.body, dtype=wp.int32, device=device)
        self._local = wp.array(muscles.local, dtype=wp.vec3, device=device)
        self._strength = wp.array(muscles.strength, dtype=float, device=device)
        self._hill: list[Any] = []
        if muscles.hill is not None:
            h = muscles.hill
            longest = int(np.diff(muscles.start).max()) - 1
            if longest > MAX_SEGMENTS:
                raise ValueError(f"the Hill law supports muscles of at most {MAX_SEGMENTS} segments, got {longest}")
            if (h.rest_length <= 0).any() or (h.fibre_optimal <= 0).any():
                raise ValueError("Hill muscles need positive rest lengths and optimal fibre lengths")
            self._hill = [
                wp.array(np.asarray(v, dtype=np.float32), dtype=float, device=device)
                for v in (h.rest_length, h.fibre_optimal, h.tendon_slack)
            ]

    def launch(self, body_q: Any, body_com: Any, act: Any, body_f: Any) -> None:
        """Add the muscle wrenches for activations ``act`` ``(num_worlds, M)`` to ``body_f`` (accumulates)."""
        wp = _warp()
        if self.muscles.count == 0:
            return
        wp.launch(
            _hill_kernel() if self._hill else _kernel(),
            dim=(self.num_worlds, self.muscles.count),
            inputs=[
                body_q,
                body_com,
                act,
                self._strength,
                self.act_gain,
                self.act_bias,
                self._start,
                self._body,
                self._local,
                *self._hill,
                self.bodies_per_world,
            ],
            outputs=[body_f],
            device=self.device,
        )


__all__ = ["HillParams", "MuscleForces", "MuscleSet"]
