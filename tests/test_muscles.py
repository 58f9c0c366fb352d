"""The dflex muscle law as a Warp kernel: forces, momentum balance and gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from pwm_bench.envs.muscles import MuscleForces, MuscleSet


def _quat(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


def _rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    u = np.array([x, y, z])
    return v + 2.0 * np.cross(u, np.cross(u, v) + w * v)


# two worlds of three bodies; muscle 0 has a via point on body 0 (no force between its first two
# waypoints) and crosses 0 -> 1; muscle 1 spans 1 -> 2 -> 0
BODIES = [[0, 0, 1], [1, 2, 0]]
POINTS = [
    np.array([[0.1, 0.0, 0.0], [0.0, 0.2, 0.1], [0.0, -0.1, 0.05]]),
    np.array([[0.05, 0.05, 0.0], [-0.1, 0.0, 0.2], [0.0, 0.0, -0.1]]),
]
COM = np.array([[0.0, 0.0, 0.01], [0.02, 0.0, 0.0], [0.0, -0.03, 0.0]], dtype=np.float32)


def _poses(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2 * 3):
        out.append(np.concatenate([rng.normal(size=3) * 0.3, _quat(rng.normal(size=3), rng.uniform(0, 2))]))
    return np.asarray(out, dtype=np.float32)


def _reference(poses: np.ndarray, tension: np.ndarray) -> np.ndarray:
    """``(6, 6)`` wrenches (force, torque about the COM) written out in numpy."""
    f_out = np.zeros((6, 6))
    for world in range(2):
        for m, (bodies, pts) in enumerate(zip(BODIES, POINTS, strict=True)):
            for k in range(len(bodies) - 1):
                b0, b1 = bodies[k], bodies[k + 1]
                if b0 == b1:
                    continue
                i, j = world * 3 + b0, world * 3 + b1
                p0 = poses[i, :3] + _rotate(poses[i, 3:], pts[k])
                p1 = poses[j, :3] + _rotate(poses[j, 3:], pts[k + 1])
                f = tension[world, m] * (p1 - p0) / np.linalg.norm(p1 - p0)
                c0 = poses[i, :3] + _rotate(poses[i, 3:], COM[b0])
                c1 = poses[j, :3] + _rotate(poses[j, 3:], COM[b1])
                f_out[i] += np.concatenate([f, np.cross(p0 - c0, f)])
                f_out[j] += np.concatenate([-f, np.cross(p1 - c1, -f)])
    return f_out


def _run(poses: np.ndarray, tension: np.ndarray, weights: np.ndarray | None = None, hill=None):
    """Launch the kernel (the Hill law when ``hill`` is given); wrenches and, with ``weights``, gradients."""
    import warp as wp

    # strength 2 with gain 0.5 and bias 0: the linear law's tension equals ``tension``
    muscles = MuscleSet.from_lists(BODIES, POINTS, [2.0, 2.0])
    muscles.hill = hill
    forces = MuscleForces(muscles, num_worlds=2, bodies_per_world=3, device="cpu", act_gain=0.5)
    body_q = wp.array(poses, dtype=wp.transform, device="cpu", requires_grad=True)
    com = wp.array(np.tile(COM, (2, 1)), dtype=wp.vec3, device="cpu")
    ten = wp.array(tension.astype(np.float32), dtype=float, device="cpu", requires_grad=True)
    body_f = wp.zeros(6, dtype=wp.spatial_vector, device="cpu", requires_grad=True)
    tape = wp.Tape()
    with tape:
        forces.launch(body_q, com, ten, body_f)
    out = body_f.numpy().copy()
    grads = None
    if weights is not None:
        body_f.grad = wp.array(weights.astype(np.float32), dtype=wp.spatial_vector, device="cpu")
        tape.backward()
        grads = (body_q.grad.numpy().copy(), ten.grad.numpy().copy())
    return out, grads


def test_wrenches_match_the_law_and_balance_momentum() -> None:
    poses = _poses(0)
    tension = np.array([[300.0, 50.0], [10.0, 0.0]])
    out, _ = _run(poses, tension)
    assert np.allclose(out, _reference(poses, tension), rtol=1e-4, atol=1e-3)
    for world in range(2):
        rows = slice(3 * world, 3 * world + 3)
        force = out[rows, :3].sum(0)
        # total torque about the world origin: torque about each COM plus com × force
        com_world = np.stack([poses[3 * world + b, :3] + _rotate(poses[3 * world + b, 3:], COM[b]) for b in range(3)])
        torque = (out[rows, 3:] + np.cross(com_world, out[rows, :3])).sum(0)
        assert np.abs(force).max() < 1e-3 and np.abs(torque).max() < 1e-3
    # world 1: muscle 1 has zero tension, and muscle 0 only loads bodies 0 and 1 (its first two
    # waypoints share body 0), so body 2 feels nothing
    assert np.abs(out[5]).max() == pytest.approx(0.0, abs=1e-6)
    assert np.abs(out[3]).max() > 1.0 and np.abs(out[4]).max() > 1.0


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(1)
    poses = _poses(2)
    tension = np.array([[120.0, 40.0], [80.0, 200.0]])
    weights = rng.normal(size=(6, 6))
    _, (g_q, g_t) = _run(poses, tension, weights)

    def scalar(p: np.ndarray, t: np.ndarray) -> float:
        return float((_reference(p.astype(np.float64), t) * weights).sum())

    _check_against_finite_differences(scalar, poses, tension, g_q, g_t)


def _check_against_finite_differences(scalar, poses: np.ndarray, act: np.ndarray, g_q, g_a, eps: float = 1e-3) -> None:
    """Central differences of ``scalar(poses, act)`` against the kernel's gradients, entry by entry."""
    for world in range(2):
        for m in range(2):
            da = np.zeros_like(act)
            da[world, m] = eps
            fd = (scalar(poses, act + da) - scalar(poses, act - da)) / (2 * eps)
            assert g_a[world, m] == pytest.approx(fd, rel=1e-3, abs=1e-3)
    # positions of every body (quaternion gradients need a projection; positions suffice for the law)
    for b in range(6):
        for c in range(3):
            dp = np.zeros_like(poses, dtype=np.float64)
            dp[b, c] = eps
            fd = (scalar(poses + dp, act) - scalar(poses - dp, act)) / (2 * eps)
            assert g_q[b][c] == pytest.approx(fd, rel=2e-2, abs=2e-2)


def test_muscle_set_validates() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        MuscleSet.from_lists([[0]], [np.zeros((1, 3))], [1.0])
    with pytest.raises(ValueError, match="one entry per muscle"):
        MuscleSet.from_lists([[0, 1]], [np.zeros((2, 3))], [1.0, 2.0])
    s = MuscleSet.from_lists(BODIES, POINTS, [3.0, 4.0])
    assert s.start.tolist() == [0, 3, 6] and s.count == 2


# -- the optional Hill-type force-length law ---------------------------------------------------------


def _path_lengths(poses: np.ndarray) -> np.ndarray:
    """``(2, 2)`` path length of each muscle in each world (all segments, same-body ones included)."""
    out = np.zeros((2, 2))
    for world in range(2):
        for m, (bodies, pts) in enumerate(zip(BODIES, POINTS, strict=True)):
            w = [
                poses[world * 3 + b, :3] + _rotate(poses[world * 3 + b, 3:], p)
                for b, p in zip(bodies, pts, strict=True)
            ]
            out[world, m] = sum(np.linalg.norm(w[k + 1] - w[k]) for k in range(len(w) - 1))
    return out


def _hill_tension(poses: np.ndarray, act: np.ndarray, rest: np.ndarray, lm: np.ndarray, lt: np.ndarray) -> np.ndarray:
    x = (_path_lengths(poses) / rest - lt) / lm
    active = np.exp(-((x - 1.0) ** 2) / 0.45)
    passive = np.where(x > 1.0, (np.exp(4.0 * (x - 1.0) / 0.6) - 1.0) / (np.exp(4.0) - 1.0), 0.0)
    return 2.0 * (0.5 * act * active + passive)  # strength 2, gain 0.5


def test_hill_law_scales_tension_by_force_length_and_adds_passive_force() -> None:
    from pwm_bench.envs.muscles import HillParams

    poses = _poses(3)
    length = _path_lengths(poses)[0]
    # muscle 0 at its optimal length (active factor 1), muscle 1 stretched to 1.2 optimal fibre lengths
    rest = np.array([length[0] / 1.0, length[1] / 1.16])
    hill = HillParams(rest_length=rest, fibre_optimal=np.array([0.8, 0.8]), tendon_slack=np.array([0.2, 0.2]))
    act = np.array([[300.0, 0.0], [0.0, 50.0]])
    out, _ = _run(poses, act, hill=hill)
    tension = _hill_tension(poses, act, rest, hill.fibre_optimal, hill.tendon_slack)
    assert np.allclose(out, _reference(poses, tension), rtol=1e-4, atol=1e-3)
    assert tension[0, 0] == pytest.approx(300.0, rel=1e-4)  # optimal length: the linear law's tension
    assert tension[0, 1] > 0.0  # no activation, stretched: passive tension
    # world 1, muscle 0: unstretched and inactive, so body 0 → 1 carries nothing from it
    assert tension[1, 0] == 0.0


def test_hill_law_gradients_match_finite_differences() -> None:
    from pwm_bench.envs.muscles import HillParams

    rng = np.random.default_rng(4)
    poses = _poses(5)
    length = _path_lengths(poses)[0]
    rest = np.array([length[0] / 1.1, length[1] / 1.05])  # both past optimal: active and passive parts
    hill = HillParams(rest_length=rest, fibre_optimal=np.array([0.8, 1.0]), tendon_slack=np.array([0.2, 0.1]))
    act = np.array([[120.0, 40.0], [80.0, 200.0]])
    weights = rng.normal(size=(6, 6))
    _, (g_q, g_a) = _run(poses, act, weights, hill=hill)

    def scalar(p: np.ndarray, a: np.ndarray) -> float:
        p = p.astype(np.float64)
        return float((_reference(p, _hill_tension(p, a, rest, hill.fibre_optimal, hill.tendon_slack)) * weights).sum())

    _check_against_finite_differences(scalar, poses, act, g_q, g_a)


def test_hill_law_rejects_bad_parameters() -> None:
    from pwm_bench.envs.muscles import HillParams

    muscles = MuscleSet.from_lists(BODIES, POINTS, [2.0, 2.0])
    muscles.hill = HillParams(np.array([0.0, 1.0]), np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="positive rest lengths"):
        MuscleForces(muscles, num_worlds=1, bodies_per_world=3, device="cpu")
