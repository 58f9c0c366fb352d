"""Progress reporting: a rich progress bar on a terminal, plain log lines otherwise.

The run calls :meth:`Reporter.update` after each iteration with the env-step count and the latest
returns; long non-interactive phases (e.g. pretraining) use :meth:`Reporter.phase`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("pwm_bench")


def _fmt_return(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _fmt_steps(n: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Reporter:
    """Base reporter: does nothing (used in tests and library calls without a CLI)."""

    def start(self, title: str, total: int, completed: int = 0) -> None:
        """Begin the main (env-step) progress of a run titled ``title``."""

    def update(self, completed: int, **fields: Any) -> None:
        """Env steps done so far and the latest ``train_return``, ``eval_return``, ``sps``."""

    def note_eval(self, completed: int, eval_return: float) -> None:
        """An evaluation finished at ``completed`` env steps."""

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """Progress of a secondary phase; yields ``advance(n)``."""
        yield lambda n: None

    def stop(self) -> None:
        """Tear down (close the bar)."""


class LogReporter(Reporter):
    """Plain log lines: one per evaluation and at most one every ``interval`` seconds otherwise."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._title = ""
        self._total = 1
        self._start = time.monotonic()
        self._start_steps = 0
        self._last = 0.0
        self._fields: dict[str, Any] = {}

    def start(self, title: str, total: int, completed: int = 0) -> None:
        self._title, self._total, self._start_steps = title, max(total, 1), completed
        self._start = self._last = time.monotonic()
        self._fields = {}  # a reporter may serve several runs (a pipeline's stages)
        log.info("%s: starting at env step %s of %s", title, _fmt_steps(completed), _fmt_steps(total))

    def _line(self, completed: int) -> str:
        elapsed = time.monotonic() - self._start
        done = completed - self._start_steps
        eta = elapsed / done * (self._total - completed) if done > 0 else float("nan")
        f = self._fields
        return (
            f"{self._title} | steps {_fmt_steps(completed)}/{_fmt_steps(self._total)} "
            f"({100 * completed / self._total:.0f}%) | eval return {_fmt_return(f.get('eval_return'))} "
            f"| train return {_fmt_return(f.get('train_return'))} | {f.get('sps') or 0:.0f} sps "
            f"| eta {_fmt_duration(eta) if eta == eta else '?'}"
        )

    def update(self, completed: int, **fields: Any) -> None:
        self._fields.update({k: v for k, v in fields.items() if v is not None})
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info(self._line(completed))

    def note_eval(self, completed: int, eval_return: float) -> None:
        self._fields["eval_return"] = eval_return
        self._last = time.monotonic()
        log.info(self._line(completed))

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        log.info("%s: %d steps", description, total)
        t0 = time.monotonic()
        yield lambda n: None
        log.info("%s: done in %s", description, _fmt_duration(time.monotonic() - t0))


class RichReporter(Reporter):
    """A rich progress bar: env steps, latest eval/train return, steps/s, elapsed and ETA."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[steps]}"),
            TextColumn("eval {task.fields[eval]} · train {task.fields[train]} · {task.fields[sps]} sps"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task: Any = None
        self._total = 1

    def start(self, title: str, total: int, completed: int = 0) -> None:
        self._total = total
        self._progress.start()
        self._task = self._progress.add_task(
            title,
            total=total,
            completed=completed,
            steps=self._steps(completed),
            eval="—",
            train="—",
            sps="—",
        )

    def _steps(self, completed: int) -> str:
        return f"{_fmt_steps(completed)}/{_fmt_steps(self._total)} steps"

    def update(self, completed: int, **fields: Any) -> None:
        extra: dict[str, str] = {"steps": self._steps(completed)}
        if fields.get("train_return") is not None:
            extra["train"] = _fmt_return(fields["train_return"])
        if fields.get("eval_return") is not None:
            extra["eval"] = _fmt_return(fields["eval_return"])
        if fields.get("sps") is not None:
            extra["sps"] = f"{fields['sps']:.0f}"
        self._progress.update(self._task, completed=completed, **extra)

    def note_eval(self, completed: int, eval_return: float) -> None:
        self._progress.update(self._task, eval=_fmt_return(eval_return))

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self._progress.add_task(description, total=total, steps="", eval="—", train="—", sps="—")
        try:
            yield lambda n: self._progress.advance(task, n)
        finally:
            self._progress.remove_task(task)

    def stop(self) -> None:
        self._progress.stop()
