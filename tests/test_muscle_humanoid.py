"""pwm-bench's own muscle humanoid: the template's anatomy, the env, its gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pwm_bench.envs.mass import LOWER_BODY
from pwm_bench.envs.muscle_template import MUSCLES, rest_moment_arms, span_counts, template_model

MASS_DIR = Path(__file__).resolve().parents[2] / "shared" / "assets" / "mass"

# envs.md §3.2: masses [kg] and box sizes [m] of DiffRL's SNU skeleton
SKELETON = {
    "Pelvis": ("Free", 15.0, (0.2083, 0.1454, 0.1294)),
    "Femur": ("Ball", 7.0, (0.1271, 0.4043, 0.1398)),
    "Tibia": ("Revolute", 3.0, (0.1198, 0.4156, 0.1141)),
    "Talus": ("Ball", 0.6, (0.0756, 0.0498, 0.1570)),
    "FootThumb": ("Revolute", 0.2, (0.0407, 0.0262, 0.0563)),
    "FootPinky": ("Revolute", 0.2, (0.0422, 0.0238, 0.0529)),
}

# functions by joint and MASS world axis (x left, y up, z forward), as signs for the RIGHT leg; the
# left leg has the same x signs and opposite y and z signs
HIP_EXT, HIP_FLEX = ("Femur", 0, +1), ("Femur", 0, -1)
HIP_ABD, HIP_ADD = ("Femur", 2, -1), ("Femur", 2, +1)
HIP_EXT_ROT, HIP_INT_ROT = ("Femur", 1, -1), ("Femur", 1, +1)
KNEE_FLEX, KNEE_EXT = ("Tibia", 0, +1), ("Tibia", 0, -1)
PLANTAR, DORSI = ("Talus", 0, +1), ("Talus", 0, -1)
INVERT, EVERT = ("Talus", 2, +1), ("Talus", 2, -1)
BIG_TOE_FLEX, BIG_TOE_EXT = ("FootThumb", 0, +1), ("FootThumb", 0, -1)
TOES_FLEX, TOES_EXT = ("FootPinky", 0, +1), ("FootPinky", 0, -1)
FUNCTIONS = {
    "gluteus_maximus": (HIP_EXT, HIP_EXT_ROT),
    "gluteus_medius": (HIP_ABD,),
    "gluteus_minimus": (HIP_ABD,),
    "iliacus": (HIP_FLEX,),
    "adductor_longus": (HIP_ADD, HIP_FLEX),
    "adductor_brevis": (HIP_ADD, HIP_FLEX),
    "adductor_magnus": (HIP_ADD,),
    "pectineus": (HIP_ADD, HIP_FLEX),
    "piriformis": (HIP_EXT_ROT, HIP_ABD),
    "obturator_internus": (HIP_EXT_ROT,),
    "obturator_externus": (HIP_EXT_ROT, HIP_ADD),
    "quadratus_femoris": (HIP_EXT_ROT, HIP_ADD),
    "gemelli": (HIP_EXT_ROT,),
    "rectus_femoris": (HIP_FLEX, KNEE_EXT),
    "sartorius": (HIP_FLEX, HIP_ABD, KNEE_FLEX),
    "gracilis": (HIP_ADD, KNEE_FLEX),
    "semitendinosus": (HIP_EXT, KNEE_FLEX),
    "semimembranosus": (HIP_EXT, KNEE_FLEX),
    "biceps_femoris_long": (HIP_EXT, KNEE_FLEX),
    "tensor_fasciae_latae": (HIP_FLEX, HIP_ABD, HIP_INT_ROT),
    "vastus_lateralis": (KNEE_EXT,),
    "vastus_medialis": (KNEE_EXT,),
    "vastus_intermedius": (KNEE_EXT,),
    "biceps_femoris_short": (KNEE_FLEX,),
    "popliteus": (KNEE_FLEX,),
    "gastrocnemius_medial": (KNEE_FLEX, PLANTAR),
    "gastrocnemius_lateral": (KNEE_FLEX, PLANTAR),
    "plantaris": (KNEE_FLEX, PLANTAR),
    "soleus": (PLANTAR,),
    "tibialis_anterior": (DORSI, INVERT),
    "tibialis_posterior": (PLANTAR, INVERT),
    "peroneus_longus": (PLANTAR, EVERT),
    "peroneus_brevis": (PLANTAR, EVERT),
    "peroneus_tertius": (DORSI, EVERT),
    "extensor_hallucis_longus": (DORSI, BIG_TOE_EXT),
    "flexor_hallucis_longus": (PLANTAR, BIG_TOE_FLEX),
    "extensor_digitorum_longus": (DORSI, TOES_EXT),
    "flexor_digitorum_longus": (PLANTAR, TOES_FLEX),
    "extensor_hallucis_brevis": (BIG_TOE_EXT,),
    "flexor_hallucis_brevis": (BIG_TOE_FLEX,),
    "abductor_hallucis": (BIG_TOE_FLEX,),
    "extensor_digitorum_brevis": (TOES_EXT,),
    "flexor_digitorum_brevis": (TOES_FLEX,),
    "abductor_digiti_minimi": (TOES_FLEX,),
}


def test_template_has_152_units_76_per_leg_mirrored() -> None:
    m = template_model()
    assert [n.name for n in m.nodes] == list(LOWER_BODY)
    assert len(m.muscles) == m.total_units == 152
    names = [u.name for u in m.muscles]
    assert len(set(names)) == 152
    assert names[0::2] == [n.replace("L_", "R_", 1) for n in names[1::2]]
    assert all(n.startswith("R_") for n in names[0::2])
    # the right unit's waypoints, mirrored in x, are the left unit's (in world coordinates)
    for r, left in zip(m.muscles[0::2], m.muscles[1::2], strict=True):
        assert np.allclose(m.rest_points(r) * [-1, 1, 1], m.rest_points(left)) and r.f0 == left.f0
    f0 = np.array([u.f0 for u in m.muscles])
    assert f0.sum() == pytest.approx(2 * sum(f for _, f, _, _ in MUSCLES)) and f0.min() > 0
    assert min(len(u.bodies) for u in m.muscles) >= 2 and max(len(u.bodies) for u in m.muscles) == 7
    counts = span_counts(m)
    assert counts[("Pelvis", "Femur")] == 48 and counts[("Pelvis", "Femur", "Tibia")] == 18
    assert counts[("Femur", "Tibia", "Talus")] == 10 and counts[("Tibia", "Talus")] == 24
    assert sum(counts.values()) == 152
    assert all(len(k) >= 2 for k in counts)  # every unit crosses at least one joint


def test_template_skeleton_is_the_snu_skeleton() -> None:
    m = template_model()
    for node in m.nodes:
        kind, mass, size = SKELETON[node.name if node.name == "Pelvis" else node.name[:-1]]
        assert (node.joint_type, node.mass) == (kind, mass) and np.allclose(node.size, size)
    limits = {n.name: (float(n.lower[0]), float(n.upper[0])) for n in m.nodes if n.joint_type == "Revolute"}
    assert limits["TibiaR"] == (0.0, 2.3) and limits["FootThumbL"] == (-0.6, 0.6)
    from pwm_bench.envs import robots
    from pwm_bench.envs.physics import ArticulatedSim, ContactParams

    sim = ArticulatedSim(
        robots.mass_skeleton(m), 1, "cpu", dt=1 / 60, substeps=48, contact=ContactParams(5e3, 2e3, 1e3, 0.5)
    )
    assert (sim.nq, sim.nqd) == (29, 24)
    lowest = float(sim.contact_distances(sim.default_q()[None]).min())
    assert 0.005 < lowest < 0.02  # the soles stand 1 cm above the ground


@pytest.mark.skipif(not (MASS_DIR / "human.xml").is_file(), reason="public MASS files not present")
def test_template_skeleton_matches_the_mass_files_where_envs_md_fixes_it() -> None:
    from pwm_bench.envs.mass import load_mass

    mass = load_mass(MASS_DIR / "human.xml", MASS_DIR / "muscle284.xml")
    ours = template_model()
    for a, b in zip(ours.nodes, mass.nodes, strict=True):
        assert (a.name, a.parent, a.joint_type, a.mass) == (b.name, b.parent, b.joint_type, b.mass)
        assert np.allclose(a.size, b.size)
        if a.joint_type == "Revolute":
            assert np.allclose(a.axis, b.axis) and np.allclose(a.lower, b.lower) and np.allclose(a.upper, b.upper)


def test_every_muscle_acts_as_its_anatomy_says() -> None:
    """Rest-pose moment arms: each function of FUNCTIONS holds for every strand on both legs."""
    m = template_model()
    arms = rest_moment_arms(m)
    index = {n.name: i for i, n in enumerate(m.nodes)}
    assert set(FUNCTIONS) == {name for name, *_ in MUSCLES}
    checked = 0
    for k, unit in enumerate(m.muscles):
        side, base = unit.name[0], unit.name[2:].rstrip("_0123456789")
        for body, axis, sign in FUNCTIONS[base]:
            mirrored = sign if axis == 0 or side == "R" else -sign
            arm = arms[k, index[body + side], axis]
            assert mirrored * arm > 0.003, (unit.name, body, axis, arm)  # at least 3 mm the right way
            checked += 1
    assert checked == 242  # 121 (muscle strand, function) pairs per leg
    # and no unit acts on a joint it does not span: the knee feels nothing from the hip muscles
    hip_only = [k for k, u in enumerate(m.muscles) if set(u.bodies) <= {"Pelvis", "FemurR", "FemurL"}]
    assert np.abs(arms[hip_only][:, index["TibiaR"]]).max() < 1e-12


_ASSETS = pytest.mark.skipif(not (MASS_DIR / "human.xml").is_file(), reason="public MASS files not present")
MUSCLE_ENVS = [
    pytest.param("muscle_humanoid", {}, id="muscle_humanoid"),
    pytest.param("snu_humanoid", {"mass_dir": str(MASS_DIR)}, id="snu_humanoid", marks=_ASSETS),
]


@pytest.mark.parametrize(("name", "kwargs"), MUSCLE_ENVS)
def test_muscle_env_observes_53_acts_152_and_has_checked_gradients(name: str, kwargs: dict) -> None:
    from pwm_bench.envs import make_env
    from pwm_bench.testing import env_gradient_check

    env = make_env(name, 3, differentiable=True, **kwargs)
    obs, _ = env.reset(seed=0)
    assert (env.obs_dim, env.act_dim) == (53, 152) and obs.shape == (3, 53)
    assert (obs[:, 51] > 0.99).all() and (obs[:, 52] > 0.99).all()  # upright, facing +x
    assert ((obs[:, 0] > 0.85) & (obs[:, 0] < 1.1)).all()
    a = torch.rand(3, 152) * 2 - 1
    expected = obs[:, 5] + 0.1 * obs[:, 51] + obs[:, 52] - 0.001 * (0.5 * a + 0.5).sum(-1)
    assert torch.allclose(env._reward(obs, a), expected)
    for _ in range(10):
        env.step(torch.zeros(3, 152))
    env.detach()
    assert float(env.sim.contact_distances(env.q).min()) < 0.0  # feet in contact
    # measured: muscle_humanoid 0.16 %, cosine 0.999999; snu_humanoid 0.6 %, 0.99998
    one = env_gradient_check(env, steps=1, wrt="actions", eps=1e-2, n_directions=6)
    assert one.rel_error <= 0.02 and one.cosine >= 0.9999, one
    # 4 steps through stiff contacts: float32 noise needs a larger finite-difference step
    four = env_gradient_check(env, steps=4, wrt="actions", eps=3e-2, n_directions=4)
    assert four.cosine >= 0.999, four  # measured: muscle_humanoid 0.99983
    state = env_gradient_check(env, steps=1, wrt="state", eps=1e-3, n_directions=6)
    assert state.cosine >= 0.999, state  # measured: muscle_humanoid 0.99991


@pytest.mark.parametrize(("name", "kwargs"), MUSCLE_ENVS)
def test_muscle_env_without_muscle_tension_falls_and_terminates(name: str, kwargs: dict) -> None:
    from pwm_bench.envs import make_env

    env = make_env(name, 2, **kwargs)
    env.reset(seed=0)
    ended = torch.zeros(2, dtype=torch.bool)
    for _ in range(120):
        _, _, terminated, _, _ = env.step(-torch.ones(2, 152))  # activation 0: no tension
        ended |= terminated
    assert ended.all()


def test_muscles_move_the_legs_as_labelled() -> None:
    """In the simulator: the right quadriceps alone extend a bent right knee, the hamstrings bend it."""
    from pwm_bench.envs import make_env

    env = make_env("muscle_humanoid", 2)
    env.reset(seed=0)
    names = [u.name for u in env.model.muscles]
    knee = 7 + 4  # q index of the right knee: root 7, right-hip quaternion 4
    q = env.sim.default_q().expand(2, -1).clone()
    q[:, 2] += 0.5  # in the air
    q[:, knee] = 1.0
    env.set_state({**env.get_state(), "q": q, "qd": torch.zeros(2, env.nqd)})
    act = -torch.ones(2, 152)
    quads = [i for i, n in enumerate(names) if n.startswith("R_vastus")]
    hams = [i for i, n in enumerate(names) if n.startswith(("R_semimembranosus", "R_biceps_femoris"))]
    act[0, quads] = 1.0
    act[1, hams] = 1.0
    for _ in range(3):
        env.step(act)
    bend = env.q[:, knee]
    assert float(bend[0]) < 0.9 < 1.0 < float(bend[1]), bend


def test_hill_muscle_model_has_checked_gradients_and_bad_choices_are_one_line_errors(tmp_path: Path) -> None:
    from pwm_bench.envs import make_env
    from pwm_bench.errors import UsageError
    from pwm_bench.testing import env_gradient_check

    from .conftest import cli

    env = make_env("muscle_humanoid", 2, differentiable=True, muscle_model="hill")
    rest = env.model.rest_lengths()
    assert rest.shape == (152,) and rest.min() > 0.03 and rest.max() < 0.7  # metres of muscle path
    env.reset(seed=0)
    for _ in range(10):
        env.step(torch.zeros(2, 152))
    env.detach()
    one = env_gradient_check(env, steps=1, wrt="actions", eps=1e-2, n_directions=4)
    assert one.rel_error <= 0.02 and one.cosine >= 0.9999, one  # measured 0.18 %, 0.999999
    with pytest.raises(UsageError, match="linear"):
        make_env("muscle_humanoid", 1, muscle_model="hil")
    res = cli(
        "run", "--algo", "shac", "--env", "muscle_humanoid", "--set", "env.muscle_model=hil", "--out", str(tmp_path)
    )
    assert res.returncode == 2 and "hill" in res.stderr and "Traceback" not in res.stderr


def test_bench_env_reports_the_muscle_share_of_a_step() -> None:
    from pwm_bench.bench import bench_env

    r = bench_env("muscle_humanoid", 2, steps=5, differentiable=True, window=2)
    assert r.forward_sps > 0 and r.forward_backward_sps is not None and r.forward_backward_sps > 0
    assert r.muscle_share is not None and 0.0 <= r.muscle_share < 1.0
    assert bench_env("double_pendulum", 2, steps=5).muscle_share is None
