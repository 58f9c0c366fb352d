"""Muscle-tendon forces for articulated bodies (the dflex muscle law), as a differentiable Warp kernel.

No Warp-family solver applies muscle forces (Newton's muscle call is disabled), so pwm-bench adds
them itself, as body wrenches next to the ground contacts. The law is dflex's ``eval_muscles``
(linear, no Hill model): a muscle is a polyline of waypoints fixed on bodies; for every pair of
consecutive waypoints on **different** bodies, with world points ``p0`` (body ``i``) and ``p1`` (body
``j``) and unit direction ``n = (p1 - p0) / |p1 - p0|``, body ``i`` is pulled at ``p0`` by
``f = a n`` and body ``j`` at ``p1`` by ``-f``, where ``a`` [N] is the muscle's tension. Pairs on the
same body carry no force (via points act as frictionless pulleys). Every pair's two forces are
equal and opposite, so muscles change no total momentum.

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


def _kernel() -> Any:
    if "muscle" in _KERNEL:
        return _KERNEL["muscle"]
    wp = _warp()

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
        for w in range(muscle_start[m], muscle_start[m + 1] - 1):
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
            f = a * wp.normalize(p1 - p0)
            r0 = p0 - wp.transform_point(X0, body_com[i])
            r1 = p1 - wp.transform_point(X1, body_com[j])
            wp.atomic_add(body_f, i, wp.spatial_vector(f, wp.cross(r0, f)))
            wp.atomic_add(body_f, j, wp.spatial_vector(-f, wp.cross(r1, -f)))

    _KERNEL["muscle"] = muscle_forces
    return muscle_forces


@dataclasses.dataclass
class MuscleSet:
    """Muscles of one world: waypoints as ``(body index, point in that body's frame [m])``.

    Attributes:
        start: ``(M + 1,)`` int32, waypoints of muscle ``m`` are ``start[m]:start[m+1]``.
        body: ``(W,)`` int32 body index (within a world) of each waypoint.
        local: ``(W, 3)`` float32 waypoint in its body frame.
        strength: ``(M,)`` float32 tension [N] at full activation.
    """

    start: np.ndarray
    body: np.ndarray
    local: np.ndarray
    strength: np.ndarray

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

    def launch(self, body_q: Any, body_com: Any, act: Any, body_f: Any) -> None:
        """Add the muscle wrenches for activations ``act`` ``(num_worlds, M)`` to ``body_f`` (accumulates)."""
        wp = _warp()
        if self.muscles.count == 0:
            return
        wp.launch(
            _kernel(),
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
                self.bodies_per_world,
            ],
            outputs=[body_f],
            device=self.device,
        )


__all__ = ["MuscleForces", "MuscleSet"]
