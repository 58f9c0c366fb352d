"""``pwm-bench bench-env --profile``: a control step split into its stages, forward and backward."""

from __future__ import annotations

import json

import pytest

from pwm_bench.bench import STAGES, TORCH_SIDE, profile_env, stage_of

from .test_reliability import inproc


def test_kernel_names_map_to_their_stages() -> None:
    assert stage_of("_kernels__locals__ground_contact") == "contact"
    assert stage_of("eval_dense_cholesky_batched") == "mass matrix and factorisation"
    assert stage_of("eval_dense_solve_batched") == "linear solve"
    assert stage_of("eval_articulation_fk_with_velocity_conversion") == "kinematics"
    assert stage_of("eval_rigid_tau") == "dynamics terms"
    assert stage_of("integrate_generalized_joints") == "integration"
    assert stage_of("muscle_forces") == "muscles and joint springs"
    assert stage_of("something_new") == "other kernels"


def test_profile_splits_forward_and_backward_into_stages_that_add_up() -> None:
    prof = profile_env("hopper", 2, differentiable=True, steps=4, window=2)
    assert set(prof.step_ms) == {"forward", "forward+backward"}
    # a recorded step and its backward cost more than a step without gradients
    assert prof.step_ms["forward+backward"] > prof.step_ms["forward"] > 0
    for phase in prof.step_ms:
        rows = [r for r in prof.stages if r.phase == phase]
        assert sum(r.share for r in rows) == pytest.approx(1.0, abs=1e-6)
        assert sum(r.ms_per_step for r in rows) == pytest.approx(prof.step_ms[phase], rel=1e-6)
        kinds = {r.stage for r in rows}
        assert {"contact", "kinematics", "dynamics terms", "integration", TORCH_SIDE} <= kinds
        assert kinds <= {s for s, _ in STAGES} | {"other kernels", TORCH_SIDE}
    fb = [r for r in prof.stages if r.phase == "forward+backward"]
    assert {r.part for r in fb} == {"forward", "backward re-run", "adjoint", ""}
    # the hopper's 16 substeps: one contact launch per substep, in each part of the window
    for part in ("forward", "backward re-run", "adjoint"):
        (contact,) = (r for r in fb if r.part == part and r.stage == "contact")
        assert contact.launches_per_step == 16
    # the mass matrix once per control step: Jacobian, body inertias, and the tiled H = J^T M J with
    # its Cholesky factor (launched through wp.launch_tiled, which the kernel clock also catches)
    (mass,) = (r for r in fb if r.part == "forward" and r.stage == "mass matrix and factorisation")
    assert mass.launches_per_step == 3


def test_cli_profile_prints_the_stage_tables_and_json() -> None:
    code, stdout, err = inproc("bench-env", "--env", "hopper", "--num-envs", "2", "--steps", "2", "--profile", "--json")
    assert code == 0, err
    row = json.loads(stdout)
    assert row["forward_sps"] > 0 and row["profile"]["step_ms"]["forward"] > 0
    code, stdout, err = inproc("bench-env", "--env", "hopper", "--num-envs", "2", "--steps", "2", "--profile")
    assert code == 0, err
    assert "ms per control step" in stdout and "contact" in stdout
    code, stdout, err = inproc("bench-env", "--env", "hopper", "--num-envs", "2", "--steps", "2", "--profile")
    assert code == 0, err
    assert "ms per control step" in stdout and "contact" in stdout
