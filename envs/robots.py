"""Robot models of the rigid-body envs, authored as builder data (z-up, SI units).

The geometry follows the Gym/dm_control models that DiffRL's MJCF files derive from; the physical
parameters follow dflex as DiffRL configured it (``reference``: density 1000 for every geom, one
link per joint, joint stiffness/damping/armature per env, limit gains 1e3 / 10). Body quaternions of
the MJCF files are ignored, as dflex ignored them. Every link frame sits at its joint pivot.

Total masses (dflex): hopper 15.82 kg, ant 182.2 kg, humanoid 40.84 kg; the tests check them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pwm_bench.envs.physics import Box, Capsule, Joint, Link, Robot, Sphere

if TYPE_CHECKING:
    from pwm_bench.envs.mass import MassModel

DEG = math.pi / 180.0


def hopper() -> Robot:
    """Gym hopper in the x-z plane: root slides x, z and hinge y; thigh, leg and foot hinges about -y.

    Armature 1.0 on all six DOFs, joint damping 2.0 on the three hinges (0 on the root), no joint
    stiffness (DiffRL ``HopperEnv``). At zero joint angles the torso centre is 1.25 m above the ground
    and the foot's lowest point 0.04 m.
    """

    def hinge(name: str, lo: float, hi: float) -> Joint:
        return Joint("hinge", (0.0, -1.0, 0.0), (lo, hi), damping=2.0, armature=1.0, name=name)

    root = [
        Joint("slide", (1.0, 0.0, 0.0), armature=1.0, name="rootx"),
        Joint("slide", (0.0, 0.0, 1.0), armature=1.0, name="rootz"),
        Joint("hinge", (0.0, 1.0, 0.0), armature=1.0, name="rooty"),
    ]
    links = [
        Link("torso", -1, (0.0, 0.0, 1.25), root, [Capsule((0.0, 0.0, 0.2), (0.0, 0.0, -0.2), 0.05)]),
        Link(
            "thigh",
            0,
            (0.0, 0.0, -0.2),
            [hinge("thigh_joint", -150.0 * DEG, 0.0)],
            [Capsule((0.0, 0.0, 0.0), (0.0, 0.0, -0.45), 0.05)],
        ),
        Link(
            "leg",
            1,
            (0.0, 0.0, -0.45),
            [hinge("leg_joint", -150.0 * DEG, 0.0)],
            [Capsule((0.0, 0.0, 0.0), (0.0, 0.0, -0.5), 0.04)],
        ),
        Link(
            "foot",
            2,
            (0.0, 0.0, -0.5),
            [hinge("foot_joint", -45.0 * DEG, 45.0 * DEG)],
            [Capsule((-0.135, 0.0, 0.0), (0.255, 0.0, 0.0), 0.06)],
        ),
    ]
    return Robot(
        "hopper",
        links,
        density=1000.0,
        limit_ke=1.0e3,
        limit_kd=10.0,
        actuated=["thigh_joint", "leg_joint", "foot_joint"],
        gear=[200.0, 200.0, 200.0],
    )


def ant() -> Robot:
    """Gym ant: a sphere torso with four two-hinge legs on a free joint.

    Joint order (DiffRL DFS order): hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3, hip_4, ankle_4.
    Armature 0.05 on every DOF (the floating base included), joint damping 1.0, no stiffness.
    """
    links: list[Link] = [
        Link(
            "torso",
            -1,
            (0.0, 0.0, 0.75),
            "free",
            [Sphere((0.0, 0.0, 0.0), 0.25)]
            + [Capsule((0.0, 0.0, 0.0), (sx * 0.2, sy * 0.2, 0.0), 0.08) for sx, sy in _ANT_CORNERS],
        )
    ]
    for i, ((sx, sy), ankle_axis, ankle_range) in enumerate(
        zip(_ANT_CORNERS, _ANT_ANKLE_AXES, _ANT_ANKLE_RANGES, strict=True)
    ):
        n = i + 1
        hip = Joint("hinge", (0.0, 0.0, 1.0), (-40.0 * DEG, 40.0 * DEG), damping=1.0, armature=0.05, name=f"hip_{n}")
        ankle = Joint(
            "hinge",
            ankle_axis,
            (ankle_range[0] * DEG, ankle_range[1] * DEG),
            damping=1.0,
            armature=0.05,
            name=f"ankle_{n}",
        )
        hip_link = len(links)
        links.append(
            Link(
                f"leg_{n}",
                0,
                (sx * 0.2, sy * 0.2, 0.0),
                [hip],
                [Capsule((0.0, 0.0, 0.0), (sx * 0.2, sy * 0.2, 0.0), 0.08)],
            )
        )
        links.append(
            Link(
                f"foot_{n}",
                hip_link,
                (sx * 0.2, sy * 0.2, 0.0),
                [ankle],
                [Capsule((0.0, 0.0, 0.0), (sx * 0.4, sy * 0.4, 0.0), 0.08)],
            )
        )
    names = [f"{kind}_{i}" for i in range(1, 5) for kind in ("hip", "ankle")]
    return Robot(
        "ant",
        links,
        density=1000.0,
        limit_ke=1.0e3,
        limit_kd=10.0,
        actuated=names,
        gear=[200.0] * 8,
        free_armature=0.05,
    )


# leg directions (front left, front right, back left, back right), ankle axes and ranges [deg]
_ANT_CORNERS = ((1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))
_ANT_ANKLE_AXES = ((-1.0, 1.0, 0.0), (1.0, 1.0, 0.0), (-1.0, 1.0, 0.0), (1.0, 1.0, 0.0))
_ANT_ANKLE_RANGES = ((30.0, 100.0), (-100.0, -30.0), (-100.0, -30.0), (30.0, 100.0))
ANT_START_JOINTS = (0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0)
"""Ant joint angles at reset [rad] (DiffRL)."""


# humanoid: (name, axis, range deg, stiffness, damping, armature, strength); dflex defaults for joints
# without MJCF attributes: stiffness 5, damping 0.1, armature 0.007.
def _hj(
    name: str,
    axis: tuple[float, float, float],
    lo: float,
    hi: float,
    ke: float = 5.0,
    kd: float = 0.1,
    arm: float = 0.007,
) -> Joint:
    return Joint("hinge", axis, (lo * DEG, hi * DEG), stiffness=ke, damping=kd, armature=arm, name=name)


HUMANOID_STRENGTH = {
    "abdomen_z": 200, "abdomen_y": 200, "abdomen_x": 200,
    "right_hip_x": 200, "right_hip_z": 200, "right_hip_y": 600, "right_knee": 400,
    "right_ankle_y": 100, "right_ankle_x": 100,
    "left_hip_x": 200, "left_hip_z": 200, "left_hip_y": 600, "left_knee": 400,
    "left_ankle_y": 100, "left_ankle_x": 100,
    "right_shoulder1": 100, "right_shoulder2": 100, "right_elbow": 200,
    "left_shoulder1": 100, "left_shoulder2": 100, "left_elbow": 200,
}  # fmt: skip
"""DiffRL humanoid motor strengths; max torque is ``0.35 * strength`` N·m."""
HUMANOID_MOTOR_SCALE = 0.35


def humanoid() -> Robot:
    """dm_control humanoid (21 hinges) on a free joint, DiffRL parameters.

    Pivots are the MJCF joint positions; several hinges at one pivot form a chain with massless
    links. Stiffness, damping and armature come from the MJCF joint attributes (knees: the dflex
    defaults 5 / 0.1 / 0.007). The floating base has no armature.
    """
    links: list[Link] = [
        Link(
            "torso",
            -1,
            (0.0, 0.0, 1.35),
            "free",
            [
                Capsule((0.0, -0.07, 0.0), (0.0, 0.07, 0.0), 0.07),
                Capsule((-0.01, -0.06, -0.12), (-0.01, 0.06, -0.12), 0.06),
                Sphere((0.0, 0.0, 0.19), 0.09),
            ],
        ),
        # lower waist: body at (-0.01, 0, -0.26) in the torso, abdomen z/y pivot 0.065 above it
        Link(
            "lower_waist",
            0,
            (-0.01, 0.0, -0.195),
            [
                _hj("abdomen_z", (0, 0, 1), -45, 45, 20, 5, 0.02),
                _hj("abdomen_y", (0, 1, 0), -75, 30, 20, 5, 0.01),
            ],
            [Capsule((0.0, -0.06, -0.065), (0.0, 0.06, -0.065), 0.06)],
        ),
        # pelvis: body at (0, 0, -0.165) in the lower waist, abdomen_x pivot 0.1 above it
        Link(
            "pelvis",
            1,
            (0.0, 0.0, -0.165 - 0.065 + 0.1),
            [
                _hj("abdomen_x", (1, 0, 0), -35, 35, 10, 5, 0.01),
            ],
            [Capsule((-0.02, -0.07, -0.1), (-0.02, 0.07, -0.1), 0.09)],
        ),
    ]
    pelvis = 2
    for side, sy in (("right", -1.0), ("left", 1.0)):
        thigh = len(links)
        links.append(
            Link(
                f"{side}_thigh",
                pelvis,
                (0.0, sy * 0.1, -0.04 - 0.1),
                [
                    _hj(f"{side}_hip_x", (-sy, 0, 0), -25, 5, 10, 5, 0.01),
                    _hj(f"{side}_hip_z", (0, 0, -sy), -60, 35, 10, 5, 0.01),
                    _hj(f"{side}_hip_y", (0, 1, 0), -80, 20, 20, 5, 0.01),
                ],
                [Capsule((0.0, 0.0, 0.0), (0.0, -sy * 0.01, -0.34), 0.06)],
            )
        )
        shin = len(links)
        links.append(
            Link(
                f"{side}_shin",
                thigh,
                (0.0, -sy * 0.01, -0.403 + 0.02),
                [
                    _hj(f"{side}_knee", (0, -1, 0), -160, 2),
                ],
                [Capsule((0.0, 0.0, -0.02), (0.0, 0.0, -0.32), 0.049)],
            )
        )
        links.append(
            Link(
                f"{side}_foot",
                shin,
                (0.0, 0.0, -0.39 - 0.02 + 0.08),
                [
                    _hj(f"{side}_ankle_y", (0, 1, 0), -50, 50, 2, 1, 0.006),
                    _hj(f"{side}_ankle_x", (1, 0, 0.5), -50, 50, 2, 1, 0.006),
                ],
                [
                    Capsule((-0.07, sy * 0.02, -0.08), (0.14, sy * 0.04, -0.08), 0.027),
                    Capsule((-0.07, 0.0, -0.08), (0.14, -sy * 0.02, -0.08), 0.027),
                ],
            )
        )
    for side, sy in (("right", -1.0), ("left", 1.0)):
        upper = len(links)
        s1 = (2.0, 1.0, 1.0) if side == "right" else (-2.0, 1.0, -1.0)
        s2 = (0.0, -1.0, 1.0) if side == "right" else (0.0, -1.0, -1.0)
        links.append(
            Link(
                f"{side}_upper_arm",
                0,
                (0.0, sy * 0.17, 0.06),
                [
                    _hj(f"{side}_shoulder1", s1, -60, 60, 10, 5, 0.01),
                    _hj(f"{side}_shoulder2", s2, -60, 60, 10, 5, 0.01),
                ],
                [Capsule((0.0, 0.0, 0.0), (0.16, sy * 0.16, -0.16), 0.04)],
            )
        )
        elbow = (0.0, -1.0, 1.0) if side == "right" else (0.0, -1.0, -1.0)
        links.append(
            Link(
                f"{side}_lower_arm",
                upper,
                (0.18, sy * 0.18, -0.18),
                [
                    _hj(f"{side}_elbow", elbow, -90, 50, 2, 1, 0.006),
                ],
                [
                    Capsule((0.01, -sy * 0.01, 0.01), (0.17, -sy * 0.17, 0.17), 0.031),
                    Sphere((0.18, -sy * 0.18, 0.18), 0.04),
                ],
            )
        )
    actuated = list(HUMANOID_STRENGTH)
    gear = [HUMANOID_MOTOR_SCALE * HUMANOID_STRENGTH[n] for n in actuated]
    return Robot("humanoid", links, density=1000.0, limit_ke=1.0e3, limit_kd=10.0, actuated=actuated, gear=gear)


def cart_double_pendulum() -> Robot:
    """A cart on a rail (x) carrying two poles hinged about y, after dflex's CartPole model.

    Cart: box 0.5 × 0.5 × 0.2 m (50 kg); each pole: box 0.05 × 0.05 × 1.0 m (2.5 kg) hinged at its
    end. Rail limits ±4 m (limit gains 100 / 1 as in CartPole), poles unlimited, armature 0.01.
    ``theta = 0`` is upright. The action pushes the cart with 1000 N per unit.
    """
    cart = Joint("slide", (1.0, 0.0, 0.0), (-4.0, 4.0), armature=0.01, name="slider")
    pole1 = Joint("hinge", (0.0, 1.0, 0.0), None, armature=0.01, name="hinge1")
    pole2 = Joint("hinge", (0.0, 1.0, 0.0), None, armature=0.01, name="hinge2")
    links = [
        Link("cart", -1, (0.0, 0.0, 2.5), [cart], [Box((0.0, 0.0, 0.0), (0.25, 0.25, 0.1))]),
        Link("pole1", 0, (0.0, 0.0, 0.0), [pole1], [Box((0.0, 0.0, 0.5), (0.025, 0.025, 0.5))]),
        Link("pole2", 1, (0.0, 0.0, 1.0), [pole2], [Box((0.0, 0.0, 0.5), (0.025, 0.025, 0.5))]),
    ]
    return Robot(
        "double_pendulum", links, density=1000.0, limit_ke=100.0, limit_kd=1.0, actuated=["slider"], gear=[1000.0]
    )


# --------------------------------------------------------------------------------------------------
# MASS skeletons (DiffRL's SNU humanoid)

# MASS files are y-up and face +z; this rotation maps them to z-up facing +x
# (new x = old z, new y = old x, new z = old y)
_MASS_TO_WORLD = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def _orthonormal(r: Any) -> Any:
    """Nearest rotation matrix (polar decomposition); MASS files round their matrices."""
    import numpy as np

    u, _, vt = np.linalg.svd(np.asarray(r, dtype=np.float64))
    m = u @ vt
    if np.linalg.det(m) < 0:
        u[:, -1] *= -1
        m = u @ vt
    return m


def _matrix_quat(m: Any) -> tuple[float, float, float, float]:
    """Quaternion (xyzw) of a rotation matrix (Shepperd's method)."""
    import numpy as np

    m = np.asarray(m, dtype=np.float64)
    tr = float(np.trace(m))
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        v = [0.0, 0.0, 0.0]
        v[i] = 0.25 * s
        v[j] = (m[j, i] + m[i, j]) / s
        v[k] = (m[k, i] + m[i, k]) / s
        q = (v[0], v[1], v[2], (m[k, j] - m[j, k]) / s)
    n = math.sqrt(sum(c * c for c in q))
    return (q[0] / n, q[1] / n, q[2] / n, q[3] / n)


def mass_skeleton(model: MassModel, name: str = "snu_humanoid") -> Robot:
    """The kept MASS skeleton as a :class:`Robot`, following DiffRL's ``Skeleton`` builder.

    Link frames are the MASS joint frames (MASS world axes at rest); the floating base starts at the
    root joint's rest position, rotated to z-up facing +x. Boxes get density mass/volume and sit at
    ``inv(joint_X_s) · body_X_s``. Per link, with ``ms = mass / 15``: hinges have limit stiffness
    ``1000 ms``, always-on limit damping ``10 ms``, a spring ``5 √ms`` to 0, damping 2; ball joints have
    no limits and the same spring and damping as body torques; every joint has armature 0.05.
    Nothing is actuated: muscles drive the skeleton.
    """
    import numpy as np

    index = {n.name: i for i, n in enumerate(model.nodes)}
    to_world = np.asarray(_MASS_TO_WORLD)
    links: list[Link] = []
    for node in model.nodes:
        rj = _orthonormal(node.joint.R)
        if node.parent is not None:
            parent = model.nodes[index[node.parent]]
            rp = _orthonormal(parent.joint.R)
            if not np.allclose(rp.T @ rj, np.eye(3), atol=1e-3):
                raise ValueError(f"MASS node {node.name!r}: rotated joint frames are not supported")
            pivot = rp.T @ (node.joint.t - parent.joint.t)
        else:
            pivot = to_world @ node.joint.t
        center = rj.T @ (node.body.t - node.joint.t)
        rot = rj.T @ _orthonormal(node.body.R)
        box = Box(
            center=tuple(float(c) for c in center),
            half=tuple(float(h) / 2.0 for h in node.size),
            density=node.mass / float(np.prod(node.size)),
            rotation=_matrix_quat(rot),
        )
        ms = node.mass / 15.0
        if node.joint_type == "Free":
            joints: Any = "free"
        elif node.joint_type == "Ball":
            joints = [
                Joint(
                    "ball", (0.0, 0.0, 1.0), stiffness=5.0 * math.sqrt(ms), damping=2.0, armature=0.05, name=node.name
                )
            ]
        elif node.joint_type == "Revolute":
            assert node.axis is not None
            lim = None if node.lower is None or node.upper is None else (float(node.lower[0]), float(node.upper[0]))
            joints = [
                Joint(
                    "hinge",
                    tuple(float(a) for a in node.axis),
                    limits=lim,
                    stiffness=5.0 * math.sqrt(ms),
                    damping=2.0,
                    armature=0.05,
                    name=node.name,
                    limit_ke=1000.0 * ms,
                    limit_kd=10.0 * ms,
                )
            ]
        else:
            raise ValueError(f"MASS node {node.name!r}: joint type {node.joint_type} is not supported")
        links.append(
            Link(
                name=node.name,
                parent=-1 if node.parent is None else index[node.parent],
                pivot=tuple(float(c) for c in pivot),
                joints=joints,
                shapes=[box],
                rotation=_matrix_quat(to_world) if node.parent is None else (0.0, 0.0, 0.0, 1.0),
            )
        )
    return Robot(name=name, links=links, density=1000.0, limit_ke=0.0, limit_kd=0.0, actuated=[], gear=[])
