"""Run a grid's cells as Ray tasks (``pwm-bench sweep --launcher ray``).

Each cell is one Ray task that declares its needs (``num_cpus`` = the cell's torch threads,
``num_gpus`` when it runs on CUDA) and runs the cell, or resumes an interrupted one, in the Ray
worker on whichever node Ray schedules it, as ``pwm-bench run`` would. Runs write straight into
the results store, so the store must be a path every node sees (a shared file system); the
driver checks each cell's ``summary.json`` there when its task returns. ``address=None`` starts a
local Ray instance; ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster.

Ray is an optional dependency: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pwm_bench.analysis.sweep import Cell, GridInterrupted, SweepMonitor, cell_request, cell_status, pending
from pwm_bench.errors import UsageError
from pwm_bench.store import read_summary

log = logging.getLogger("pwm_bench.sweep")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError('--launcher ray needs Ray: pip install -e ".[ray]"') from None
    return ray


def _run_cell_task(cell: Cell, device: str, out: str, threads: int) -> tuple[str, str]:
    """Body of the Ray task: run (or resume) ``cell`` in the worker; returns (status, detail).

    The run writes into the store at ``out`` as ``pwm-bench run`` would. A cancelled task (the
    driver got Ctrl-C) interrupts the run, which keeps its metrics up to the last checkpoint.
    """
    from pwm_bench.runner import execute

    req = cell_request(cell, device, Path(out), threads)
    try:
        result = execute(req)
    except Exception as exc:  # reported to the driver; the sweep goes on
        return "failed", f"{type(exc).__name__}: {exc}"
    s = result.summary
    detail = result.error or (
        f"eval return {s['final_eval_return']:.1f}" if s.get("final_eval_return") is not None else ""
    )
    return result.status, detail


def run_cells_ray(
    cells: Sequence[Cell],
    *,
    device: str = "auto",
    out: Path = Path("results"),
    threads: int = 1,
    gpus_per_cell: float = 0.0,
    address: str | None = None,
    monitor: SweepMonitor | None = None,
    retry_failed: bool = False,
    init_kwargs: dict[str, Any] | None = None,
) -> list[Cell]:
    """Run (or finish) every cell as a Ray task; returns ``cells``.

    Args:
        cells: the grid.
        device: device of every run (``cuda`` needs ``gpus_per_cell > 0``).
        out: results root, a path that every Ray node sees (made absolute here).
        threads: torch threads of each run, and the CPUs each task asks Ray for.
        gpus_per_cell: GPUs each task asks Ray for (a fraction shares a GPU).
        address: Ray cluster to join (None: start a local instance).
        monitor: shows the grid's progress (default: log lines).
        retry_failed: also rerun cells whose run failed earlier.
        init_kwargs: extra ``ray.init`` arguments (e.g. ``num_cpus`` of a local instance).

    Raises:
        GridInterrupted: a stop request ended the grid early.
    """
    ray = _import_ray()
    out = Path(out).resolve()
    cells = [c if c.run_dir.is_absolute() else _absolute(c) for c in cells]
    todo = pending(cells, retry_failed)
    if device.startswith("cuda") and gpus_per_cell <= 0:
        raise UsageError("--device cuda with --launcher ray needs --gpus-per-cell > 0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, **(init_kwargs or {}))
    monitor = monitor or SweepMonitor(len(cells), sum(cell_status(c) == "completed" for c in cells))
    task = ray.remote(_run_cell_task).options(num_cpus=threads, num_gpus=gpus_per_cell, max_retries=0)
    refs: dict[Any, Cell] = {}
    interrupted = False
    try:
        for cell in todo:
            refs[task.remote(cell, device, str(out), threads)] = cell
            monitor.started(cell)
        waiting = list(refs)
        while waiting:
            try:
                ready, waiting = ray.wait(waiting, num_returns=1)
            except KeyboardInterrupt:
                interrupted = True
                log.warning("stop requested: cancelling the cells' tasks (runs save a checkpoint and stop)")
                for ref in waiting:
                    ray.cancel(ref)
                continue
            ref = ready[0]
            cell = refs[ref]
            try:
                status, detail = ray.get(ref)
            except Exception as exc:  # cancelled, or the worker died
                interrupted = interrupted or "Cancel" in type(exc).__name__
                monitor.finished(cell, "interrupted" if interrupted else "failed", f"{type(exc).__name__}: {exc}")
                continue
            # the store is the truth: the driver reads the run's own summary on the shared path
            stored = read_summary(cell.run_dir).get("status", "missing")
            if stored != status:
                detail = f"the task said {status}, the store says {stored} (is {out} shared with the nodes?)"
                status = "failed" if stored != "completed" else stored
            interrupted = interrupted or status == "interrupted"
            monitor.finished(cell, status, detail)
    finally:
        monitor.close()
        if started_here:
            ray.shutdown()
    if interrupted:
        raise GridInterrupted(cells)
    return cells


def _absolute(cell: Cell) -> Cell:
    import dataclasses

    return dataclasses.replace(cell, run_dir=cell.run_dir.resolve())
