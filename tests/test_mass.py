"""MASS skeleton/muscle reader: the public files (when present) and small files written here."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from pwm_bench.envs.mass import LOWER_BODY, MassFormatError, load_mass, parse_skeleton

MASS_DIR = Path(__file__).resolve().parents[2] / "shared" / "assets" / "mass"
needs_assets = pytest.mark.skipif(not (MASS_DIR / "human.xml").is_file(), reason="public MASS files not present")


@needs_assets
def test_public_files_keep_the_11_lower_body_nodes_and_152_of_284_muscles() -> None:
    m = load_mass(MASS_DIR / "human.xml", MASS_DIR / "muscle284.xml")
    assert [n.name for n in m.nodes] == list(LOWER_BODY)
    assert (len(m.muscles), m.total_units) == (152, 284)
    # facts of the selection (envs.md §3.3): waypoints per unit, f0 range and sum, L/R pairs
    assert collections.Counter(len(u.bodies) for u in m.muscles) == {2: 6, 3: 38, 4: 64, 5: 18, 6: 18, 7: 8}
    f0 = np.array([u.f0 for u in m.muscles])
    assert f0.min() == 45.0 and f0.max() == 1792.95 and abs(f0.sum() - 55158.5) < 0.01
    names = [u.name for u in m.muscles]
    assert sum(n.startswith("L_") for n in names) == sum(n.startswith("R_") for n in names) == 76
    masses = {n.name: n.mass for n in m.nodes}
    assert masses["Pelvis"] == 15.0 and masses["FemurR"] == 7.0 and masses["FootPinkyL"] == 0.2
    assert [n.joint_type for n in m.nodes[:6]] == ["Free", "Ball", "Revolute", "Ball", "Revolute", "Revolute"]


@needs_assets
def test_public_waypoints_are_in_their_bodys_joint_frame() -> None:
    from pwm_bench.envs.mass import parse_muscles

    m = load_mass(MASS_DIR / "human.xml", MASS_DIR / "muscle284.xml")
    world = {u.name: u for u in parse_muscles(MASS_DIR / "muscle284.xml")}
    nodes = {n.name: n for n in m.nodes}
    for u in m.muscles[:20]:
        for body, local, p in zip(u.bodies, u.points, world[u.name].points, strict=True):
            j = nodes[body].joint
            assert np.allclose(j.R @ local + j.t, p, atol=1e-9)


SKELETON = """<Skeleton name="Tiny">
  <Node name="Root" parent="None">
    <Body type="Box" mass="2.0" size="0.2 0.2 0.2" contact="Off">
      <Transformation linear="1 0 0 0 1 0 0 0 1" translation="0 1 0"/>
    </Body>
    <Joint type="Free"><Transformation linear="1 0 0 0 1 0 0 0 1" translation="0 1 0"/></Joint>
  </Node>
  <Node name="Leg" parent="Root">
    <Body type="Box" mass="1.0" size="0.1 0.4 0.1" contact="On">
      <Transformation linear="1 0 0 0 1 0 0 0 1" translation="0 0.6 0"/>
    </Body>
    <Joint type="Revolute" axis="1 0 0" lower="-1" upper="1">
      <Transformation linear="0 -1 0 1 0 0 0 0 1" translation="0 0.8 0"/>
    </Joint>
  </Node>
  <Node name="Arm" parent="Root">
    <Body type="Box" mass="0.5" size="0.1 0.3 0.1">
      <Transformation linear="1 0 0 0 1 0 0 0 1" translation="0.3 1 0"/>
    </Body>
    <Joint type="Ball" lower="-2 -2 -2" upper="2 2 2">
      <Transformation linear="1 0 0 0 1 0 0 0 1" translation="0.2 1 0"/>
    </Joint>
  </Node>
</Skeleton>
"""

MUSCLES = """<Muscle>
  <Unit name="Hip" f0="100" lm="1" lt="0.2" pen_angle="0" lmax="-0.1">
    <Waypoint body="Root" p="0 0.9 0.05"/>
    <Waypoint body="Leg" p="0.1 0.7 0.05"/>
  </Unit>
  <Unit name="Shoulder" f0="50" lm="1" lt="0.2" pen_angle="0" lmax="-0.1">
    <Waypoint body="Root" p="0.1 1.1 0"/>
    <Waypoint body="Arm" p="0.3 1.0 0"/>
  </Unit>
</Muscle>
"""


def _files(tmp_path: Path, skeleton: str = SKELETON, muscles: str = MUSCLES) -> tuple[Path, Path]:
    s, m = tmp_path / "human.xml", tmp_path / "muscles.xml"
    s.write_text(skeleton)
    m.write_text(muscles)
    return s, m


def test_small_files_filter_and_convert(tmp_path: Path) -> None:
    s, m = _files(tmp_path)
    model = load_mass(s, m, keep=("Root", "Leg"))
    assert [n.name for n in model.nodes] == ["Root", "Leg"]
    assert [u.name for u in model.muscles] == ["Hip"] and model.total_units == 2
    # Leg joint: rotated 90° about z, at (0, 0.8, 0); world (0.1, 0.7, 0.05) -> R^T (0.1, -0.1, 0.05)
    assert np.allclose(model.muscles[0].points[1], [-0.1, -0.1, 0.05])
    assert np.allclose(model.muscles[0].points[0], [0.0, -0.1, 0.05])
    assert model.muscle_links() == [[0, 1]]
    leg = model.nodes[1]
    assert leg.joint_type == "Revolute" and np.allclose(leg.axis, [1, 0, 0]) and leg.contact
    assert len(load_mass(s, m, keep=None).muscles) == 2


@pytest.mark.parametrize(
    ("skeleton", "muscles", "message"),
    [
        (SKELETON.replace('mass="1.0"', ""), MUSCLES, "human.xml: <Node name='Leg'>: <Body> has no 'mass'"),
        (SKELETON.replace('size="0.1 0.4 0.1"', 'size="0.1 0.4"'), MUSCLES, "needs 3 numbers"),
        (SKELETON.replace('type="Revolute"', 'type="Hinge"'), MUSCLES, "<Joint type='Hinge'> is not one of"),
        (
            SKELETON.replace(
                'parent="Root">\n    <Body type="Box" mass="1.0"', 'parent="Nope">\n    <Body type="Box" mass="1.0"'
            ),
            MUSCLES,
            "parent 'Nope'",
        ),
        (SKELETON.replace("</Skeleton>", ""), MUSCLES, "not well-formed"),
        (
            SKELETON,
            MUSCLES.replace('body="Leg"', 'body="Tail"'),
            "muscles.xml: <Unit name='Hip'>: waypoint body 'Tail'",
        ),
        (SKELETON, MUSCLES.replace('f0="100"', 'f0="abc"'), "<Unit f0='abc'> is not a list of numbers"),
        (SKELETON, MUSCLES.replace('<Waypoint body="Leg" p="0.1 0.7 0.05"/>', ""), "at least 2 <Waypoint>"),
    ],
)
def test_malformed_files_name_the_file_and_element(tmp_path: Path, skeleton: str, muscles: str, message: str) -> None:
    s, m = _files(tmp_path, skeleton, muscles)
    with pytest.raises(MassFormatError) as info:
        load_mass(s, m, keep=None)
    assert message in str(info.value)


def test_missing_files_and_bad_selections_are_clear(tmp_path: Path) -> None:
    with pytest.raises(MassFormatError, match=r"nope\.xml: file not found"):
        parse_skeleton(tmp_path / "nope.xml")
    s, m = _files(tmp_path)
    with pytest.raises(MassFormatError, match="Foot not found"):
        load_mass(s, m, keep=("Root", "Foot"))
    with pytest.raises(MassFormatError, match="dropped parent"):
        load_mass(s, m, keep=("Leg",))


@needs_assets
def test_public_skeleton_builds_the_29_q_24_qd_articulation_standing_on_its_feet() -> None:
    import torch

    from pwm_bench.envs.physics import ArticulatedSim, ContactParams, build_robot
    from pwm_bench.envs.robots import mass_skeleton

    robot = mass_skeleton(load_mass(MASS_DIR / "human.xml", MASS_DIR / "muscle284.xml"))
    built = build_robot(robot)
    one = built.builder
    # 7 + 2·4 (femur quats) + 2·1 (knees) + 2·4 (talus quats) + 4·1 (toes) coordinates (envs.md §3.2)
    assert (one.body_count, one.joint_coord_count, one.joint_dof_count) == (11, 29, 24)
    assert built.total_mass == pytest.approx(37.0, rel=1e-6) and len(built.contact_body) == 11 * 8
    sim = ArticulatedSim(robot, 2, "cpu", dt=1 / 60, substeps=48, contact=ContactParams(5e3, 2e3, 1e3, 0.5))
    q = sim.default_q().expand(2, -1).clone()
    assert q[0, 2] == pytest.approx(0.9809, abs=1e-4)  # pelvis at its rest height, z-up
    d = sim.contact_distances(q)
    assert 0.0 < float(d.min()) < 0.03  # the lowest foot corners just above the ground
    qd = torch.zeros(2, sim.nqd)
    for _ in range(10):  # unactuated: it sags under gravity, stays finite and on the ground
        q, qd = sim.step(q, qd, torch.zeros(2, 0))
    assert bool(torch.isfinite(q).all()) and 0.5 < float(q[0, 2]) < 1.0
    assert float(sim.contact_distances(q).min()) > -0.05


# the SNU humanoid's task, gradients and fall without tension: tests/test_muscle_humanoid.py (parametrized)


def test_snu_humanoid_without_files_says_where_they_come_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pwm_bench.envs import make_env
    from pwm_bench.errors import UsageError

    from .conftest import cli

    monkeypatch.delenv("PWM_BENCH_MASS_DIR", raising=False)
    with pytest.raises(UsageError, match="lsw9021/MASS"):
        make_env("snu_humanoid", 1)
    with pytest.raises(UsageError, match=r"human\.xml"):
        make_env("snu_humanoid", 1, mass_dir=str(tmp_path))
    res = cli("run", "--algo", "shac", "--env", "snu_humanoid", "--preset", "smoke", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "PWM_BENCH_MASS_DIR" in res.stderr and "Traceback" not in res.stderr


@needs_assets
def test_snu_humanoid_hill_law_takes_lm_and_lt_from_the_files() -> None:
    from pwm_bench.envs import make_env

    env = make_env("snu_humanoid", 1, mass_dir=str(MASS_DIR), muscle_model="hill")
    hill = env.sim._blocks[0]._muscles.muscles.hill
    assert set(np.round(hill.fibre_optimal, 6)) == {1.0, 1.2} and set(np.round(hill.tendon_slack, 6)) == {0.2}
    assert np.allclose(hill.rest_length, env.model.rest_lengths()) and hill.rest_length.min() > 0.03
