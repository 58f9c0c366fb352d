"""Muscles and passive ball joints inside the articulated simulator: momentum balance and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pwm_bench.envs.muscles import MuscleSet
from pwm_bench.envs.physics import ArticulatedSim, Box, Joint, Link, Robot
from pwm_bench.testing import fd_gradient_check


def _two_boxes() -> tuple[Robot, MuscleSet]:
    """A floating box with a second box hung from it by a ball joint, and two muscles across the joint."""
    links = [
        Link("base", -1, (0.0, 0.0, 1.0), "free", [Box((0.0, 0.0, 0.0), (0.1, 0.1, 0.05), density=500.0)]),
        Link(
            "limb",
            0,
            (0.0, 0.0, -0.05),
            [Joint("ball", (0.0, 0.0, 1.0), stiffness=2.0, damping=0.5, armature=0.01, name="hip")],
            [Box((0.0, 0.0, -0.15), (0.04, 0.04, 0.15), density=800.0)],
        ),
    ]
    robot = Robot("two_boxes", links, density=1000.0, limit_ke=0.0, limit_kd=0.0, actuated=[], gear=[])
    muscles = MuscleSet.from_lists(
        [[0, 1], [0, 0, 1]],
        [
            np.array([[0.08, 0.0, 0.0], [0.04, 0.0, -0.2]]),
            np.array([[-0.08, 0.03, 0.0], [-0.08, 0.0, -0.04], [-0.04, 0.0, -0.25]]),
        ],
        [40.0, 25.0],
    )
    return robot, muscles


def _sim(worlds: int = 3) -> ArticulatedSim:
    robot, muscles = _two_boxes()
    return ArticulatedSim(
        robot, worlds, "cpu", dt=1 / 60, substeps=8, contact=None, muscles=muscles, muscle_gain=0.5, muscle_bias=0.5
    )


def _momentum(sim: ArticulatedSim, q: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
    """Total linear momentum ``(N, 3)`` of each world."""
    import newton
    import warp as wp

    s = sim._blocks[0]._fwd[0]
    wp.to_torch(s.joint_q).copy_(q.reshape(-1))
    wp.to_torch(s.joint_qd).copy_(qd.reshape(-1))
    newton.eval_fk(sim.model, s.joint_q, s.joint_qd, s)
    v = wp.to_torch(s.body_qd).reshape(sim.num_envs, sim.bodies_per_world, 6)[..., :3]
    m = torch.as_tensor(np.asarray(sim.built.builder.body_mass, dtype=np.float32)).reshape(1, -1, 1)
    return (v * m).sum(1)


def test_muscles_and_ball_springs_are_internal_forces() -> None:
    sim = _sim()
    assert sim.act_dim == 2 and len(sim.built.balls) == 1
    q0 = sim.default_q().expand(3, -1).clone()
    qd0 = torch.zeros(3, sim.nqd)
    qd0[:, 6:9] = torch.tensor([0.5, -0.3, 0.2])  # the limb swings, so the damper works too
    act = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0]])  # off, one muscle, both at full strength
    q1, qd1 = sim.step(q0, qd0, act)
    p0, p1 = _momentum(sim, q0, qd0), _momentum(sim, q1, qd1)
    mass = sim.built.total_mass
    gravity = torch.tensor([0.0, 0.0, -9.81 * mass / 60])
    assert torch.allclose(p1 - p0, gravity.expand(3, 3), atol=2e-3 * mass)  # only gravity changes momentum
    # but the muscles do move the limb relative to the base
    assert not torch.allclose(q1[0, 7:], q1[2, 7:], atol=1e-5)


@pytest.mark.parametrize("wrt", ["act", "state"])
def test_gradients_through_muscles_and_ball_springs_match_finite_differences(wrt: str) -> None:
    sim = _sim(2)
    gen = torch.Generator().manual_seed(0)
    q0 = sim.default_q().expand(2, -1).clone()
    qd0 = (torch.rand(2, sim.nqd, generator=gen) - 0.5) * 0.5
    act0 = torch.rand(2, 2, generator=gen) * 2 - 1
    w_q = torch.randn(2, sim.nq, generator=gen)
    w_qd = torch.randn(2, sim.nqd, generator=gen)

    def fn(x: torch.Tensor) -> torch.Tensor:
        act, qd = (x.float(), qd0) if wrt == "act" else (act0, x.float())
        q, v = q0, qd
        for _ in range(3):
            q, v = sim.step(q, v, act)
        return (q * w_q).sum().double() + (v * w_qd).sum().double()

    x = (act0 if wrt == "act" else qd0).double()
    report = fd_gradient_check(fn, x, eps=1e-2, n_directions=6)
    assert report.cosine > 0.99 and report.rel_error < 0.05, report


def test_actions_drive_joints_or_muscles_not_both() -> None:
    robot, muscles = _two_boxes()
    actuated = Robot(robot.name, robot.links, 1000.0, 0.0, 0.0, actuated=["hip_x"], gear=[1.0])
    with pytest.raises(ValueError, match="not both"):
        ArticulatedSim(actuated, 1, "cpu", dt=1 / 60, substeps=2, contact=None, muscles=muscles)
