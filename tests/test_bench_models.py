"""``pwm-bench bench-wm``: PWM's learning stages timed and counted against a same-run matmul."""

from __future__ import annotations

import json

from pwm_bench.bench_models import bench_models

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
