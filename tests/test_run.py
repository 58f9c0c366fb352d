"""Run harness guarantees: resume, signals, atomic files, NaN handling, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pwm_bench.errors import UsageError
from pwm_bench.progress import Reporter
from pwm_bench.run import timing_columns
from pwm_bench.runner import RunRequest, execute
from pwm_bench.store import atomic_write_text, read_summary, runs_table

from .conftest import PPO_TINY, REPO, run_inprocess


class SignalAt(Reporter):
    """Sends ``sig`` to this process once ``at`` env steps are done (like Ctrl-C or ``kill``)."""

    def __init__(self, at: int, sig: int = signal.SIGTERM) -> None:
        self.at, self.sig, self.sent = at, sig, False

    def update(self, completed: int, **fields: object) -> None:
        if completed >= self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)


def _metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def _deterministic(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=timing_columns(df.columns))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_then_resume_matches_uninterrupted_budget(out: Path, sig: int) -> None:
    full = run_inprocess(out, overrides=PPO_TINY, run_id="full")
    part = run_inprocess(out, overrides=PPO_TINY, run_id="part", reporter=SignalAt(3000, sig))
    assert part.status == "interrupted"
    assert read_summary(part.run_dir)["status"] == "interrupted"
    stopped_at = part.summary["env_steps"]
    assert 3000 <= stopped_at < full.summary["env_steps"]
    # checkpoint and metrics were flushed at the stop
    assert (part.run_dir / "checkpoints" / "latest.pt").exists()
    assert _metrics(part.run_dir)["env_steps"].iloc[-1] == stopped_at

    resumed = execute(RunRequest(resume=part.run_dir))
    assert resumed.status == "completed" and resumed.summary["resumes"] == 1
    assert resumed.summary["env_steps"] == full.summary["env_steps"]
    a, b = _metrics(full.run_dir), _metrics(resumed.run_dir)
    # same rows at the same env steps: nothing duplicated, nothing missing
    assert b["env_steps"].tolist() == a["env_steps"].tolist()
    assert b["env_steps"].is_unique and b["env_steps"].is_monotonic_increasing
    assert b["eval/episode_return"].notna().sum() == a["eval/episode_return"].notna().sum()
    # rows before the stop are kept exactly
    k = int((a["env_steps"] <= stopped_at).sum())
    pd.testing.assert_frame_equal(_deterministic(a).iloc[:k], _deterministic(b).iloc[:k])
    assert pd.Series(b["wall_time"]).is_monotonic_increasing


def test_a_run_resumed_under_another_commit_records_it(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pwm_bench.runner as runner

    monkeypatch.setattr(runner, "git_commit", lambda: "a" * 40)
    part = run_inprocess(out, overrides=PPO_TINY, run_id="part", reporter=SignalAt(3000))
    assert part.status == "interrupted"
    stopped_at = part.summary["env_steps"]
    monkeypatch.setattr(runner, "git_commit", lambda: "b" * 40)
    resumed = execute(RunRequest(resume=part.run_dir))
    assert resumed.status == "completed"
    config = yaml.safe_load((part.run_dir / "config.yaml").read_text())
    assert config["git_commit"] == "a" * 40
    assert config["resumed_commits"] == [{"git_commit": "b" * 40, "env_steps": stopped_at}]
    assert read_summary(part.run_dir)["resumed_commits"] == config["resumed_commits"]
    # resumed again under the same commit: nothing new to record
    again = run_inprocess(out, overrides=PPO_TINY, run_id="again", reporter=SignalAt(3000))
    monkeypatch.setattr(runner, "git_commit", lambda: "b" * 40)
    execute(RunRequest(resume=again.run_dir))
    assert "resumed_commits" not in yaml.safe_load((again.run_dir / "config.yaml").read_text())


def test_resume_refuses_changes_and_completed_runs(out: Path) -> None:
    done = run_inprocess(out)
    with pytest.raises(UsageError, match="already completed"):
        execute(RunRequest(resume=done.run_dir))
    with pytest.raises(UsageError, match="cannot change it"):
        execute(RunRequest(resume=done.run_dir, algo="ppo", seed=9))
    with pytest.raises(UsageError, match="not a run folder"):
        execute(RunRequest(resume=out))


def test_nan_loss_fails_run_and_keeps_history(out: Path, test_registrations: None) -> None:
    res = run_inprocess(out, algo="nan_loss")
    assert res.status == "failed"
    assert "metric 'loss/critic' at env step 1536" in res.error
    summary = read_summary(res.run_dir)
    assert summary["status"] == "failed" and "loss/critic" in summary["error"]
    m = _metrics(res.run_dir)
    assert m["env_steps"].tolist() == [128 * k for k in range(1, 12)]  # every iteration before the NaN
    assert (m["loss/critic"] == 1.0).all()


def test_nan_observation_fails_run(out: Path, test_registrations: None) -> None:
    res = run_inprocess(out, env="nan_pointmass")
    assert res.status == "failed"
    assert "non-finite observation from env 'nan_pointmass'" in res.error and "world 1" in res.error
    assert len(_metrics(res.run_dir)) > 0


@pytest.mark.parametrize("env", ["pointmass", "gym:Pendulum-v1"])
def test_same_seed_same_metrics(out: Path, env: str) -> None:
    a = run_inprocess(out, env=env, seed=3, run_id="a")
    b = run_inprocess(out, env=env, seed=3, run_id="b")
    c = run_inprocess(out, env=env, seed=4, run_id="c")
    da, db, dc = (_deterministic(_metrics(r.run_dir)) for r in (a, b, c))
    pd.testing.assert_frame_equal(da, db)
    assert not da.equals(dc)
    text_a = [line.split(",") for line in (a.run_dir / "metrics.csv").read_text().splitlines()]
    cols = text_a[0]
    strip = timing_columns(cols)
    assert {"wall_time", "time/sps", "time/eval_s"} <= set(strip)
    keep = [i for i, c in enumerate(cols) if c not in strip]
    text_b = [line.split(",") for line in (b.run_dir / "metrics.csv").read_text().splitlines()]
    assert [[r[i] for i in keep] for r in text_a] == [[r[i] for i in keep] for r in text_b]


def test_run_store_layout(out: Path) -> None:
    res = run_inprocess(out, seed=7)
    assert res.run_dir.parent == out / "runs" / "pointmass" / "ppo"
    cfg = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert cfg["algo"] == "ppo" and cfg["seed"] == 7 and cfg["preset"] == "smoke"
    assert cfg["algo_config"]["total_steps"] == 4096 and cfg["env_config"]["episode_length"] == 100
    summary = json.loads((res.run_dir / "summary.json").read_text())
    for key in ("status", "final_eval_return", "best_eval_return", "env_steps", "wall_time", "seed", "device"):
        assert key in summary
    assert summary["versions"]["torch"] == torch.__version__
    assert "git_commit" in summary
    ckpt = torch.load(res.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["env_steps"] == summary["env_steps"]
    assert (res.run_dir / "checkpoints" / "best.pt").exists()
    m = _metrics(res.run_dir)
    for col in ("env_steps", "wall_time", "train/episode_return", "eval/episode_return", "time/sps", "loss/actor"):
        assert col in m.columns
    # seconds each evaluation took, on its rows only
    assert (m["time/eval_s"].notna() == m["eval/episode_return"].notna()).all()
    assert (m["time/eval_s"].dropna() > 0).all()
    assert m["eval/episode_return"].dropna().max() == pytest.approx(summary["best_eval_return"])
    assert m["eval/episode_return"].dropna().iloc[-1] == pytest.approx(summary["final_eval_return"])
    table = runs_table(out)
    assert table.loc[0, "status"] == "completed" and table.loc[0, "seed"] == 7
    # the floor: uniform random actions on the same evaluation worlds, reproducible from the seed
    from pwm_bench.envs import make_env
    from pwm_bench.run import EVAL_SEED_OFFSET, UniformRandomPolicy, evaluate

    eval_env = make_env("pointmass", cfg["algo_config"]["eval_episodes"], **cfg["env_config"])
    seed = 7 + EVAL_SEED_OFFSET
    expected, length = evaluate(UniformRandomPolicy(eval_env.act_dim, seed), eval_env, seed=seed)
    assert summary["random_eval_return"] == pytest.approx(expected) and summary["random_eval_length"] == length
    assert summary["random_eval_return"] < summary["best_eval_return"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    from pwm_bench.store import atomic_open

    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half of the new cont")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_sigkill_leaves_no_truncated_file_and_resumes(out: Path) -> None:
    """Kill -9 a CLI run while it writes checkpoints; every file must parse and resume must finish."""
    args = [f"{k}={v}" for k, v in {**PPO_TINY, "total_steps": "400000", "eval_every": "1024"}.items()]
    cmd = [sys.executable, "-m", "pwm_bench", "run", "--algo", "ppo", "--env", "pointmass", "--out", str(out)]
    for a in args:
        cmd += ["--set", a]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        latest = None
        while time.monotonic() < deadline:
            found = list(out.glob("runs/*/*/*/checkpoints/latest.pt"))
            if found:
                latest = found[0]
                break
            time.sleep(0.2)
        assert latest is not None, "no checkpoint within 120 s"
        time.sleep(2.0)  # several more checkpoint/metrics writes
    finally:
        proc.kill()
        proc.wait()
    run_dir = latest.parents[1]
    assert read_summary(run_dir)["status"] == "died"  # 'running' in the file, but its process is gone
    yaml.safe_load((run_dir / "config.yaml").read_text())
    json.loads((run_dir / "summary.json").read_text())
    m = _metrics(run_dir)
    assert m["env_steps"].is_monotonic_increasing and not m.isna().all(axis=1).any()
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["env_steps"] <= int(m["env_steps"].iloc[-1])

    # resume with a small budget left: shrink the stored budget to just past the checkpoint
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["algo_config"]["total_steps"] = ckpt["env_steps"] + 2048
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    resumed = execute(RunRequest(resume=run_dir))
    assert resumed.status == "completed"
    assert resumed.summary["env_steps"] == ckpt["env_steps"] + 2048
    assert not list(run_dir.rglob(".*.tmp"))
    m2 = _metrics(run_dir)
    assert m2["env_steps"].is_unique and m2["env_steps"].is_monotonic_increasing
