"""Reader for the MASS musculoskeletal format (skeleton XML + muscle XML), as used by DiffRL's SNU humanoid.

The skeleton file (``human.xml`` in MASS) lists ``<Node name= parent=>`` elements, each with a
``<Body type="Box" mass= size=>`` and a ``<Joint type=...>``; both carry a ``<Transformation
linear="9 values, row-major 3x3" translation="x y z">`` in **world** coordinates of the rest pose
(y up). The muscle file (``muscle284.xml``) lists ``<Unit name= f0= lm= lt= pen_angle= lmax=>``
elements with ``<Waypoint body= p="x y z">`` children, also in world coordinates.

:func:`load_mass` keeps a subset of nodes (by default the 11 lower-body nodes of DiffRL's
``SNUHumanoid``), keeps the muscle units whose waypoints all lie on kept bodies (152 of 284 for the
public MASS files) and expresses every waypoint in the joint frame of its body:
``p_local = R_jᵀ (p_world - t_j)`` for the joint transform ``(R_j, t_j)``. Lengths are metres,
masses kilograms, forces newtons.

Malformed or missing files raise :class:`MassFormatError` naming the file and the element.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pwm_bench.errors import UsageError

LOWER_BODY: tuple[str, ...] = (
    "Pelvis",
    "FemurR",
    "TibiaR",
    "TalusR",
    "FootThumbR",
    "FootPinkyR",
    "FemurL",
    "TibiaL",
    "TalusL",
    "FootThumbL",
    "FootPinkyL",
)
"""The nodes DiffRL's SNU humanoid keeps (spine, torso, neck, head and arms are dropped)."""

JOINT_TYPES = ("Free", "Ball", "Revolute", "Prismatic", "Weld")


class MassFormatError(UsageError):
    """A MASS file is missing or malformed; the message names the file and the element."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """Rigid transform in the rest pose: rotation ``R`` (3, 3) and translation ``t`` (3,) [m]."""

    R: np.ndarray
    t: np.ndarray

    def inverse_apply(self, p: np.ndarray) -> np.ndarray:
        """``Rᵀ (p - t)``: a world point ``(3,)`` in this frame."""
        return self.R.T @ (np.asarray(p, dtype=np.float64) - self.t)


@dataclasses.dataclass(frozen=True)
class MassNode:
    """One skeleton node: a box body and the joint to its parent.

    Attributes:
        name: node name.
        parent: parent node name (None for the root).
        mass: body mass [kg].
        size: box edge lengths ``(3,)`` [m].
        body: body transform in the world rest pose.
        joint_type: one of :data:`JOINT_TYPES`.
        joint: joint transform in the world rest pose.
        axis: hinge axis ``(3,)`` in the joint frame (Revolute/Prismatic), else None.
        lower: lower joint limit(s) from the file (rad), or None.
        upper: upper joint limit(s), or None.
        contact: the file's ``contact`` flag (DiffRL ignores it).
    """

    name: str
    parent: str | None
    mass: float
    size: np.ndarray
    body: Transform
    joint_type: str
    joint: Transform
    axis: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    contact: bool = False


@dataclasses.dataclass(frozen=True)
class MassMuscle:
    """One muscle-tendon unit.

    Attributes:
        name: unit name.
        f0: maximum isometric force [N].
        lm, lt, pen_angle, lmax: the file's fibre length, tendon length, pennation angle and
            maximum length parameters (unused by the linear dflex model).
        bodies: body name of each waypoint.
        points: ``(W, 3)`` waypoints; world coordinates from :func:`parse_muscles`, joint-frame
            coordinates of their body after :func:`load_mass`.
    """

    name: str
    f0: float
    lm: float
    lt: float
    pen_angle: float
    lmax: float
    bodies: tuple[str, ...]
    points: np.ndarray


@dataclasses.dataclass(frozen=True)
class MassModel:
    """The kept skeleton and muscles.

    Attributes:
        nodes: kept nodes, parents before children, in file order.
        muscles: kept units in file order (action ``i`` drives ``muscles[i]``); points in the
            joint frame of their body.
        total_units: units in the muscle file before filtering.
    """

    nodes: tuple[MassNode, ...]
    muscles: tuple[MassMuscle, ...]
    total_units: int

    def node_index(self, name: str) -> int:
        """Index of node ``name`` in :attr:`nodes`."""
        for i, n in enumerate(self.nodes):
            if n.name == name:
                return i
        raise KeyError(name)

    def rest_points(self, unit: MassMuscle) -> np.ndarray:
        """``(W, 3)`` world rest-pose positions [m] of ``unit``'s waypoints (stored in joint frames)."""
        joints = {n.name: n.joint for n in self.nodes}
        return np.stack([joints[b].R @ p + joints[b].t for b, p in zip(unit.bodies, unit.points, strict=True)])

    def rest_lengths(self) -> np.ndarray:
        """``(M,)`` path length of each muscle in the rest pose [m] (all segments, via points included)."""
        return np.asarray(
            [float(np.linalg.norm(np.diff(self.rest_points(u), axis=0), axis=1).sum()) for u in self.muscles]
        )

    def muscle_links(self) -> list[list[int]]:
        """Per muscle, the node index of each waypoint."""
        index = {n.name: i for i, n in enumerate(self.nodes)}
        return [[index[b] for b in m.bodies] for m in self.muscles]


# --------------------------------------------------------------------------------------------------
# parsing


def _root(path: Path, tag: str) -> ET.Element:
    if not path.is_file():
        raise MassFormatError(f"{path}: file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise MassFormatError(f"{path}: not well-formed XML ({exc})") from None
    if root.tag != tag:
        raise MassFormatError(f"{path}: the root element is <{root.tag}>, expected <{tag}>")
    return root


def _floats(path: Path, where: str, el: ET.Element, attr: str, count: int | None) -> np.ndarray:
    raw = el.get(attr)
    if raw is None:
        raise MassFormatError(f"{path}: {where}: <{el.tag}> has no '{attr}' attribute")
    try:
        values = np.array([float(v) for v in raw.split()], dtype=np.float64)
    except ValueError:
        raise MassFormatError(f"{path}: {where}: <{el.tag} {attr}={raw!r}> is not a list of numbers") from None
    if count is not None and values.size != count:
        raise MassFormatError(f"{path}: {where}: <{el.tag} {attr}=...> needs {count} numbers, got {values.size}")
    if not np.isfinite(values).all():
        raise MassFormatError(f"{path}: {where}: <{el.tag} {attr}=...> has a non-finite number")
    return values


def _child(path: Path, where: str, el: ET.Element, tag: str) -> ET.Element:
    child = el.find(tag)
    if child is None:
        raise MassFormatError(f"{path}: {where}: <{el.tag}> has no <{tag}> element")
    return child


def _transform(path: Path, where: str, el: ET.Element) -> Transform:
    tf = _child(path, where, el, "Transformation")
    return Transform(_floats(path, where, tf, "linear", 9).reshape(3, 3), _floats(path, where, tf, "translation", 3))


def parse_skeleton(path: str | Path) -> list[MassNode]:
    """All nodes of a MASS skeleton file, in file order."""
    path = Path(path)
    root = _root(path, "Skeleton")
    nodes: list[MassNode] = []
    seen: set[str] = set()
    for el in root.findall("Node"):
        name = el.get("name")
        if not name:
            raise MassFormatError(f"{path}: a <Node> has no 'name' attribute")
        where = f"<Node name={name!r}>"
        if name in seen:
            raise MassFormatError(f"{path}: {where} appears twice")
        parent = el.get("parent")
        parent = None if parent in (None, "None", "") else parent
        if parent is not None and parent not in seen:
            raise MassFormatError(f"{path}: {where}: parent {parent!r} is not defined before it")
        body = _child(path, where, el, "Body")
        joint = _child(path, where, el, "Joint")
        if body.get("type", "Box") != "Box":
            raise MassFormatError(f"{path}: {where}: <Body type={body.get('type')!r}> (only Box bodies are supported)")
        mass = float(_floats(path, where, body, "mass", 1)[0])
        size = _floats(path, where, body, "size", 3)
        if mass <= 0 or (size <= 0).any():
            raise MassFormatError(f"{path}: {where}: <Body> needs a positive mass and size")
        jtype = joint.get("type")
        if jtype not in JOINT_TYPES:
            raise MassFormatError(f"{path}: {where}: <Joint type={jtype!r}> is not one of {', '.join(JOINT_TYPES)}")
        hinge = jtype in ("Revolute", "Prismatic")
        axis = _floats(path, where, joint, "axis", 3) if hinge else None
        limits = hinge or jtype == "Ball"
        n_lim = 1 if hinge else 3
        lower = _floats(path, where, joint, "lower", n_lim) if limits and joint.get("lower") else None
        upper = _floats(path, where, joint, "upper", n_lim) if limits and joint.get("upper") else None
        nodes.append(
            MassNode(
                name=name,
                parent=parent,
                mass=mass,
                size=size,
                body=_transform(path, where, body),
                joint_type=jtype,
                joint=_transform(path, where, joint),
                axis=axis,
                lower=lower,
                upper=upper,
                contact=body.get("contact", "Off") == "On",
            )
        )
        seen.add(name)
    if not nodes:
        raise MassFormatError(f"{path}: <Skeleton> has no <Node> elements")
    return nodes


def parse_muscles(path: str | Path) -> list[MassMuscle]:
    """All muscle units of a MASS muscle file, waypoints in world coordinates, in file order."""
    path = Path(path)
    root = _root(path, "Muscle")
    units: list[MassMuscle] = []
    for i, el in enumerate(root.findall("Unit")):
        name = el.get("name") or f"#{i}"
        where = f"<Unit name={name!r}>"
        params = {k: float(_floats(path, where, el, k, 1)[0]) for k in ("f0", "lm", "lt", "pen_angle", "lmax")}
        if params["f0"] <= 0:
            raise MassFormatError(f"{path}: {where}: f0 must be positive, got {params['f0']}")
        wps = el.findall("Waypoint")
        if len(wps) < 2:
            raise MassFormatError(f"{path}: {where}: a unit needs at least 2 <Waypoint> elements, got {len(wps)}")
        bodies = []
        for wp in wps:
            body = wp.get("body")
            if not body:
                raise MassFormatError(f"{path}: {where}: a <Waypoint> has no 'body' attribute")
            bodies.append(body)
        points = np.stack([_floats(path, where, wp, "p", 3) for wp in wps])
        units.append(MassMuscle(name=name, bodies=tuple(bodies), points=points, **params))
    if not units:
        raise MassFormatError(f"{path}: <Muscle> has no <Unit> elements")
    return units


def load_mass(skeleton: str | Path, muscles: str | Path, keep: tuple[str, ...] | None = LOWER_BODY) -> MassModel:
    """Read a MASS skeleton and muscle file, keep the nodes in ``keep`` (all if None) and the units
    whose waypoints all lie on kept bodies, with waypoints in their body's joint frame.

    Raises:
        MassFormatError: a file is missing or malformed, a kept node's parent is dropped, a waypoint
            names a body the skeleton does not have, or no node of ``keep`` exists.
    """
    skeleton, muscles = Path(skeleton), Path(muscles)
    all_nodes = parse_skeleton(skeleton)
    by_name = {n.name: n for n in all_nodes}
    if keep is not None:
        missing = [k for k in keep if k not in by_name]
        if missing:
            raise MassFormatError(f"{skeleton}: node(s) {', '.join(missing)} not found")
    kept = [n for n in all_nodes if keep is None or n.name in keep]
    kept_names = {n.name for n in kept}
    for n in kept:
        if n.parent is not None and n.parent not in kept_names:
            raise MassFormatError(f"{skeleton}: kept <Node name={n.name!r}> has a dropped parent {n.parent!r}")
    if sum(n.parent is None for n in kept) != 1:
        raise MassFormatError(f"{skeleton}: the kept nodes must form one tree with a single root")
    units = parse_muscles(muscles)
    out = []
    for u in units:
        unknown = [b for b in u.bodies if b not in by_name]
        if unknown:
            raise MassFormatError(
                f"{muscles}: <Unit name={u.name!r}>: waypoint body {unknown[0]!r} is not in {skeleton.name}"
            )
        if all(b in kept_names for b in u.bodies):
            out.append(u)
    return MassModel(nodes=tuple(kept), muscles=tuple(to_joint_frames(kept, out)), total_units=len(units))


def to_joint_frames(nodes: Sequence[MassNode], units: Sequence[MassMuscle]) -> list[MassMuscle]:
    """``units`` with their world rest-pose waypoints expressed in the joint frame of their body."""
    by_name = {n.name: n for n in nodes}
    return [
        dataclasses.replace(
            u, points=np.stack([by_name[b].joint.inverse_apply(p) for b, p in zip(u.bodies, u.points, strict=True)])
        )
        for u in units
    ]


__all__ = [
    "JOINT_TYPES",
    "LOWER_BODY",
    "MassFormatError",
    "MassModel",
    "MassMuscle",
    "MassNode",
    "Transform",
    "load_mass",
    "parse_muscles",
    "parse_skeleton",
    "to_joint_frames",
]
