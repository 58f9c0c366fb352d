"""The run object every algorithm reports through, and the shared evaluation protocol.

An algorithm's ``train(env, cfg, run)`` follows this shape::

    state = run.restore()                 # None on a fresh run, else what state_fn returned
    ...build networks, load state...
    obs, _ = env.reset(seed=run.env_seed)
    while not run.done:
        ...collect (run.add_env_steps(n), run.record_episodes(info)) and update...
        run.log({"loss/actor": ..., "loss/critic": ...})
        run.end_iteration(policy, state_fn)   # eval, progress, checkpoint, stop requests
    return policy

The run writes one ``metrics.csv`` row per iteration, evaluates the deterministic policy every
``cfg.eval_every`` env steps on a separate env with fixed seeds (identical protocol for every
algorithm), checkpoints after each evaluation (``latest.pt``, plus ``best.pt`` on a new best
return) and, after a stop request (SIGINT/SIGTERM), checkpoints and raises
:class:`RunInterrupted` at the end of the current iteration.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import platform
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pwm_bench.errors import NonFiniteError, RunInterrupted
from pwm_bench.progress import Reporter
from pwm_bench.store import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    damaged_file,
    read_torch,
)

if TYPE_CHECKING:
    from pwm_bench.algos import Policy
    from pwm_bench.config import TrainConfig
    from pwm_bench.envs.base import VecEnv

log = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = (
    "env_steps",
    "iteration",
    "wall_time",
    "train/episode_return",
    "train/episode_length",
    "eval/episode_return",
    "eval/episode_length",
    "time/sps",
    "loss/actor",
    "loss/critic",
    "loss/world_model",
    "grad_norm/actor",
)
"""Metric names shared by every algorithm, in ``metrics.csv`` column order. ``env_steps`` counts
environment steps over all worlds; ``wall_time`` is seconds of training (summed over resumes);
``time/sps`` is env steps per second of the iteration (evaluation excluded); ``iteration`` counts
iterations (the budget unit of algorithms that do not interact with the env). Algorithms add
others under the same prefixes."""

NON_DETERMINISTIC_COLUMNS: tuple[str, ...] = ("wall_time", "time/sps")
"""Timing columns every run has. Algorithms log their own timings under ``time/`` too (e.g.
``time/plan_ms``); :func:`timing_columns` lists them all. Everything else is identical for the same
seed on CPU."""


def timing_columns(columns: Iterable[str]) -> list[str]:
    """The columns of ``columns`` that measure time (``wall_time`` and everything under ``time/``)."""
    return [c for c in columns if c in NON_DETERMINISTIC_COLUMNS or c.startswith("time/")]


CHECKPOINT_FORMAT = 1
EVAL_SEED_OFFSET = 1_000_000
"""Evaluation worlds are reset with ``seed + EVAL_SEED_OFFSET`` at every evaluation."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class UniformRandomPolicy:
    """Uniform random actions in ``[-1, 1]^act_dim`` from its own seeded generator (a return's floor).

    It ignores ``deterministic``: its actions are random by definition, but the same seed gives the
    same actions, so its evaluation is reproducible.
    """

    def __init__(self, act_dim: int, seed: int) -> None:
        self.act_dim, self.gen = act_dim, torch.Generator().manual_seed(seed)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """``(N, act_dim)`` actions for ``obs`` of shape ``(N, obs_dim)``, on ``obs``'s device."""
        return (torch.rand(obs.shape[0], self.act_dim, generator=self.gen) * 2 - 1).to(obs.device)


@torch.no_grad()
def evaluate(policy: Policy, env: VecEnv, seed: int, max_steps: int | None = None) -> tuple[float, float]:
    """Run one episode per world of ``env`` with the deterministic policy.

    Args:
        policy: anything with ``act(obs, deterministic=True)``; if it also has
            ``reset_episodes(mask)``, that is called with a boolean ``(num_envs,)`` mask of the worlds
            whose episode starts anew (all at reset, then the finished ones after each step).
        env: evaluation env; its ``num_envs`` is the number of episodes.
        seed: reset seed (the same seed gives the same start states).
        max_steps: safety cap on control steps (default: the env's time limit + 1, or 100 000).

    Returns:
        ``(mean return, mean length)`` over the episodes (undiscounted return).
    """
    obs, _ = env.reset(seed=seed)
    n = env.num_envs
    returns = torch.zeros(n, dtype=torch.float64)
    lengths = torch.zeros(n, dtype=torch.float64)
    finished = torch.zeros(n, dtype=torch.bool)
    cap = max_steps or (env.max_episode_steps + 1 if env.max_episode_steps else 100_000)
    # policies with per-world memory (a planner's warm start) learn where episodes begin
    new_episodes = getattr(policy, "reset_episodes", None)
    if new_episodes is not None:
        new_episodes(torch.ones(n, dtype=torch.bool, device=obs.device))
    for _ in range(cap):
        obs, _, terminated, truncated, info = env.step(policy.act(obs, deterministic=True))
        if new_episodes is not None:
            new_episodes(terminated | truncated)
        new = info["_episode"].cpu() & ~finished
        if bool(new.any()):
            returns[new] = info["episode"]["r"].cpu().double()[new]
            lengths[new] = info["episode"]["l"].cpu().double()[new]
            finished |= new
        if bool(finished.all()):
            break
    else:
        log.warning("evaluation stopped after %d steps with %d/%d episodes unfinished", cap, int((~finished).sum()), n)
        live = ~finished
        returns[live] = info["episode"]["r"].cpu().double()[live]
        lengths[live] = info["episode"]["l"].cpu().double()[live]
    return float(returns.mean()), float(lengths.mean())


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("pwm-bench", "torch", "warp-lang", "newton", "numpy", "gymnasium"):
        with suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def git_commit() -> str | None:
    """Commit of the pwm-bench source tree (``+dirty`` if modified), or None outside git."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


CHECKPOINT_KEYS = (
    "algo_state",
    "env_steps",
    "rows",
    "next_eval_at",
    "best_eval_return",
    "last_eval",
    "wall_time",
    "resumes",
    "rng",
)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run checkpoint (``latest.pt`` / ``best.pt``) as saved by :meth:`Run.checkpoint`.

    Raises:
        DamagedFileError: empty, truncated or foreign file, or one that lacks the checkpoint's keys
            (the message names the file).
    """
    ckpt = read_torch(path, CHECKPOINT_KEYS, "run checkpoint")
    if not isinstance(ckpt["rows"], list) or ckpt.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise damaged_file(path, f"unknown checkpoint format {ckpt.get('format')!r}")
    return ckpt


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    return float(value)


class Run:
    """One training run: its folder, metrics, evaluation, checkpoints and stop requests.

    Created by :func:`pwm_bench.runner.execute`; algorithms use only the members documented in the
    module docstring (``cfg``, ``seed``, ``env_seed``, ``device``, ``env_steps``, ``done``,
    ``restore``, ``add_env_steps``, ``record_episodes``, ``log``, ``end_iteration``, ``phase``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        cfg: TrainConfig,
        config_record: dict[str, Any],
        seed: int,
        device: torch.device,
        eval_env: VecEnv | None,
        reporter: Reporter | None = None,
        loggers: Sequence[str] = (),
    ) -> None:
        self.dir = Path(run_dir)
        self.cfg = cfg
        self.seed = seed
        self.device = device
        self.eval_env = eval_env
        self.reporter = reporter or Reporter()
        self.config_record = config_record
        self.ckpt_dir = self.dir / "checkpoints"

        self.env_steps = 0
        self.iterations = 0
        self.budget_unit, self.budget = cfg.budget()
        self.rows: list[dict[str, float]] = []
        self.next_eval_at = cfg.eval_every
        self.best_eval_return: float | None = None
        self.last_eval: tuple[int, float, float] | None = None  # (progress, return, length)
        self.resumes = 0
        self._wall_base = 0.0
        self._t0 = time.monotonic()
        self._iter_t0 = self._t0
        self._iter_steps0 = 0
        self._pending: dict[str, float] = {}
        self._episodes: list[tuple[float, float]] = []
        self._stop_requested = False
        self._restored: dict[str, Any] | None = None
        self._state_fn: Callable[[], dict[str, Any]] = dict
        self._checkpointed_at: int | None = None
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.extra_summary: dict[str, Any] = {}
        """Algorithm-specific results merged into ``summary.json`` (e.g. per-task scores); JSON-serialisable."""
        self.loggers = tuple(loggers)
        """Loggers besides ``metrics.csv`` (:mod:`pwm_bench.loggers`), opened by :meth:`start`."""
        self._sinks: list[Any] = []
        self._emitted = 0  # rows sent to the loggers
        self._emitted_keys: set[str] = set()  # the metrics of the last of them that were sent

    # -- algorithm-facing -----------------------------------------------------------------------------

    @property
    def env_seed(self) -> int:
        """Seed for the training env's first reset (differs after each resume)."""
        return self.seed + 7919 * self.resumes

    @property
    def progress(self) -> int:
        """Progress in the budget's unit: env steps, or iterations (see ``TrainConfig.budget``)."""
        return self.iterations if self.budget_unit == "iterations" else self.env_steps

    @property
    def done(self) -> bool:
        """Whether the budget is spent."""
        return self.progress >= self.budget

    @property
    def wall_time(self) -> float:
        """Seconds of training so far, summed over resumes."""
        return self._wall_base + (time.monotonic() - self._t0)

    def restore(self) -> dict[str, Any] | None:
        """Algorithm state saved at the checkpoint being resumed (None on a fresh run).

        Also restores the Python/NumPy/torch RNG states of that moment, so call it after building
        (randomly initialising) the networks.
        """
        if self._restored is None:
            return None
        _set_rng_state(self._restored["rng"])
        return self._restored["algo_state"]

    def add_env_steps(self, n: int) -> None:
        """Count ``n`` environment steps (over all worlds) against the budget."""
        self.env_steps += int(n)

    def record_episodes(self, info: Mapping[str, Any]) -> None:
        """Collect the episodes an env step finished (``info`` from :meth:`VecEnv.step`)."""
        mask = info.get("_episode")
        if mask is None or not bool(mask.any()):
            return
        r = info["episode"]["r"][mask].detach().double().cpu().tolist()
        ln = info["episode"]["l"][mask].detach().double().cpu().tolist()
        self._episodes.extend(zip(r, ln, strict=True))

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Add metrics (floats or 0-d tensors) to this iteration's row.

        Raises:
            NonFiniteError: a value is NaN or inf (the message names the metric and env step).
        """
        for name, value in metrics.items():
            v = _to_float(value)
            if not math.isfinite(v):
                raise NonFiniteError(f"non-finite value {v} in metric '{name}' at env step {self.env_steps}")
            self._pending[name] = v

    def end_iteration(self, policy: Policy, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Close the iteration: write its row, evaluate and checkpoint when due, honour stops.

        Args:
            policy: the current policy (evaluated when an evaluation is due).
            state_fn: returns everything needed to resume the algorithm (networks, optimisers,
                normalisers, counters); called only when a checkpoint is written.

        Raises:
            RunInterrupted: after saving a checkpoint, if a stop was requested.
        """
        self._state_fn = state_fn
        self.iterations += 1
        now = time.monotonic()
        steps = self.env_steps - self._iter_steps0
        row: dict[str, float] = {
            "env_steps": float(self.env_steps),
            "iteration": float(self.iterations),
            "wall_time": self.wall_time,
        }
        if self._episodes:
            row["train/episode_return"] = float(np.mean([e[0] for e in self._episodes]))
            row["train/episode_length"] = float(np.mean([e[1] for e in self._episodes]))
        row["time/sps"] = steps / max(now - self._iter_t0, 1e-9)
        row.update(self._pending)
        self._pending, self._episodes = {}, []
        evaluated = False
        if self.progress >= self.next_eval_at or (self.done and not self._evaluated_now()):
            self._evaluate(policy, row)
            while self.next_eval_at <= self.progress:
                self.next_eval_at += self.cfg.eval_every
            evaluated = True
        self.rows.append(row)
        self.reporter.update(
            self.progress,
            train_return=row.get("train/episode_return"),
            eval_return=self.last_eval[1] if self.last_eval else None,
            sps=row["time/sps"],
        )
        if evaluated or self._stop_requested:
            self.checkpoint(state_fn)
        self._iter_t0, self._iter_steps0 = time.monotonic(), self.env_steps
        if self._stop_requested:
            raise RunInterrupted(f"stopped at env step {self.env_steps}")

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """Progress for a long phase that is not env interaction (e.g. world-model pretraining).

        Yields ``advance(n)`` to call as work completes (``total`` units in all).
        """
        with self.reporter.phase(description, total) as advance:
            yield advance

    # -- harness-facing -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the run to checkpoint and stop at the end of the current iteration."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        """Whether a stop was requested."""
        return self._stop_requested

    def start(self) -> None:
        """Write ``config.yaml`` and a ``running`` summary; open the loggers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.dir / "config.yaml", self.config_record)
        self._t0 = self._iter_t0 = time.monotonic()
        self.write_summary("running")
        if self.loggers:
            from pwm_bench.loggers import open_sinks

            resumed = self.resumes > 0
            purge = int(self.rows[-1]["env_steps"]) + 1 if resumed and self.rows else (0 if resumed else None)
            self._sinks = open_sinks(self.loggers, self.dir, self.config_record, purge)

    def close(self) -> None:
        """Close the loggers (idempotent)."""
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def load_checkpoint(self, path: Path) -> None:
        """Continue from checkpoint ``path`` (counters, metrics rows, RNG and algorithm state).

        Raises:
            DamagedFileError: the file is not a readable checkpoint of this format (nothing of the
                run's state is changed then).
        """
        ckpt = read_checkpoint(path)
        self.env_steps = int(ckpt["env_steps"])
        self.iterations = int(ckpt.get("iterations", len(ckpt["rows"])))
        self.rows = list(ckpt["rows"])
        self.next_eval_at = int(ckpt["next_eval_at"])
        self.best_eval_return = ckpt["best_eval_return"]
        self.last_eval = tuple(ckpt["last_eval"]) if ckpt["last_eval"] else None
        self._wall_base = float(ckpt["wall_time"])
        self.resumes = int(ckpt["resumes"]) + 1
        self._iter_steps0 = self.env_steps
        self._restored = ckpt
        # the loggers got these rows when the checkpoint was written
        self._emitted, self._emitted_keys = len(self.rows), set(self.rows[-1]) if self.rows else set()
        self.write_metrics()  # drop rows logged after this checkpoint: no duplicates on resume

    def checkpoint(self, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Save ``checkpoints/latest.pt`` (and ``best.pt`` on a new best), then metrics and summary."""
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "algo_state": state_fn(),
            "env_steps": self.env_steps,
            "iterations": self.iterations,
            "rows": self.rows,
            "next_eval_at": self.next_eval_at,
            "best_eval_return": self.best_eval_return,
            "last_eval": self.last_eval,
            "wall_time": self.wall_time,
            "resumes": self.resumes,
            "rng": _rng_state(),
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        data = buf.getvalue()
        atomic_save(self.ckpt_dir / "latest.pt", lambda fh: fh.write(data))
        if self.last_eval and self.last_eval[0] == self.progress and self.last_eval[1] == self.best_eval_return:
            atomic_save(self.ckpt_dir / "best.pt", lambda fh: fh.write(data))
        self._checkpointed_at = self.progress
        self.write_metrics()
        self.write_summary("running")

    def finish(self, policy: Policy) -> None:
        """End a completed run: final evaluation if none at this step, checkpoint, summary.

        The summary also gets ``random_eval_return`` / ``random_eval_length``: uniform random actions
        on the same evaluation worlds and start states, the floor every result is read against.
        """
        evaluated = False
        if not self._evaluated_now() and self.eval_env is not None:
            row = self.rows[-1] if self.rows else {"env_steps": float(self.env_steps), "wall_time": self.wall_time}
            self._evaluate(policy, row)
            if not self.rows:
                self.rows.append(row)
            evaluated = True
        if self.eval_env is not None:
            seed = self.seed + EVAL_SEED_OFFSET
            ret, length = evaluate(UniformRandomPolicy(self.eval_env.act_dim, seed), self.eval_env, seed=seed)
            self.extra_summary["random_eval_return"] = ret
            self.extra_summary["random_eval_length"] = length
        if evaluated or self._checkpointed_at != self.progress:
            self.checkpoint(self._state_fn)
        self.write_summary("completed")

    def write_metrics(self) -> None:
        """Rewrite ``metrics.csv`` atomically from the completed rows."""
        extra = sorted({k for r in self.rows for k in r} - set(METRIC_NAMES))
        columns = [c for c in METRIC_NAMES if any(c in r for r in self.rows) or c in ("env_steps", "wall_time")]
        columns += extra
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in self.rows:
            writer.writerow(
                [
                    (int(r[c]) if c == "env_steps" else repr(r[c])) if c in r and r[c] is not None else ""
                    for c in columns
                ]
            )
        atomic_write_text(self.dir / "metrics.csv", out.getvalue())
        self._emit()

    def _emit(self) -> None:
        """Send the loggers what ``metrics.csv`` holds and they have not had yet: new rows, and new
        metrics of the last row they got (the final evaluation can join that row at the end)."""
        if not self._sinks:
            return
        pending: list[tuple[int, dict[str, float]]] = []
        if self._emitted:
            last = self.rows[self._emitted - 1]
            new = {k: v for k, v in last.items() if k not in self._emitted_keys and k != "env_steps" and v is not None}
            if new:
                pending.append((int(last["env_steps"]), new))
        for row in self.rows[self._emitted :]:
            pending.append(
                (int(row["env_steps"]), {k: v for k, v in row.items() if k != "env_steps" and v is not None})
            )
        for sink in self._sinks:
            for step, values in pending:
                sink.write(step, values)
        self._emitted, self._emitted_keys = len(self.rows), set(self.rows[-1]) if self.rows else set()

    def write_summary(self, status: str, error: str | None = None) -> None:
        """Rewrite ``summary.json`` atomically with ``status`` (and ``error`` if failed)."""
        cr = self.config_record
        summary: dict[str, Any] = {
            "status": status,
            "algo": cr.get("algo"),
            "env": cr.get("env"),
            "seed": self.seed,
            "preset": cr.get("preset"),
            "device": str(self.device),
            "env_steps": self.env_steps,
            "total_steps": self.cfg.total_steps,
            "iterations": self.iterations,
            "budget": {"unit": self.budget_unit, "total": self.budget},
            "wall_time": round(self.wall_time, 3),
            "final_eval_return": self.last_eval[1] if self.last_eval else None,
            "final_eval_length": self.last_eval[2] if self.last_eval else None,
            "best_eval_return": self.best_eval_return,
            "resumes": self.resumes,
            "started_at": self._started_at,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "versions": package_versions(),
            "git_commit": cr.get("git_commit"),
        }
        if cr.get("resumed_commits"):
            summary["resumed_commits"] = cr["resumed_commits"]
        summary.update(self.extra_summary)
        if error:
            summary["error"] = error
        atomic_write_json(self.dir / "summary.json", summary)

    # -- internals ------------------------------------------------------------------------------------

    def _evaluated_now(self) -> bool:
        return self.last_eval is not None and self.last_eval[0] == self.progress

    def _evaluate(self, policy: Policy, row: dict[str, float]) -> None:
        if self.eval_env is None:
            return
        t0 = time.monotonic()
        ret, length = evaluate(policy, self.eval_env, seed=self.seed + EVAL_SEED_OFFSET)
        row["time/eval_s"] = time.monotonic() - t0
        if not math.isfinite(ret):
            raise NonFiniteError(f"non-finite evaluation return {ret} at env step {self.env_steps}")
        row["eval/episode_return"], row["eval/episode_length"] = ret, length
        self.last_eval = (self.progress, ret, length)
        if self.best_eval_return is None or ret > self.best_eval_return:
            self.best_eval_return = ret
        self.reporter.note_eval(self.progress, ret)
