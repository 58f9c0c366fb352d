"""Where a run's metrics go besides ``metrics.csv``: TensorBoard event files and W&B (offline).

``pwm-bench run --logger csv,tensorboard,wandb`` (``csv`` is always on) sends every metrics row to
each logger with the same metric names as ``metrics.csv`` and the row's ``env_steps`` as the step,
and the run's config as hyperparameters. Rows reach the loggers when they reach ``metrics.csv`` (at
each checkpoint and at the end), so a resumed run logs no row twice; TensorBoard is also told to
drop anything a killed process wrote past the checkpoint it resumes from (``purge_step``).

Both write inside the run folder (``tensorboard/``, ``wandb/``); they are optional extras, imported
when used: ``pip install -e ".[tensorboard]"`` or ``".[wandb]"``. W&B runs offline (nothing leaves
the machine); ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads one later. Event files are appended
as they go, so unlike the store's own files they are not written by temp file and rename.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pwm_bench.errors import UsageError, unknown_choice

log = logging.getLogger(__name__)

LOGGERS = ("csv", "tensorboard", "wandb")
"""Names ``--logger`` takes."""


def parse_loggers(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The extra loggers of a ``--logger`` value (``"csv,tensorboard"``): a sorted tuple without csv.

    Raises:
        UsageError: an unknown name (the message names the valid ones).
    """
    if spec is None:
        return ()
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    for n in names:
        if n not in LOGGERS:
            raise unknown_choice("logger", n, LOGGERS)
    extra = tuple(sorted({n for n in names if n != "csv"}))
    for n in extra:  # a missing extra is bad input too: refused before the run writes anything
        if importlib.util.find_spec(_PACKAGES[n]) is None:
            raise UsageError(f'--logger {n} needs the {_PACKAGES[n]} package: pip install -e ".[{n}]"')
    return extra


_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class MetricSink(Protocol):
    """A destination of metrics rows."""

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Log ``values`` (metric name -> value) at env step ``step``."""
        ...

    def close(self) -> None: ...


def _flat_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """The run's identity and every config field, one level deep (``algo_config.lr`` ...), as scalars
    or strings (what hyperparameter tables take)."""
    out: dict[str, Any] = {}
    for key in ("algo", "env", "seed", "preset", "device"):
        if key in record:
            out[key] = record[key]
    for section in ("algo_config", "env_config"):
        for k, v in (record.get(section) or {}).items():
            out[f"{section}.{k}"] = v if isinstance(v, bool | int | float | str) else str(v)
    return out


class TensorBoardSink:
    """Scalars in ``RUN_DIR/tensorboard`` (one tag per metric), the config as hyperparameters."""

    def __init__(self, run_dir: Path, record: Mapping[str, Any], purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # torch's writer needs the tensorboard package
            raise UsageError('--logger tensorboard needs TensorBoard: pip install -e ".[tensorboard]"') from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
        if purge_step is None:  # the hyperparameters once, with the run's first events
            config = _flat_config(record)
            exp, ssi, sei = hparams(config, {"eval/episode_return": float("nan")})
            for summary in (exp, ssi, sei):
                self.writer.file_writer.add_summary(summary)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in offline mode under ``RUN_DIR/wandb``, the config as its config."""

    def __init__(self, run_dir: Path, record: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise UsageError('--logger wandb needs wandb: pip install -e ".[wandb]"') from None
        self.wandb = wandb
        # one W&B run per run folder, resumed with it: its id comes from the folder's name
        run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.name)[:64]
        self.run = wandb.init(
            project="pwm-bench",
            name=run_dir.name,
            id=run_id,
            dir=str(run_dir),
            mode="offline",
            config=_flat_config(record),
            resume="allow",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def open_sinks(
    names: Sequence[str], run_dir: Path, record: Mapping[str, Any], purge_step: int | None
) -> list[MetricSink]:
    """The sinks of ``names`` (from :func:`parse_loggers`) for a run; ``purge_step`` is the first env
    step after the checkpoint a resumed run continues from (None for a fresh run)."""
    sinks: list[MetricSink] = []
    for name in names:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(run_dir, record, purge_step))
        elif name == "wandb":
            sinks.append(WandbSink(run_dir, record))
    return sinks
