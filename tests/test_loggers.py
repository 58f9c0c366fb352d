"""``--logger tensorboard,wandb``: the same metrics and steps as ``metrics.csv``, nothing twice on resume."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from pwm_bench.errors import UsageError
from pwm_bench.loggers import parse_loggers
from pwm_bench.store import load_metrics

from .conftest import run_inprocess
from .test_reliability import inproc


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files, as TensorBoard reads them: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={"scalars": 0}).AddRunsFromDirectory(str(run_dir / "tensorboard"))
    mux.Reload()
    (run,) = mux.Runs()
    acc = mux.GetAccumulator(run)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_same_as_csv(run_dir: Path) -> None:
    metrics = load_metrics(run_dir)
    events = _events(run_dir)
    assert set(events) == set(metrics.columns) - {"env_steps"}
    for tag, points in events.items():
        expected = [(int(s), float(v)) for s, v in zip(metrics["env_steps"], metrics[tag], strict=True) if pd.notna(v)]
        assert [s for s, _ in points] == [s for s, _ in expected], tag
        assert all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for (_, a), (_, b) in zip(points, expected, strict=True)
        ), tag


def test_tensorboard_events_hold_what_metrics_csv_holds(out: Path) -> None:
    result = run_inprocess(out, "ppo", "pointmass", loggers="csv,tensorboard", threads=1)
    assert result.status == "completed"
    _assert_same_as_csv(result.run_dir)
    # the config went along as TensorBoard hyperparameters
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    hparams = acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    assert b"algo_config.lr" in hparams and b"ppo" in hparams


def test_a_resumed_run_logs_every_row_once(out: Path) -> None:
    from .test_run import SignalAt

    # interrupted (a checkpoint at the stop), then resumed to the end
    first = run_inprocess(out, "ppo", "pointmass", loggers="tensorboard", threads=1, reporter=SignalAt(1024))
    assert first.status == "interrupted"
    second = run_inprocess(out, resume=first.run_dir, preset=None)
    assert second.status == "completed"
    _assert_same_as_csv(second.run_dir)


def test_wandb_runs_offline_inside_the_run_folder(out: Path) -> None:
    result = run_inprocess(out, "ppo", "pointmass", loggers="wandb", threads=1)
    assert result.status == "completed"
    (offline,) = (result.run_dir / "wandb").glob("offline-run-*")
    assert any(offline.glob("*.wandb"))


def test_logger_names_and_missing_packages_are_refused_in_one_line(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_loggers("csv") == () and parse_loggers("wandb,csv,tensorboard") == ("tensorboard", "wandb")
    code, _, err = inproc("run", "--algo", "ppo", "--env", "pointmass", "--logger", "tensorbord", "--out", str(out))
    assert code == 2 and "did you mean 'tensorboard'" in err and len(err.strip().splitlines()) == 1
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UsageError, match=r'pip install -e "\.\[wandb\]"'):
        parse_loggers("wandb")
    assert not out.exists()
