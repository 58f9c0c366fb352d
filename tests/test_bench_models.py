"""``pwm-bench bench-wm``: PWM's and TD-MPC2's learning stages timed and counted against a same-run matmul."""

from __future__ import annotations

import json

from pwm_bench.bench_models import bench_models, bench_tdmpc2

from .test_reliability import inproc


def test_stages_are_timed_and_their_flops_scale_with_the_batch() -> None:
    small = bench_models("smoke", "pointmass", repeats=2, overrides={"wm_batch_size": "32"})
    big = bench_models("smoke", "pointmass", repeats=2, overrides={"wm_batch_size": "64"})
    assert [s.stage for s in small.stages] == ["model step", "actor update", "critic passes"]
    assert small.matmul_gflops > 0 and small.parameters > 0
    for s in small.stages:
        assert s.ms > 0 and s.gflop > 0 and abs(s.gflops / small.matmul_gflops - s.roofline_share) < 1e-9
    # the model step's work is linear in its batch; the other stages do not depend on it
    ratio = big.stages[0].gflop / small.stages[0].gflop
    assert 1.9 < ratio < 2.1, ratio
    assert big.stages[1].gflop == small.stages[1].gflop


def test_cli_prints_json_and_refuses_bad_presets() -> None:
    code, stdout, err = inproc("bench-wm", "--preset", "smoke", "--env", "pointmass", "--repeats", "1", "--json")
    assert code == 0, err
    (row,) = json.loads(stdout)
    assert row["preset"] == "smoke" and len(row["stages"]) == 3
    code, _, err = inproc("bench-wm", "--preset", "smok")
    assert code == 2 and "did you mean 'smoke'" in err


def test_tdmpc2_planning_flops_scale_with_worlds_samples_and_iterations() -> None:
    base = {"num_envs": "2", "eval_episodes": "4", "num_samples": "32", "num_pi_trajs": "4", "num_elites": "4"}
    one = bench_tdmpc2("smoke", "pointmass", repeats=1, overrides={**base, "iterations": "1"})
    two = bench_tdmpc2("smoke", "pointmass", repeats=1, overrides={**base, "iterations": "2"})
    assert one.algo == "tdmpc2" and [s.stage for s in one.stages] == [
        "plan (2 worlds)",
        "plan (eval, 4 worlds)",
        "update",
    ]
    for s in one.stages:
        assert s.ms > 0 and s.gflop > 0
    plan, plan_eval, update = (s.gflop for s in one.stages)
    # the eval call plans for twice the worlds; the prior's proposals and the encoder are a small fixed part
    assert 1.8 < plan_eval / plan < 2.01, plan_eval / plan
    # a second MPPI iteration evaluates the samples again (the prior's proposals are rolled out once)
    assert 1.5 < two.stages[0].gflop / plan < 2.0, two.stages[0].gflop / plan
    assert two.stages[2].gflop == update


def test_cli_times_tdmpc2_and_refuses_unknown_algorithms() -> None:
    code, stdout, err = inproc(
        "bench-wm", "--algo", "tdmpc2", "--preset", "smoke", "--env", "pointmass", "--repeats", "1", "--json"
    )
    assert code == 0, err
    (row,) = json.loads(stdout)
    assert row["algo"] == "tdmpc2" and [s["stage"] for s in row["stages"]][-1] == "update"
    code, _, err = inproc("bench-wm", "--algo", "tdmpc", "--preset", "smoke")
    assert code == 2 and "did you mean 'tdmpc2'" in err
