"""Run the cells of a grid into the results store: plan, reuse, resume, launch (local pool or Ray).

Every cell is an ordinary run in the results store, at ``<out>/runs/<env>/<algo>/<run-id>`` with
``run-id = cmp-<preset>-<tag>-s<seed>``, where ``tag`` hashes the cell's fully resolved algorithm
and env configs. The same cell therefore has the same folder whichever command asks for it
(``pwm-bench compare``, ``pwm-bench sweep`` of any experiment): a completed cell is reused, an
interrupted or dead one resumed from its latest checkpoint, a missing one started. A cell that
failed (NaN/inf, an exception) is reported and the sweep goes on; the next sweep leaves it alone
unless asked to retry failed cells.

Launchers:

- local, ``jobs == 1``: cells run one after another in this process.
- local, ``jobs > 1``: a pool of that many ``pwm-bench run`` subprocesses, each limited to
  ``threads`` torch threads (default ``cpu_count // jobs``).
- Ray (:func:`pwm_bench.analysis.ray_launcher.run_cells_ray`): each cell is a Ray task.

A stop request (SIGINT or SIGTERM) stops the whole grid, not just the cell it lands in: running
cells save a checkpoint and stop, no further cell starts, and :func:`run_cells` raises
:class:`GridInterrupted`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pwm_bench.errors import DamagedFileError, PwmBenchError, UsageError, unknown_choice
from pwm_bench.progress import _fmt_duration
from pwm_bench.store import env_dirname, read_config, read_summary

log = logging.getLogger("pwm_bench.sweep")

INTERRUPTED_EXIT_CODE = 130
"""Exit code of a ``pwm-bench run`` that stopped on a signal after saving its state."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a grid.

    Attributes:
        algo: algorithm name.
        env: env name.
        seed: seed.
        preset: preset of the run.
        overrides: every ``--set`` override of the run (``env.``-prefixed for env options).
        run_dir: the run's folder in the results store.
        label: the env column it belongs to in figures and tables (default: ``env``).
        variant: the algorithm row it belongs to when an experiment runs one algorithm in several
            variants (``pwm-mish``: PWM with a Mish world model; default: ``algo``).
    """

    algo: str
    env: str
    seed: int
    preset: str
    overrides: Mapping[str, Any]
    run_dir: Path
    label: str = ""
    variant: str = ""

    @property
    def env_label(self) -> str:
        return self.label or self.env

    @property
    def algo_label(self) -> str:
        return self.variant or self.algo

    @property
    def tag(self) -> str:
        """The config hash in the run id (``cmp-<preset>-<tag>-s<seed>``)."""
        return self.run_dir.name.split("-")[2]


def cell_tag(algo: str, env: str, preset: str, overrides: Mapping[str, Any]) -> str:
    """Short stable hash of a cell's fully resolved algorithm and env configs (part of its run id).

    Resolved values, not the preset name, go in: after a preset changes, a sweep starts new runs
    instead of reusing runs made with the old values. A field added later sits out of the hash at
    its neutral value (:func:`~pwm_bench.config.neutral`), so stored runs keep their ids. Raises
    :class:`UsageError` on an override
    that the algorithm or env does not have.
    """
    from pwm_bench.algos import get_algorithm
    from pwm_bench.config import apply_overrides, identity_dict
    from pwm_bench.envs import env_spec
    from pwm_bench.runner import split_overrides

    spec = get_algorithm(algo)
    algo_ov, env_ov = split_overrides(overrides)
    cfg = apply_overrides(spec.config.from_preset(preset, env), algo_ov, what=f"{algo} config key")
    env_cfg = apply_overrides(env_spec(env).config(), env_ov, what=f"'{env}' env option")
    text = json.dumps({"algo": identity_dict(cfg), "env": identity_dict(env_cfg)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def make_cell(
    algo: str,
    env: str,
    seed: int,
    preset: str,
    overrides: Mapping[str, Any],
    out: Path,
    label: str = "",
    variant: str = "",
) -> Cell:
    """The cell of ``algo`` on ``env`` (validated: raises :class:`UsageError`)."""
    from pwm_bench.algos import get_algorithm
    from pwm_bench.config import PRESETS
    from pwm_bench.envs import env_spec

    spec = env_spec(env)
    if preset not in PRESETS:
        raise unknown_choice("preset", preset, PRESETS)
    if get_algorithm(algo).requires_gradients and not spec.differentiable:
        raise UsageError(f"algorithm '{algo}' needs simulator gradients; env '{env}' has none")
    if seed < 0:
        raise UsageError(f"seeds must be non-negative, got {seed}")
    tag = cell_tag(algo, env, preset, overrides)
    run_dir = Path(out) / "runs" / env_dirname(env) / algo / f"cmp-{preset}-{tag}-s{seed}"
    return Cell(algo, env, seed, preset, dict(overrides), run_dir, label, "" if variant == algo else variant)


def cell_status(cell: Cell) -> str:
    """``missing``, or the run's stored status (``completed``, ``running``, ``interrupted``,
    ``failed``, ``died``, or ``damaged`` when its ``config.yaml`` or ``summary.json`` cannot be read)."""
    if not cell.run_dir.exists():
        return "missing"
    try:
        read_config(cell.run_dir)
    except DamagedFileError:
        return "damaged"
    return read_summary(cell.run_dir).get("status", "missing")


def damaged_cell_advice(cell: Cell, reason: str) -> str:
    """What to do with a cell whose stored run cannot be continued."""
    return f"{reason}; move {cell.run_dir} away and give the same command again to run the cell anew"


class GridInterrupted(PwmBenchError):
    """A stop request ended :func:`run_cells` early; ``cells`` is the whole grid (some not completed)."""

    def __init__(self, cells: list[Cell]) -> None:
        super().__init__("grid interrupted")
        self.cells = cells


def cell_args(cell: Cell, device: str, out: Path) -> list[str]:
    """``pwm-bench`` arguments that run (or resume) ``cell``."""
    if cell.run_dir.exists() and read_summary(cell.run_dir).get("status") is not None:
        return ["run", "--resume", str(cell.run_dir), "--device", device]
    args = ["run", "--algo", cell.algo, "--env", cell.env, "--seed", str(cell.seed), "--preset", cell.preset]
    args += ["--device", device, "--out", str(out), "--run-id", cell.run_dir.name]
    for k, v in cell.overrides.items():
        args += ["--set", f"{k}={v}"]
    return args


def cell_request(cell: Cell, device: str, out: Path, threads: int | None = None, reporter: Any = None) -> Any:
    """The :class:`~pwm_bench.runner.RunRequest` that runs ``cell`` in this process, or resumes it."""
    from pwm_bench.runner import RunRequest

    if cell.run_dir.exists() and read_summary(cell.run_dir).get("status") is not None:
        return RunRequest(resume=cell.run_dir, device=device, reporter=reporter, threads=threads)
    return RunRequest(
        algo=cell.algo,
        env=cell.env,
        seed=cell.seed,
        preset=cell.preset,
        device=device,
        overrides=cell.overrides,
        out=Path(out),
        run_id=cell.run_dir.name,
        reporter=reporter,
        threads=threads,
    )


class SweepMonitor:
    """Counts of a grid's cells (done, running, failed, to do) and an ETA, shown as it goes.

    ``display`` is ``"bar"`` (a rich progress bar), ``"log"`` (a log line on every change) or
    ``"none"``. The ETA is the mean wall time of the cells finished by this process times the
    cells left, divided by the cells that run at once.
    """

    def __init__(self, total: int, done: int = 0, parallel: int = 1, display: str = "log") -> None:
        self.total, self.done, self.failed, self.running = total, done, 0, 0
        self.parallel = max(1, parallel)
        self.display = display
        self._walls: list[float] = []
        self._started: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._progress: Any = None
        self._task: Any = None
        if display == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]cells"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"),
                TimeElapsedColumn(),
            )
            self._task = self._progress.add_task("cells", total=total, completed=done, state=self._state())
            self._progress.start()

    def eta(self) -> float | None:
        """Seconds left (None until a cell has finished in this process)."""
        if not self._walls:
            return None
        left = self.total - self.done - self.failed
        return sum(self._walls) / len(self._walls) * left / self.parallel

    def _state(self) -> str:
        eta = self.eta()
        return (
            f"{self.running} running, {self.failed} failed, {self.total - self.done - self.failed - self.running} "
            f"to start, ETA {'—' if eta is None else _fmt_duration(eta)}"
        )

    def _show(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, state=self._state())
        elif self.display == "log":
            log.info("cells: %d/%d done, %s", self.done, self.total, self._state())

    def started(self, cell: Cell) -> None:
        with self._lock:
            self.running += 1
            self._started[cell.run_dir] = time.monotonic()
            if self._progress is not None:  # log lines come when a cell ends
                self._show()

    def finished(self, cell: Cell, status: str, detail: str = "") -> None:
        """``status``: the run's final status (``completed``, ``failed``, ``interrupted``, ...)."""
        with self._lock:
            self.running -= 1
            t0 = self._started.pop(cell.run_dir, None)
            if status == "completed":
                self.done += 1
                if t0 is not None:
                    self._walls.append(time.monotonic() - t0)
            elif status != "interrupted":
                self.failed += 1
            what = f"{cell.algo_label} · {cell.env_label} · seed {cell.seed}"
            if status in ("completed", "interrupted"):
                log.info("%s: %s%s", what, status, f" ({detail})" if detail else "")
            else:
                log.warning("%s: %s%s", what, status, f" ({detail})" if detail else "")
            self._show()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def pending(cells: Sequence[Cell], retry_failed: bool = False) -> list[Cell]:
    """The cells that still need running: not completed, not failed (unless ``retry_failed``)
    and not running in another live process."""
    todo = []
    for c in cells:
        status = cell_status(c)
        if status == "completed":
            continue
        if status == "failed" and not retry_failed:
            log.warning(
                "%s · %s · seed %d failed earlier (%s); left alone (retry with --retry-failed)",
                c.algo_label,
                c.env_label,
                c.seed,
                read_summary(c.run_dir).get("error", "no error recorded"),
            )
            continue
        if status == "damaged":
            try:
                read_config(c.run_dir)
            except DamagedFileError as exc:
                log.warning(
                    "%s · %s · seed %d: %s", c.algo_label, c.env_label, c.seed, damaged_cell_advice(c, str(exc))
                )
                continue
            # only its summary is damaged: resuming rewrites it
        if status == "running":
            log.warning(
                "%s · %s · seed %d is running in another process; left alone", c.algo_label, c.env_label, c.seed
            )
            continue
        todo.append(c)
    return todo


def run_cells(
    cells: Sequence[Cell],
    *,
    device: str = "auto",
    out: Path = Path("results"),
    jobs: int = 1,
    threads: int | None = None,
    reporter_factory: Callable[[], Any] | None = None,
    monitor: SweepMonitor | None = None,
    retry_failed: bool = False,
) -> list[Cell]:
    """Run (or finish) every cell; returns ``cells``.

    Args:
        cells: the grid.
        device: device of every run.
        out: results root.
        jobs: cells run at once (1 = in this process, one after another).
        threads: torch threads per cell (default: ``cpu_count // jobs`` in subprocesses; in this
            process, its current setting).
        reporter_factory: called with no arguments to make each in-process run's reporter.
        monitor: shows the grid's progress (default: log lines).
        retry_failed: also rerun cells whose run failed earlier.

    Raises:
        GridInterrupted: a stop request ended the grid early.
    """
    from pwm_bench.runner import execute

    cells = list(cells)
    todo = pending(cells, retry_failed)
    if jobs <= 0:
        raise UsageError(f"--jobs must be positive, got {jobs}")
    if len(todo) < len(cells):
        log.info("%d of %d cells need no run (completed, or failed earlier)", len(cells) - len(todo), len(cells))
    monitor = monitor or SweepMonitor(len(cells), sum(cell_status(c) == "completed" for c in cells), jobs)
    try:
        if jobs == 1:
            for cell in todo:
                try:  # a Ctrl-C between two cells stops the grid as one inside a cell does
                    reporter = reporter_factory() if reporter_factory is not None else None
                    req = cell_request(cell, device, out, threads, reporter)
                    monitor.started(cell)
                except KeyboardInterrupt:
                    raise GridInterrupted(cells) from None
                try:
                    result = execute(req)
                except KeyboardInterrupt:
                    monitor.finished(cell, "interrupted")
                    raise GridInterrupted(cells) from None
                except DamagedFileError as exc:  # e.g. no sound checkpoint left
                    monitor.finished(cell, "failed", damaged_cell_advice(cell, str(exc)))
                    continue
                except Exception as exc:  # a broken cell must not stop the sweep
                    log.debug("cell %s raised", cell.run_dir, exc_info=True)
                    monitor.finished(cell, "failed", f"{type(exc).__name__}: {exc}")
                    continue
                monitor.finished(cell, result.status, result.error or _returns(result.summary))
                if result.status == "interrupted":
                    raise GridInterrupted(cells)
            return cells
        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        _run_pool(todo, cells, device=device, out=out, jobs=jobs, threads=threads, monitor=monitor)
        return cells
    finally:
        monitor.close()


def _returns(summary: Mapping[str, Any]) -> str:
    final, best = summary.get("final_eval_return"), summary.get("best_eval_return")
    if final is None:
        return ""
    return f"eval return {final:.1f}, best {best:.1f}" if best is not None else f"eval return {final:.1f}"


def _run_pool(
    todo: Sequence[Cell],
    cells: Sequence[Cell],
    *,
    device: str,
    out: Path,
    jobs: int,
    threads: int,
    monitor: SweepMonitor,
) -> None:
    stop = threading.Event()
    live: set[subprocess.Popen[str]] = set()
    lock = threading.Lock()

    def launch(cell: Cell) -> None:
        args = [sys.executable, "-m", "pwm_bench", *cell_args(cell, device, out), "--quiet", "--threads", str(threads)]
        with lock:
            if stop.is_set():
                return
            # a session of its own: a Ctrl-C at the terminal reaches the grid only, which passes it on once
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            live.add(proc)
        monitor.started(cell)
        stdout, stderr = proc.communicate()
        with lock:
            live.discard(proc)
        if proc.returncode == 0:
            monitor.finished(cell, "completed", _returns(read_summary(cell.run_dir)))
            return
        if proc.returncode == INTERRUPTED_EXIT_CODE:
            stop.set()
            monitor.finished(cell, "interrupted")
            return
        tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
        monitor.finished(cell, "failed", f"exit code {proc.returncode}: {tail}")

    def on_signal(signum: int, frame: Any) -> None:
        again = stop.is_set()
        stop.set()
        log.warning(
            "%s received: %s",
            signal.Signals(signum).name,
            "aborting the running cells" if again else "running cells save a checkpoint and stop; no more start",
        )
        with lock:
            for proc in live:
                proc.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled} if in_main else {}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(launch, todo))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        raise GridInterrupted(list(cells))
