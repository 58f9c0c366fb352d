"""The command line as a user meets it: help, listing, runs, tables and one-line errors."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pwm_bench.store import atomic_write_yaml, read_summary

from .conftest import cli, wait_for


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "ppp", "--env", "pointmass"], "unknown algorithm 'ppp'; did you mean 'ppo'?"),
        (["--algo", "ppo", "--env", "pointmas"], "unknown env 'pointmas'; did you mean 'pointmass'?"),
        (["--algo", "ppo", "--env", "pointmass", "--preset", "smok"], "unknown preset 'smok'; did you mean 'smoke'?"),
        (["--algo", "ppo", "--env", "pointmass", "--set", "lrr=1"], "unknown ppo config key 'lrr'; did you mean 'lr'?"),
        (["--algo", "ppo", "--env", "pointmass", "--set", "lr=fast"], "ppo config key 'lr': expected float"),
        (["--algo", "ppo", "--env", "pointmass", "--set", "env.dtt=1"], "did you mean 'dt'?"),
        (["--algo", "ppo", "--env", "pointmass", "--set", "lr"], "--set expects key=value"),
        (["--algo", "ppo", "--env", "pointmass", "--device", "cuda"], "CUDA is not available"),
        (["--algo", "ppo", "--env", "pointmass", "--device", "tpu"], "unknown device 'tpu'"),
        (["--algo", "ppo", "--env", "gym:CartPole-v1"], "only continuous Box"),
        (["--env", "pointmass"], "--algo and --env are required"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str, out: Path) -> None:
    res = cli("run", *args, "--out", str(out))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not (out / "runs").exists()  # nothing written for bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--algo", "ppo", "--env", "pointmass", "--run-id", "../../../../escape"], "--run-id '../../"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--run-id", "/abs/path"], "not a plain name"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--run-id", "x" * 300], "at most 128 characters"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--run-id", ".hidden"], "not a plain name"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--seed", "99999999999999999999"], "--seed must be in"),
        (["collect", "--env", "pointmass", "--algo", "ppo", "--name", "../../x"], "--name '../../x'"),
        (["pretrain-wm", "--dataset", "d", "--name", "a/b"], "--name 'a/b' is not a plain name"),
        # values that pass the type check but are nonsense
        (["run", "--algo", "ppo", "--env", "pointmass", "--set", "lr=nan"], "expected float, got 'nan'"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--set", "lr=inf"], "expected float, got 'inf'"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--set", "hidden=[0]"], "positive layer widths"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--set", "hidden=[-64]"], "positive layer widths"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--set", "num_envs=100000000"], "at most 1,048,576"),
        (["run", "--algo", "ppo", "--env", "pointmass", "--set", "num_envs=99999999999999999999"], "at most"),
        # other subcommands
        (["list", "--algo", "ppo", "--env", "nope"], "unknown env 'nope'"),
        (["list", "--env", "hopper"], "only apply with --algo"),
        (["compare", "--env", "pointmass", "--algos", "ppo,,ppo"], "has an empty name"),
        (["compare", "--env", "pointmass", "--algos", "ppo,ppo"], "ppo more than once"),
        (["compare", "--env", "pointmass", "--seeds", "100000000000"], "--seeds must be in [1, 1000]"),
        (["sweep", "single-task", "--seeds", "100000000000"], "--seeds must be in [1, 1000]"),
        (["pretrain-wm", "--name", "nosuch", "--resume"], "no world model to resume"),
        (["wm-check", "nowhere", "--horizon", "0"], "--horizon must be in [1, 1000]"),
        (["wm-check", "nowhere", "--horizon", "100000"], "--horizon must be in [1, 1000]"),
        (["bench-env", "--env", "mt:toy"], "is a task set"),
    ],
)
def test_names_and_values_that_make_no_sense_are_refused(args: list[str], message: str, tmp_path: Path) -> None:
    """A run id or artefact name is one plain folder name, a value is one the run can use: such input
    is one line and exit 2, and nothing is written, outside the store or inside it."""
    out = tmp_path / "store" / "inner"
    res = cli(*args, *(["--out", str(out)] if args[0] not in ("list", "wm-check", "bench-env") else []))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []  # not even the store


def test_resume_cannot_rename_a_run_and_show_prints_stored_text_verbatim(out: Path) -> None:
    run_dir = out / "runs" / "pointmass" / "ppo" / "r1"
    res = cli("run", "--algo", "ppo", "--env", "pointmass", "--preset", "smoke", "--out", str(out), "--run-id", "r1")
    assert res.returncode == 0, res.stderr
    summary = read_summary(run_dir)
    summary.update(status="failed", error="policy std is [nan, nan] at step 3")
    from pwm_bench.store import atomic_write_json

    atomic_write_json(run_dir / "summary.json", summary)
    shown = cli("show", str(run_dir))
    assert shown.returncode == 0 and "[nan, nan]" in shown.stdout  # not read as Rich markup
    res = cli("run", "--resume", str(run_dir), "--run-id", "other")
    assert res.returncode == 2 and "cannot rename it" in res.stderr and not (run_dir.parent / "other").exists()


def test_a_diverging_ppo_stops_with_the_nan_message(out: Path) -> None:
    """A far too large learning rate: PPO stops with exit 1 and a one-line reason, as SHAC does, instead
    of crashing inside torch.distributions."""
    res = cli("run", "--algo", "ppo", "--env", "pointmass", "--preset", "smoke", "--set", "lr=1e12", "--out", str(out))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "training diverged; lower the learning rate" in res.stderr
    run_dir = next((out / "runs" / "pointmass" / "ppo").iterdir())
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "diverged" in summary["error"]


def test_help_has_examples() -> None:
    for cmd in ("run", "list", "results", "show"):
        res = cli(cmd, "--help")
        assert res.returncode == 0 and "Example" in res.stdout, cmd


def test_list_names_envs_algorithms_presets() -> None:
    res = cli("list")
    assert res.returncode == 0
    for word in ("pointmass", "gym:<id>", "ppo", "smoke", "cpu", "paper"):
        assert word in res.stdout
    res = cli("list", "--algo", "ppo", "--preset", "smoke")
    assert res.returncode == 0 and "rollout_steps" in res.stdout and "GAE" in res.stdout


def test_run_results_show(out: Path, tmp_path: Path) -> None:
    res = cli("run", "--algo", "ppo", "--env", "pointmass", "--preset", "smoke", "--seed", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("completed: eval return")
    assert "steps 4.10k/4.10k" in res.stderr  # plain progress lines off a terminal
    run_dir = next((out / "runs" / "pointmass" / "ppo").iterdir())

    table = cli("results", "--out", str(out), "--csv", str(tmp_path / "runs.csv"))
    assert table.returncode == 0 and "pointmass" in table.stdout and "completed" in table.stdout
    assert (tmp_path / "runs.csv").read_text().startswith("env,algo,seed,preset,status")

    shown = cli("show", str(run_dir))
    assert shown.returncode == 0 and "rollout_steps" in shown.stdout and "completed" in shown.stdout

    bad = cli("show", str(tmp_path))
    assert bad.returncode == 2 and "not a run folder" in bad.stderr


def test_results_on_empty_store(out: Path) -> None:
    res = cli("results", "--out", str(out))
    assert res.returncode == 0 and "no runs under" in res.stdout


def test_sigterm_exits_130_and_cli_resume_completes(out: Path) -> None:
    cmd = [sys.executable, "-m", "pwm_bench", "run", "--algo", "ppo", "--env", "pointmass", "--out", str(out)]
    cmd += ["--set", "total_steps=300000", "--set", "eval_every=1024", "--set", "num_envs=8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(out.glob("runs/*/*/*/checkpoints/latest.pt")))
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stdout.startswith("interrupted:") and "resume with: pwm-bench run --resume" in stderr
    run_dir = next((out / "runs" / "pointmass" / "ppo").iterdir())
    assert read_summary(run_dir)["status"] == "interrupted"

    # shorten the remaining budget so the resumed part takes seconds
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    steps = read_summary(run_dir)["env_steps"]
    cfg["algo_config"]["total_steps"] = steps + 4096
    atomic_write_yaml(run_dir / "config.yaml", cfg)
    res = cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["resumes"] == 1
    assert summary["env_steps"] == steps + 4096
