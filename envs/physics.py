"""Differentiable articulated-body simulation on Newton's Featherstone solver, dflex style.

This module is the physics core shared by the rigid-body envs (hopper, ant, humanoid, double
pendulum). It reproduces the parts of dflex, the simulator behind the DiffRL environments, that
change the dynamics, on top of :class:`newton.solvers.SolverFeatherstone`:

- **Joint forces** (dflex ``jcalc_tau``): ``tau = act - ke_j (q - q_rest) - (kd_j + limit_kd) qd + limit_f``.
  dflex applies the limit damping at all times, so it is folded into Newton's always-on
  ``joint_damping``; Newton's own limit damping (only while a limit is violated) is set to zero and
  its limit spring (``limit_ke`` times the violation) is the same as dflex's.
- **Ground contact** (dflex ``eval_rigid_contacts_art``): the ground is the plane ``z = 0`` (Newton is
  z-up; dflex was y-up). Contact points are fixed at build time: sphere centres, capsule end points
  (each with the shape radius as offset) and box corners (no offset). For a point at depth
  ``c = z - r < 0`` with velocity ``v`` (normal part ``vn``, tangential ``vt``) the physical force is
  ``n * (-c) * (ke + kd * max(-vn, 0)) - vt * min(kf, mu * ke * (-c) / |vt|)``: a penalty spring, a
  damper scaled by depth and friction bounded by ``mu * ke * |c|``. It is applied at the point
  (sphere centre) as a world wrench. Newton's collision pipeline is not used: its contact gradients
  are wrong, while this kernel computes the contacts from the body poses inside the differentiated
  step.
- **Time stepping**: one control step of ``dt`` seconds is ``substeps`` solver steps with the mass
  matrix built once, at the first substep (dflex's ``MM_caching_frequency = substeps``).

Gradients. Featherstone keeps its mass matrix, Jacobian and Cholesky factor in solver-owned buffers
that each rebuild overwrites, so a Warp tape is only valid over one rebuild, i.e. one control step.
:class:`StepFunction` therefore runs the forward pass without a tape and, in the backward pass,
re-runs the control step from its saved input on buffers of its own (gradient checkpointing per
control step, as rewarped does), back-propagates, and hands the gradients to torch. The first
re-run is recorded on a Warp tape; later ones launch the same kernels on the same arrays, so they
run without recording and reuse that tape. Two arrays are
written twice inside the taped step (``body_q`` of each intermediate state, by the end-of-substep
forward kinematics and again by the next substep's), which would count the gradient through them
twice; the contact kernel therefore reads its own forward-kinematics copy and a tape callback clears
the doubly written adjoint before the first writer's adjoint runs.

Units are SI (m, kg, s, N, N·m, rad). Warp arrays are float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_WP: Any = None


def _warp() -> Any:
    """Import Warp lazily and raise its log level to warnings (library code must not print)."""
    global _WP
    if _WP is None:
        import warp as wp

        if wp.config.log_level <= wp.LOG_INFO:
            wp.config.log_level = wp.LOG_WARNING
        wp.init()
        _WP = wp
    return _WP


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors ``v`` ``(..., 3)`` by unit quaternions ``q`` ``(..., 4)`` (xyzw, as in Warp and Newton)."""
    xyz, w = q[..., :3], q[..., 3:]
    t = 2.0 * torch.cross(xyz, v, dim=-1)
    return v + w * t + torch.cross(xyz, t, dim=-1)


# --------------------------------------------------------------------------------------------------
# Robot description
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Joint:
    """One degree of freedom of a link chain (dflex makes one link per joint).

    Attributes:
        kind: ``"hinge"`` (revolute, rad), ``"slide"`` (prismatic, m) or ``"ball"`` (three rotational
            DOFs, a quaternion coordinate; ``axis`` and ``limits`` do not apply, and ``stiffness`` /
            ``damping`` act as ``-ke·imag(q_rel) - kd·ω_rel`` toward the rest orientation).
        axis: joint axis in the parent link frame (normalised on use).
        limits: ``(lower, upper)`` in rad or m; ``None`` for an unlimited joint.
        stiffness: spring towards ``rest`` [N·m/rad or N/m] (dflex ``ke``).
        damping: joint damping [N·m·s/rad or N·s/m] (dflex ``kd``), without the limit damping.
        armature: added diagonal inertia [kg·m² or kg].
        rest: spring rest position (dflex ``joint_target``).
        name: label.
    """

    kind: str
    axis: tuple[float, float, float]
    limits: tuple[float, float] | None = None
    stiffness: float = 0.0
    damping: float = 0.0
    armature: float = 0.0
    rest: float = 0.0
    name: str = ""
    limit_ke: float | None = None
    """Per-joint limit stiffness (None: the robot's)."""
    limit_kd: float | None = None
    """Per-joint always-on limit damping (None: the robot's)."""


@dataclasses.dataclass(frozen=True)
class Capsule:
    """Capsule from ``start`` to ``end`` (link frame, m) with radius ``radius`` (m)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float


@dataclasses.dataclass(frozen=True)
class Sphere:
    """Sphere at ``center`` (link frame, m) with radius ``radius`` (m)."""

    center: tuple[float, float, float]
    radius: float


@dataclasses.dataclass(frozen=True)
class Box:
    """Box at ``center`` (link frame, m) with half extents ``half`` (m), rotated by ``rotation``
    (quaternion xyzw, link frame), of ``density`` (kg/m³; None: the robot's)."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    density: float | None = None
    rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


Shape = Capsule | Sphere | Box


@dataclasses.dataclass(frozen=True)
class Link:
    """A rigid body attached to its parent by a chain of joints at one pivot.

    Attributes:
        name: label.
        parent: index of the parent link in :attr:`Robot.links`, -1 for the world.
        pivot: joint pivot in the parent link frame (m); the link frame sits at the pivot with the
            parent's orientation at zero joint angles.
        joints: the joints at the pivot, outermost first (several hinges become a chain with
            massless intermediate links, as dflex builds them). ``"free"`` as the only joint makes a
            floating base.
        shapes: geometry in the link frame; gives mass (at the robot's density) and contact points.
        rotation: initial orientation (quaternion xyzw) of a floating base in the world; ignored
            for other links, whose frames follow their parent's.
    """

    name: str
    parent: int
    pivot: tuple[float, float, float]
    joints: Sequence[Joint] | str
    shapes: Sequence[Shape]
    rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Robot:
    """A robot for :class:`ArticulatedSim`.

    Attributes:
        name: label.
        links: links in depth-first order (parents before children).
        density: shape density [kg/m³] (dflex used 1000 for every geom).
        limit_ke: joint-limit stiffness [N·m/rad].
        limit_kd: joint-limit damping [N·m·s/rad], applied at all times as in dflex.
        free_armature: armature of the floating-base DOFs, if any.
        actuated: names of the joints driven by actions, in action order.
        gear: force or torque per unit action for each actuated joint [N·m or N].
    """

    name: str
    links: Sequence[Link]
    density: float
    limit_ke: float
    limit_kd: float
    actuated: Sequence[str]
    gear: Sequence[float]
    free_armature: float = 0.0


def _normalize(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return (float(a[0]), float(a[1]), float(a[2]))


def _quat_matrix(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` of a unit quaternion (xyzw)."""
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _quat_from_to_z(d: np.ndarray) -> tuple[float, float, float, float]:
    """Quaternion (xyzw) rotating +z onto the unit vector ``d``."""
    z = np.array([0.0, 0.0, 1.0])
    c = float(np.dot(z, d))
    if c > 1.0 - 1e-12:
        return (0.0, 0.0, 0.0, 1.0)
    if c < -1.0 + 1e-12:
        return (1.0, 0.0, 0.0, 0.0)
    axis = np.cross(z, d)
    axis /= np.linalg.norm(axis)
    half = 0.5 * math.acos(c)
    s = math.sin(half)
    return (float(axis[0] * s), float(axis[1] * s), float(axis[2] * s), math.cos(half))


@dataclasses.dataclass
class BuiltRobot:
    """A robot turned into a single-world Newton builder plus the data the simulator needs."""

    builder: Any
    """``newton.ModelBuilder`` holding one world."""
    contact_body: np.ndarray
    """``(P,)`` int32: body index (within a world) of each contact point."""
    contact_local: np.ndarray
    """``(P, 3)`` float32: contact point in its body frame [m]."""
    contact_radius: np.ndarray
    """``(P,)`` float32: contact offset (sphere radius, 0 for box corners) [m]."""
    act_dofs: np.ndarray
    """``(A,)`` int64: DOF index (within a world) of each action."""
    gear: np.ndarray
    """``(A,)`` float32: force/torque per unit action."""
    joint_names: list[str]
    """Name of each DOF, in ``joint_qd`` order."""
    body_names: list[str]
    """Name of each body, in body order."""
    link_body: list[int]
    """Body index of each :class:`Link` (its last, massive body)."""
    total_mass: float
    """Sum of body masses [kg]."""
    balls: list[tuple[int, int, float, float]] = dataclasses.field(default_factory=list)
    """Ball joints as ``(parent body, child body, stiffness [N·m/rad], damping [N·m·s/rad])``."""


def build_robot(robot: Robot) -> BuiltRobot:
    """Turn ``robot`` into a one-world ``newton.ModelBuilder`` (z-up, gravity -9.81 m/s²)."""
    _warp()
    import newton
    import warp as wp

    b = newton.ModelBuilder(up_axis=newton.Axis.Z, gravity=(0.0, 0.0, -9.81))
    shape_cfg = newton.ModelBuilder.ShapeConfig(density=robot.density, has_shape_collision=False)
    contact_body: list[int] = []
    contact_local: list[tuple[float, float, float]] = []
    contact_radius: list[float] = []
    dof_names: list[str] = []
    armature: list[float] = []
    body_names: list[str] = []
    link_body: list[int] = []
    balls: list[tuple[int, int, float, float]] = []
    joints: list[int] = []
    big = 1.0e6

    for _li, link in enumerate(robot.links):
        parent_body = -1 if link.parent < 0 else link_body[link.parent]
        pivot = wp.transform(wp.vec3(*link.pivot), wp.quat_identity())
        if link.joints == "free":
            body = b.add_link(xform=wp.transform(wp.vec3(*link.pivot), wp.quat(*link.rotation)), label=link.name)
            body_names.append(link.name)
            joints.append(b.add_joint_free(body, parent=parent_body, label=f"{link.name}_free"))
            # the free joint's coordinates are the world pose of the link: start at the pivot
            qs = b.joint_q_start[-1]
            b.joint_q[qs : qs + 3] = list(link.pivot)
            b.joint_q[qs + 3 : qs + 7] = list(link.rotation)
            dof_names += [f"{link.name}_{c}" for c in ("vx", "vy", "vz", "wx", "wy", "wz")]
            armature += [robot.free_armature] * 6
        else:
            chain = list(link.joints)
            if not chain:
                raise ValueError(f"link {link.name!r} has no joint")
            prev = parent_body
            xform = pivot
            for ji, jt in enumerate(chain):
                last = ji == len(chain) - 1
                label = link.name if last else f"{link.name}_{jt.name or ji}"
                body = b.add_link(label=label)
                body_names.append(label)
                lo, hi = jt.limits if jt.limits is not None else (-big, big)
                limit_ke = robot.limit_ke if jt.limit_ke is None else jt.limit_ke
                limit_kd = robot.limit_kd if jt.limit_kd is None else jt.limit_kd
                if jt.kind == "ball":
                    # no limits (dflex); the spring -ke·imag(q_rel) - kd·ω_rel is applied as body
                    # torques by ArticulatedSim (see the ball_springs kernel)
                    joints.append(
                        b.add_joint_ball(
                            prev,
                            body,
                            parent_xform=xform,
                            armature=jt.armature,
                            damping=0.0,
                            stiffness=0.0,
                            label=jt.name or label,
                        )
                    )
                    dof_names += [f"{jt.name or label}_{c}" for c in "xyz"]
                    armature += [jt.armature] * 3
                    if jt.stiffness or jt.damping:
                        balls.append((prev, body, float(jt.stiffness), float(jt.damping)))
                    prev = body
                    xform = wp.transform_identity()
                    continue
                kwargs = dict(
                    parent_xform=xform,
                    axis=wp.vec3(*_normalize(jt.axis)),
                    stiffness=jt.stiffness,
                    rest_q=jt.rest,
                    damping=jt.damping + limit_kd,
                    limit_lower=lo,
                    limit_upper=hi,
                    limit_ke=limit_ke if jt.limits is not None else 0.0,
                    limit_kd=0.0,
                    armature=jt.armature,
                    target_ke=0.0,
                    target_kd=0.0,
                    label=jt.name or label,
                )
                if jt.kind == "hinge":
                    joints.append(b.add_joint_revolute(prev, body, **kwargs))
                elif jt.kind == "slide":
                    joints.append(b.add_joint_prismatic(prev, body, **kwargs))
                else:
                    raise ValueError(f"unknown joint kind {jt.kind!r} (choose hinge, slide, ball)")
                dof_names.append(jt.name or label)
                armature.append(jt.armature)
                prev = body
                xform = wp.transform_identity()
        link_body.append(body)
        for shape in link.shapes:
            if isinstance(shape, Capsule):
                p0 = np.asarray(shape.start, dtype=np.float64)
                p1 = np.asarray(shape.end, dtype=np.float64)
                d = p1 - p0
                half = 0.5 * float(np.linalg.norm(d))
                q = _quat_from_to_z(d / (2.0 * half))
                xf = wp.transform(wp.vec3(*(0.5 * (p0 + p1))), wp.quat(*q))
                b.add_shape_capsule(body, xform=xf, radius=shape.radius, half_height=half, cfg=shape_cfg)
                for p in (shape.start, shape.end):
                    contact_body.append(body)
                    contact_local.append(p)
                    contact_radius.append(shape.radius)
            elif isinstance(shape, Sphere):
                xf = wp.transform(wp.vec3(*shape.center), wp.quat_identity())
                b.add_shape_sphere(body, xform=xf, radius=shape.radius, cfg=shape_cfg)
                contact_body.append(body)
                contact_local.append(shape.center)
                contact_radius.append(shape.radius)
            elif isinstance(shape, Box):
                cfg = shape_cfg
                if shape.density is not None:
                    cfg = newton.ModelBuilder.ShapeConfig(density=shape.density, has_shape_collision=False)
                xf = wp.transform(wp.vec3(*shape.center), wp.quat(*shape.rotation))
                b.add_shape_box(body, xform=xf, hx=shape.half[0], hy=shape.half[1], hz=shape.half[2], cfg=cfg)
                rot = _quat_matrix(shape.rotation)
                for sx in (-1.0, 1.0):
                    for sy in (-1.0, 1.0):
                        for sz in (-1.0, 1.0):
                            corner = np.asarray(shape.center) + rot @ (np.array([sx, sy, sz]) * np.asarray(shape.half))
                            contact_body.append(body)
                            contact_local.append(tuple(float(c) for c in corner))
                            contact_radius.append(0.0)
            else:
                raise TypeError(f"unknown shape {shape!r}")
    b.add_articulation(joints, label=robot.name)
    b.joint_armature = list(armature)  # also sets the floating-base armature, which add_joint_free has no knob for
    missing = [n for n in robot.actuated if n not in dof_names]
    if missing:
        raise ValueError(f"actuated joints {missing} not in robot {robot.name!r} (DOFs: {dof_names})")
    if len(robot.gear) != len(robot.actuated):
        raise ValueError("gear must have one entry per actuated joint")
    return BuiltRobot(
        builder=b,
        contact_body=np.asarray(contact_body, dtype=np.int32),
        contact_local=np.asarray(contact_local, dtype=np.float32).reshape(-1, 3),
        contact_radius=np.asarray(contact_radius, dtype=np.float32),
        act_dofs=np.asarray([dof_names.index(n) for n in robot.actuated], dtype=np.int64),
        gear=np.asarray(robot.gear, dtype=np.float32),
        joint_names=dof_names,
        body_names=body_names,
        link_body=link_body,
        total_mass=float(sum(b.body_mass)),
        balls=balls,
    )


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    if _KERNELS:
        return _KERNELS
    wp = _warp()

    @wp.kernel
    def ground_contact(
        body_q: wp.array(dtype=wp.transform),
        body_qd: wp.array(dtype=wp.spatial_vector),
        body_com: wp.array(dtype=wp.vec3),
        point_body: wp.array(dtype=wp.int32),
        point_local: wp.array(dtype=wp.vec3),
        point_radius: wp.array(dtype=float),
        points_per_world: int,
        bodies_per_world: int,
        ke: float,
        kd: float,
        kf: float,
        mu: float,
        body_f: wp.array(dtype=wp.spatial_vector),
    ):
        tid = wp.tid()
        world = tid // points_per_world
        p = tid - world * points_per_world
        body = world * bodies_per_world + point_body[p]
        X = body_q[body]
        x = wp.transform_point(X, point_local[p])
        c = x[2] - point_radius[p]
        if c >= 0.0:
            return
        com = wp.transform_point(X, body_com[body])
        twist = body_qd[body]
        v_com = wp.spatial_top(twist)
        omega = wp.spatial_bottom(twist)
        r = x - com
        v = v_com + wp.cross(omega, r)
        n = wp.vec3(0.0, 0.0, 1.0)
        vn = v[2]
        vt = v - n * vn
        depth = -c
        fn = depth * (ke + kd * wp.max(-vn, 0.0))
        # dflex friction: |ft| = min(kf |vt|, mu ke depth) along -vt. Written without normalising vt
        # so that the sticking regime (ft = -kf vt) has a gradient at vt = 0.
        bound = mu * ke * depth
        vt_len = wp.length(vt)
        ft = -kf * vt
        if kf * vt_len > bound:
            ft = -vt * (bound / vt_len)
        f = n * fn + ft
        wp.atomic_add(body_f, body, wp.spatial_vector(f, wp.cross(r, f)))

    @wp.kernel
    def scatter_actions(
        act: wp.array2d(dtype=float),
        act_dofs: wp.array(dtype=wp.int32),
        gear: wp.array(dtype=float),
        dofs_per_world: int,
        joint_f: wp.array(dtype=float),
    ):
        w, i = wp.tid()
        joint_f[w * dofs_per_world + act_dofs[i]] = act[w, i] * gear[i]

    @wp.kernel
    def ball_springs(
        body_q: wp.array(dtype=wp.transform),
        body_qd: wp.array(dtype=wp.spatial_vector),
        parent: wp.array(dtype=wp.int32),
        child: wp.array(dtype=wp.int32),
        ke: wp.array(dtype=float),
        kd: wp.array(dtype=float),
        joints_per_world: int,
        bodies_per_world: int,
        body_f: wp.array(dtype=wp.spatial_vector),
    ):
        # passive ball joint: torque -ke·imag(q_rel) (parent frame, to world) - kd·(ω_child - ω_parent)
        # on the child, the opposite on the parent (rest frames are aligned, so q_rel = q_p⁻¹ q_c)
        tid = wp.tid()
        world = tid // joints_per_world
        j = tid - world * joints_per_world
        p = world * bodies_per_world + parent[j]
        c = world * bodies_per_world + child[j]
        qp = wp.transform_get_rotation(body_q[p])
        qc = wp.transform_get_rotation(body_q[c])
        rel = wp.mul(wp.quat_inverse(qp), qc)
        v = wp.vec3(rel[0], rel[1], rel[2])
        tau = wp.quat_rotate(qp, -ke[j] * v) - kd[j] * (wp.spatial_bottom(body_qd[c]) - wp.spatial_bottom(body_qd[p]))
        zero = wp.vec3(0.0, 0.0, 0.0)
        wp.atomic_add(body_f, c, wp.spatial_vector(zero, tau))
        wp.atomic_add(body_f, p, wp.spatial_vector(zero, -tau))

    _KERNELS.update(ground_contact=ground_contact, scatter_actions=scatter_actions, ball_springs=ball_springs)
    return _KERNELS


# --------------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ContactParams:
    """dflex ground-contact material (one for all shapes; the ground has none)."""

    ke: float
    """Normal stiffness [N/m]."""
    kd: float
    """Normal damping per unit depth [N·s/m²]."""
    kf: float
    """Friction slope in the sticking regime [N·s/m]."""
    mu: float
    """Coulomb coefficient; the friction bound is ``mu * ke * depth``."""


_TILE_LOCK = threading.Lock()
"""Serialises Newton's tile kernels (the fused inertia-matrix build and Cholesky factorisation, and
their adjoints) across threads: on x86-64 Warp's CPU tile code keeps its shared-memory pointer in a
process-wide static variable, so two blocks must not run a tile kernel at the same time."""

MIN_WORLDS_PER_THREAD = 32
"""Worlds per thread below which an automatic split is not tried. On 2 CPU cores two blocks of 32
humanoid worlds stepped 1.47 times as fast forward as one block of 64 and 1.17 times with
gradients (the muscle humanoid 1.13 and 0.96; docs/performance.md)."""


def block_count(threads: int | None, num_envs: int, device: torch.device) -> int:
    """Number of world blocks (one CPU thread each) for ``num_envs`` worlds on ``device``.

    ``threads`` None picks torch's thread count (a run's ``--threads``) with at least
    :data:`MIN_WORLDS_PER_THREAD` worlds per block; a number is taken as given (at most one block
    per world). CUDA sims are one block.
    """
    if device.type != "cpu":
        return 1
    if threads is None:
        return max(1, min(torch.get_num_threads(), num_envs // MIN_WORLDS_PER_THREAD))
    return max(1, min(threads, num_envs))


class _WorldBlock:
    """``num_envs`` copies of one robot in one Newton model: the unit that one CPU thread steps.

    :class:`ArticulatedSim` holds one block per thread; a block's worlds are contiguous rows of the
    sim's state. Shapes below are the block's own (``N`` = its ``num_envs``). With ``parallel``, the
    block takes :data:`_TILE_LOCK` around the substep that rebuilds the mass matrix and around that
    substep's adjoint.
    """

    def __init__(
        self,
        robot: Robot,
        built: BuiltRobot,
        num_envs: int,
        device: torch.device,
        *,
        dt: float,
        substeps: int,
        contact: ContactParams | None,
        muscles: Any,
        muscle_gain: float,
        muscle_bias: float,
        parallel: bool,
    ) -> None:
        wp = _warp()
        import newton

        self.num_envs = num_envs
        self.torch_device = device
        self.wp_device = wp.device_from_torch(device)
        self.dt = dt
        self.substeps = substeps
        self.contact = contact
        self.built = built
        self.parallel = parallel
        one = built.builder
        self.bodies_per_world = one.body_count
        self.nq = one.joint_coord_count
        self.nqd = one.joint_dof_count
        self.act_dim = muscles.count if muscles is not None else len(built.act_dofs)
        world = newton.ModelBuilder(up_axis=newton.Axis.Z, gravity=(0.0, 0.0, -9.81))
        world.replicate(one, num_envs)
        # requires_grad: the solver allocates its mass-matrix buffers with gradients only if the model has them,
        # and the adjoint of its linear solve silently returns nothing without them.
        self.model = world.finalize(device=self.wp_device, requires_grad=True)
        # use_tile_gemm: the joint-space inertia H = J^T M J is accumulated body by body from the 6x6
        # diagonal blocks of M (fused with its Cholesky factorisation) instead of two dense products
        # with the whole (6B x 6B) M; on the CPU a humanoid control step gets about 3x faster, with
        # trajectories and gradients equal up to float rounding (tests/test_physics.py).
        self.solver = newton.solvers.SolverFeatherstone(
            self.model, angular_damping=0.0, update_mass_matrix_interval=substeps, use_tile_gemm=True
        )
        k = _kernels()
        self._contact_kernel = k["ground_contact"]
        self._scatter_kernel = k["scatter_actions"]
        dev = self.wp_device
        self._points = len(built.contact_body)
        self._point_body = wp.array(built.contact_body, dtype=wp.int32, device=dev)
        self._point_local = wp.array(built.contact_local, dtype=wp.vec3, device=dev)
        self._point_radius = wp.array(built.contact_radius, dtype=float, device=dev)
        self._act_dofs = wp.array(built.act_dofs.astype(np.int32), dtype=wp.int32, device=dev)
        self._muscles = None
        self._muscles_on = True
        if muscles is not None:
            from pwm_bench.envs.muscles import MuscleForces

            self._muscles = MuscleForces(muscles, num_envs, self.bodies_per_world, dev, muscle_gain, muscle_bias)
        self._balls = len(built.balls)
        if self._balls:
            cols = list(zip(*built.balls, strict=True))
            self._ball_parent = wp.array(np.asarray(cols[0], dtype=np.int32), dtype=wp.int32, device=dev)
            self._ball_child = wp.array(np.asarray(cols[1], dtype=np.int32), dtype=wp.int32, device=dev)
            self._ball_ke = wp.array(np.asarray(cols[2], dtype=np.float32), dtype=float, device=dev)
            self._ball_kd = wp.array(np.asarray(cols[3], dtype=np.float32), dtype=float, device=dev)
        self._gear = wp.array(built.gear, dtype=float, device=dev)
        # forward (no tape): two ping-pong states
        self._fwd = [self.model.state(requires_grad=False) for _ in range(2)]
        self._fwd_control = self.model.control(requires_grad=False)
        # backward (taped re-run): one state per substep
        self._bwd: list[Any] | None = None
        self._bwd_control: Any = None
        self._bwd_act: Any = None
        self._fwd_act = wp.zeros((num_envs, self.act_dim), dtype=float, device=dev)
        self.graph_capture = False
        self._graph: Any = None
        self._stepped = False  # a forward step has run (every kernel module is loaded)
        self._holds_tile_lock = False
        self._tapes: dict[bool, Any] = {}  # by self._muscles_on: the recorded control step

    def contact_distances(self, q: torch.Tensor) -> torch.Tensor:
        """Signed ground distance ``z - r`` of every contact point, ``(N, P)`` [m], at ``q`` ``(N, nq)``."""
        wp = _warp()
        import newton

        s = self._fwd[0]
        wp.to_torch(s.joint_q).copy_(q.detach().reshape(-1))
        newton.eval_fk(self.model, s.joint_q, s.joint_qd, s)
        X = wp.to_torch(s.body_q).reshape(self.num_envs, self.bodies_per_world, 7)
        body = torch.as_tensor(self.built.contact_body, dtype=torch.long, device=X.device)
        local = torch.as_tensor(self.built.contact_local, device=X.device)
        world = X[:, body, 0:3] + quat_rotate(X[:, body, 3:7], local.expand(X.shape[0], -1, -1))
        radius = torch.as_tensor(self.built.contact_radius, device=X.device)
        return (world[..., 2] - radius).to(self.torch_device)

    # -- stepping --------------------------------------------------------------------------------

    def _launch_contact(self, body_q: Any, body_qd: Any, body_f: Any) -> None:
        wp = _warp()
        if self.contact is None or self._points == 0:
            return
        c = self.contact
        wp.launch(
            self._contact_kernel,
            dim=self.num_envs * self._points,
            inputs=[
                body_q,
                body_qd,
                self.model.body_com,
                self._point_body,
                self._point_local,
                self._point_radius,
                self._points,
                self.bodies_per_world,
                float(c.ke),
                float(c.kd),
                float(c.kf),
                float(c.mu),
            ],
            outputs=[body_f],
            device=self.wp_device,
        )

    def _launch_internal(self, body_q: Any, body_qd: Any, body_f: Any, act: Any) -> None:
        """Muscle wrenches (actions as activations) and passive ball-joint torques into ``body_f``."""
        wp = _warp()
        if self._muscles is not None and self._muscles_on:
            self._muscles.launch(body_q, self.model.body_com, act, body_f)
        if self._balls:
            wp.launch(
                _kernels()["ball_springs"],
                dim=self.num_envs * self._balls,
                inputs=[
                    body_q,
                    body_qd,
                    self._ball_parent,
                    self._ball_child,
                    self._ball_ke,
                    self._ball_kd,
                    self._balls,
                    self.bodies_per_world,
                ],
                outputs=[body_f],
                device=self.wp_device,
            )

    def _launch_actions(self, act: Any, joint_f: Any) -> None:
        wp = _warp()
        joint_f.zero_()
        if self._muscles is None and self.act_dim:
            wp.launch(
                self._scatter_kernel,
                dim=(self.num_envs, self.act_dim),
                inputs=[act, self._act_dofs, self._gear, self.nqd],
                outputs=[joint_f],
                device=self.wp_device,
            )

    def _solver_step(self, i: int, s_in: Any, s_out: Any, control: Any, sub_dt: float) -> None:
        """Substep ``i`` of a control step; substep 0 rebuilds the mass matrix (a tile kernel)."""
        if i == 0 and self.parallel:
            with _TILE_LOCK:
                self.solver.step(s_in, s_out, control, None, sub_dt)
        else:
            self.solver.step(s_in, s_out, control, None, sub_dt)

    def _fwd_substeps(self, lo: int, hi: int) -> None:
        """Substeps ``lo .. hi-1`` of a control step on the forward (untaped) buffers: state 0 in,
        state ``substeps % 2`` out; substep 0 also runs forward kinematics and scatters the actions."""
        import newton

        s = self._fwd
        if lo == 0:
            newton.eval_fk(self.model, s[0].joint_q, s[0].joint_qd, s[0])
            self._launch_actions(self._fwd_act, self._fwd_control.joint_f)
        self.solver._step = lo  # the mass matrix is rebuilt at substep 0 of every control step only
        sub_dt = self.dt / self.substeps
        for i in range(lo, hi):
            s_in, s_out = s[i % 2], s[(i + 1) % 2]
            s_in.body_f.zero_()
            self._launch_contact(s_in.body_q, s_in.body_qd, s_in.body_f)
            self._launch_internal(s_in.body_q, s_in.body_qd, s_in.body_f, self._fwd_act)
            self._solver_step(i, s_in, s_out, self._fwd_control, sub_dt)

    @property
    def _graph_from(self) -> int:
        """First substep of the captured graph: 1 for CPU blocks stepped side by side (substep 0
        rebuilds the mass matrix with a tile kernel, which runs under :data:`_TILE_LOCK`), else 0."""
        return 1 if self.parallel and not self.wp_device.is_cuda else 0

    @property
    def needs_capture(self) -> bool:
        """Whether the next :meth:`forward` captures its graph (Warp's capture is process-wide, so
        blocks capture one at a time, while no other block launches anything)."""
        return self.graph_capture and self._graph is None and self._graph_from < self.substeps

    def forward(self, q: torch.Tensor, qd: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step without gradients; returns new ``(q, qd)`` tensors.

        With :attr:`graph_capture`, the step's launches are captured once into a Warp graph (a CUDA
        graph on GPUs, Warp's CPU graph on the CPU) and replayed from then on: the same kernels on
        the same buffers, with no Python per launch. The first call runs without capture, so that
        every kernel module is loaded before it.
        """
        wp = _warp()
        s = self._fwd
        wp.to_torch(s[0].joint_q).copy_(q.detach().reshape(-1))
        wp.to_torch(s[0].joint_qd).copy_(qd.detach().reshape(-1))
        wp.to_torch(self._fwd_act).copy_(act.detach())
        lo = self._graph_from
        if not self.graph_capture or not self._stepped:
            self._fwd_substeps(0, self.substeps)
        else:
            if lo:
                self._fwd_substeps(0, lo)
            if lo < self.substeps:
                if self._graph is None:
                    with wp.ScopedCapture(device=self.wp_device) as cap:
                        self._fwd_substeps(lo, self.substeps)
                    self._graph = cap.graph
                wp.capture_launch(self._graph)
        self._stepped = True
        out = s[self.substeps % 2]
        q_out = wp.to_torch(out.joint_q).reshape(self.num_envs, self.nq).clone()
        qd_out = wp.to_torch(out.joint_qd).reshape(self.num_envs, self.nqd).clone()
        return q_out, qd_out

    def _ensure_backward_buffers(self) -> None:
        if self._bwd is not None:
            return
        wp = _warp()
        self._bwd = [self.model.state(requires_grad=True) for _ in range(self.substeps + 1)]
        self._bwd_control = self.model.control(requires_grad=True)
        self._bwd_act = wp.zeros((self.num_envs, self.act_dim), dtype=float, device=self.wp_device, requires_grad=True)

    def _control_step(self, tape: Any) -> None:
        """The control step on the backward buffers (state 0 in, state ``substeps`` out), recording
        the tape's callbacks when ``tape`` is the one being recorded."""
        import newton

        s = self._bwd
        assert s is not None
        self._launch_actions(self._bwd_act, self._bwd_control.joint_f)
        self.solver._step = 0
        newton.eval_fk(self.model, s[0].joint_q, s[0].joint_qd, s[0])
        sub_dt = self.dt / self.substeps
        for i in range(self.substeps):
            s_in, s_out = s[i], s[i + 1]
            s_in.body_f.zero_()
            self._launch_contact(s_in.body_q, s_in.body_qd, s_in.body_f)
            self._launch_internal(s_in.body_q, s_in.body_qd, s_in.body_f, self._bwd_act)
            locked = tape is not None and i == 0 and self.parallel
            if locked:  # the adjoints run in reverse: the lock is taken after the step's, released before
                tape.record_func(backward=self._release_tile_lock, arrays=[])
            self._solver_step(i, s_in, s_out, self._bwd_control, sub_dt)
            if tape is not None:
                self._restore_external_forces(tape, s_in, s_out)
            if locked:
                tape.record_func(backward=self._acquire_tile_lock, arrays=[])

    @property
    def needs_recording(self) -> bool:
        """Whether the next :meth:`rerun` records a tape (Warp's recording tape is process-wide, so
        blocks record one at a time)."""
        return self._muscles_on not in self._tapes

    def rerun(self, q: torch.Tensor, qd: torch.Tensor, act: torch.Tensor) -> None:
        """Re-run the control step at input ``(q, qd, act)`` on the backward buffers.

        The first re-run records a Warp tape, which later ones reuse instead of recording anew: every
        re-run launches the same kernels on the same arrays (the buffers are the block's own and
        nothing is allocated per step), so the recorded launches stay valid and only the values in
        the arrays change. A tape is kept per muscle switch (:meth:`ArticulatedSim.muscles_disabled`).
        """
        wp = _warp()
        self._ensure_backward_buffers()
        s = self._bwd
        assert s is not None
        wp.to_torch(s[0].joint_q).copy_(q.detach().reshape(-1))
        wp.to_torch(s[0].joint_qd).copy_(qd.detach().reshape(-1))
        wp.to_torch(self._bwd_act).copy_(act.detach())
        if self.needs_recording:
            tape = wp.Tape()
            with tape:
                self._control_step(tape)
            self._tapes[self._muscles_on] = tape
        else:
            self._control_step(None)

    def _acquire_tile_lock(self) -> None:
        _TILE_LOCK.acquire()
        self._holds_tile_lock = True

    def _release_tile_lock(self) -> None:
        self._holds_tile_lock = False
        _TILE_LOCK.release()

    def adjoint(
        self, grad_q_out: torch.Tensor, grad_qd_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Back-propagate the last :meth:`rerun` from the output gradients ``(N, nq)``, ``(N, nqd)``.

        Returns the gradients with respect to its ``q``, ``qd`` and ``act``.
        """
        wp = _warp()
        s = self._bwd
        assert s is not None
        tape = self._tapes[self._muscles_on]
        out = s[self.substeps]
        wp.to_torch(out.joint_q.grad).copy_(grad_q_out.reshape(-1))
        wp.to_torch(out.joint_qd.grad).copy_(grad_qd_out.reshape(-1))
        try:
            tape.backward()
        finally:
            if self._holds_tile_lock:
                self._release_tile_lock()
        g_q = wp.to_torch(s[0].joint_q.grad).reshape(self.num_envs, self.nq).clone()
        g_qd = wp.to_torch(s[0].joint_qd.grad).reshape(self.num_envs, self.nqd).clone()
        g_act = wp.to_torch(self._bwd_act.grad).clone()
        tape.zero()
        return g_q, g_qd, g_act

    def backward(
        self, q: torch.Tensor, qd: torch.Tensor, act: torch.Tensor, grad_q_out: torch.Tensor, grad_qd_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`rerun` then :meth:`adjoint`."""
        self.rerun(q, qd, act)
        return self.adjoint(grad_q_out, grad_qd_out)

    @staticmethod
    def _restore_external_forces(tape: Any, s_in: Any, s_out: Any) -> None:
        """Work around an adjoint of Newton's Featherstone solver that re-reads overwritten data.

        ``eval_rigid_tau`` reads the external wrenches ``body_f_ext`` and overwrites them in place
        with their converted form; its adjoint replays the forward on the converted values, so the
        derivative of each wrench's lever arm with respect to the body poses comes out wrong (4-8 %
        low on a muscle-driven floating pair, up to about 1 % on the contact envs). Just before that
        adjoint runs, this puts the unconverted wrenches (still in ``s_in.body_f``) back.
        """
        wp = _warp()
        ext = getattr(s_out, "body_f_ext", None)
        if ext is None:
            return
        tape.record_func(backward=lambda: wp.copy(ext, s_in.body_f), arrays=[])


class ArticulatedSim:
    """``num_envs`` copies of one robot, stepped in control steps of ``dt`` seconds.

    State per world: ``joint_q`` ``(nq,)`` and ``joint_qd`` ``(nqd,)`` in Newton's conventions (a free
    joint has ``q = (p [m], quat xyzw)`` and ``qd = (v_com [m/s], omega [rad/s])``, both in world
    axes). :meth:`step` maps ``(q, qd, act)`` with shapes ``(N, nq)``, ``(N, nqd)``, ``(N, A)``
    (torch float32 on :attr:`device`) to the next ``(q, qd)``; it is differentiable when any input
    requires grad.

    Threads. Warp runs a CPU kernel on one thread, and releases Python's GIL while it runs. On the
    CPU the worlds are therefore split into :func:`block_count` blocks (``threads``; None: torch's
    thread count, at least :data:`MIN_WORLDS_PER_THREAD` worlds each), each a Newton model of its
    own, stepped side by side by a thread pool. Worlds do not interact, so the results are the same
    for any split, bit for bit. The backward pass's re-runs and adjoints run side by side too, once
    each block has recorded its tape (one block after another: Warp's recording tape is process-wide).
    """

    def __init__(
        self,
        robot: Robot,
        num_envs: int,
        device: str | torch.device,
        *,
        dt: float,
        substeps: int,
        contact: ContactParams | None,
        muscles: Any = None,
        muscle_gain: float = 1.0,
        muscle_bias: float = 0.0,
        threads: int | None = None,
    ) -> None:
        wp = _warp()
        self.robot = robot
        self.num_envs = num_envs
        self.torch_device = torch.device(device)
        self.wp_device = wp.device_from_torch(self.torch_device)
        self.dt = dt
        self.substeps = substeps
        self.contact = contact
        self.built = build_robot(robot)
        # with muscles (a MuscleSet), the actions are muscle activations instead of joint torques
        if muscles is not None and len(self.built.act_dofs):
            raise ValueError(f"robot {robot.name!r}: actions drive either joints or muscles, not both")
        n = block_count(threads, num_envs, self.torch_device)
        sizes = [num_envs // n + (i < num_envs % n) for i in range(n)]
        self.threads = n
        """World blocks, one CPU thread each."""
        self._blocks = [
            _WorldBlock(
                robot,
                self.built,
                size,
                self.torch_device,
                dt=dt,
                substeps=substeps,
                contact=contact,
                muscles=muscles,
                muscle_gain=muscle_gain,
                muscle_bias=muscle_bias,
                parallel=n > 1,
            )
            for size in sizes
        ]
        first = self._blocks[0]
        self.bodies_per_world, self.nq, self.nqd = first.bodies_per_world, first.nq, first.nqd
        self.act_dim = first.act_dim
        self._rows = np.cumsum([0, *sizes]).tolist()
        self._pool: ThreadPoolExecutor | None = None
        if n > 1:
            self._pool = ThreadPoolExecutor(n - 1, thread_name_prefix="pwm-bench-sim")
        self._warm: set[str] = set()

    # -- info ------------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The Newton model of the first block of worlds (all blocks hold the same robot)."""
        return self._blocks[0].model

    @property
    def graph_capture(self) -> bool:
        """Capture the forward control step in a Warp graph and replay it (see :meth:`_WorldBlock.forward`)."""
        return self._blocks[0].graph_capture

    @graph_capture.setter
    def graph_capture(self, value: bool) -> None:
        for b in self._blocks:
            b.graph_capture = value

    def default_q(self) -> torch.Tensor:
        """Joint coordinates of the model at build time, ``(nq,)``."""
        return torch.as_tensor(self.built.builder.joint_q, dtype=torch.float32, device=self.torch_device)

    def body_com(self) -> torch.Tensor:
        """Centre of mass of each body in its frame, ``(bodies_per_world, 3)`` [m]."""
        return torch.as_tensor(np.asarray(self.built.builder.body_com, dtype=np.float32), device=self.torch_device)

    def contact_distances(self, q: torch.Tensor) -> torch.Tensor:
        """Signed ground distance ``z - r`` of every contact point at coordinates ``q`` ``(N, nq)``.

        Returns ``(N, P)`` metres; negative entries are penetrating, i.e. produce contact forces.
        """
        return torch.cat([b.contact_distances(q[lo:hi]) for b, lo, hi in self._spans()])

    # -- stepping --------------------------------------------------------------------------------

    def _spans(self) -> list[tuple[_WorldBlock, int, int]]:
        return [(b, self._rows[i], self._rows[i + 1]) for i, b in enumerate(self._blocks)]

    def _each(self, what: str, fn: Any) -> list[Any]:
        """``fn(block, lo, hi)`` for every block, side by side once ``what`` has run one by one.

        The first call of each kind runs the blocks in turn, so that Warp loads (and may compile)
        every kernel module from one thread.
        """
        spans = self._spans()
        if self._pool is None or what not in self._warm:
            out = [fn(*span) for span in spans]
            self._warm.add(what)
            return out

        def in_worker(*span: Any) -> Any:
            with torch.no_grad():  # grad mode is per thread; the blocks' tensor work never needs a graph
                return fn(*span)

        futures = [self._pool.submit(in_worker, *span) for span in spans[1:]]
        try:
            first = fn(*spans[0])
        finally:
            wait(futures)
        return [first, *(f.result() for f in futures)]

    def forward(self, q: torch.Tensor, qd: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step without gradients; returns new ``(q, qd)`` tensors."""
        if len(self._blocks) == 1:
            return self._blocks[0].forward(q, qd, act)
        if any(b.needs_capture for b in self._blocks):  # one by one: Warp's graph capture is process-wide
            out = [b.forward(q[lo:hi], qd[lo:hi], act[lo:hi]) for b, lo, hi in self._spans()]
        else:
            out = self._each("forward", lambda b, lo, hi: b.forward(q[lo:hi], qd[lo:hi], act[lo:hi]))
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

    def backward(
        self,
        q: torch.Tensor,
        qd: torch.Tensor,
        act: torch.Tensor,
        grad_q_out: torch.Tensor,
        grad_qd_out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vector-Jacobian product of one control step at input ``(q, qd, act)``.

        Re-runs the step (recorded on a Warp tape the first time) and returns the gradients with
        respect to ``q``, ``qd`` and ``act`` given the gradients of the outputs.
        """
        if len(self._blocks) == 1:
            return self._blocks[0].backward(q, qd, act, grad_q_out, grad_qd_out)
        if any(b.needs_recording for b in self._blocks):
            for b, lo, hi in self._spans():  # one by one: Warp's recording tape is process-wide
                b.rerun(q[lo:hi], qd[lo:hi], act[lo:hi])
            out = self._each("adjoint", lambda b, lo, hi: b.adjoint(grad_q_out[lo:hi], grad_qd_out[lo:hi]))
        else:
            out = self._each(
                "backward",
                lambda b, lo, hi: b.backward(q[lo:hi], qd[lo:hi], act[lo:hi], grad_q_out[lo:hi], grad_qd_out[lo:hi]),
            )
        return tuple(torch.cat([o[k] for o in out]) for k in range(3))  # type: ignore[return-value]

    @property
    def has_muscles(self) -> bool:
        """Whether actions drive muscles (a :class:`~pwm_bench.envs.muscles.MuscleSet`)."""
        return self._blocks[0]._muscles is not None

    @contextlib.contextmanager
    def muscles_disabled(self) -> Iterator[None]:
        """Within the block, control steps apply no muscle forces (for profiling the muscle kernel's cost)."""
        saved = [(b._graph, b._muscles_on) for b in self._blocks]
        for b in self._blocks:
            b._graph, b._muscles_on = None, False
        try:
            yield
        finally:
            for b, (graph, _) in zip(self._blocks, saved, strict=True):
                b._muscles_on, b._graph = True, graph

    def step(self, q: torch.Tensor, qd: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step; differentiable (through :class:`StepFunction`) when an input requires grad."""
        if torch.is_grad_enabled() and (q.requires_grad or qd.requires_grad or act.requires_grad):
            return StepFunction.apply(self, q, qd, act)
        return self.forward(q, qd, act)

    def close(self) -> None:
        """Stop the worker threads (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class StepFunction(torch.autograd.Function):
    """torch autograd node of one control step; the backward pass re-runs the step and runs its tape backward."""

    @staticmethod
    def forward(ctx: Any, sim: ArticulatedSim, q: torch.Tensor, qd: torch.Tensor, act: torch.Tensor) -> Any:
        ctx.sim = sim
        ctx.save_for_backward(q.detach().clone(), qd.detach().clone(), act.detach().clone())
        q_out, qd_out = sim.forward(q, qd, act)
        # worlds that blew up (NaN/inf) are reset by the env; their rows get zero gradient
        ctx.invalid = ~(torch.isfinite(q_out).all(-1) & torch.isfinite(qd_out).all(-1))
        return q_out, qd_out

    @staticmethod
    def backward(ctx: Any, grad_q: torch.Tensor | None, grad_qd: torch.Tensor | None) -> Any:
        sim: ArticulatedSim = ctx.sim
        q, qd, act = ctx.saved_tensors
        if grad_q is None:
            grad_q = torch.zeros_like(q)
        if grad_qd is None:
            grad_qd = torch.zeros_like(qd)
        g_q, g_qd, g_act = sim.backward(q, qd, act, grad_q.contiguous(), grad_qd.contiguous())
        if bool(ctx.invalid.any()):
            rows = ctx.invalid.unsqueeze(-1)
            g_q, g_qd, g_act = (g.masked_fill(rows, 0.0) for g in (g_q, g_qd, g_act))
        return None, g_q, g_qd, g_act
