"""Execute one training run: resolve names and config, build envs, train, record the outcome.

This is what ``pwm-bench run`` calls, and what sweeps and tests call in-process::

    from pwm_bench.runner import RunRequest, execute
    result = execute(RunRequest(algo="ppo", env="gym:Pendulum-v1", preset="smoke"))
    result.status, result.run_dir, result.summary["final_eval_return"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from pwm_bench.algos import Algorithm, Policy, get_algorithm
from pwm_bench.config import PRESETS, apply_overrides, from_dict, to_dict
from pwm_bench.envs import env_spec, make_env
from pwm_bench.errors import DamagedFileError, NonFiniteError, RunInterrupted, UsageError, unknown_choice
from pwm_bench.progress import Reporter
from pwm_bench.run import Run, git_commit, seed_everything
from pwm_bench.signals import stop_signals_to
from pwm_bench.store import (
    DEFAULT_ROOT,
    check_name,
    env_dirname,
    read_config,
    read_summary,
    remove_stale_temporaries,
    run_lock,
)

log = logging.getLogger(__name__)

DEFAULT_PRESET = "cpu"
MAX_THREADS = 1024
"""Most torch threads a run may ask for."""
MAX_SEED = 2**31 - 1
"""Largest seed (numpy's and every generator's seeds fit in it)."""
ENV_KEY_PREFIX = "env."
"""Overrides whose key starts with this go to the environment's config, the rest to the algorithm's."""


@dataclasses.dataclass
class RunRequest:
    """What to run. ``None`` fields take defaults (or, when resuming, the stored values)."""

    algo: str | None = None
    env: str | None = None
    seed: int | None = None
    preset: str | None = None
    device: str = "auto"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    out: Path = DEFAULT_ROOT
    resume: Path | None = None
    reporter: Reporter | None = None
    run_id: str | None = None
    threads: int | None = None
    """CPU threads for torch (``torch.set_num_threads``); None keeps torch's default."""
    wrap_env: Callable[[Any, Path], Any] | None = None
    """Optional ``wrap_env(train_env, run_dir) -> env`` (e.g. a recorder for ``pwm-bench collect``)."""
    loggers: str | Sequence[str] | None = None
    """Loggers besides ``metrics.csv`` (``"tensorboard,wandb"``, see :mod:`pwm_bench.loggers`); None
    keeps a resumed run's (a new run: none)."""


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`execute`."""

    run_dir: Path
    status: str
    summary: dict[str, Any]
    policy: Policy | None = None
    error: str | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cuda`` without CUDA raises :class:`UsageError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise UsageError(
                f"--device {name}: CUDA is not available (torch {torch.__version__}, {build}); use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise unknown_choice("device", name, ["auto", "cpu", "cuda", "cuda:<index>"])


def check_threads(threads: int | None) -> None:
    """:class:`UsageError` unless ``threads`` is None or in ``[1, MAX_THREADS]``."""
    if threads is not None and not 0 < threads <= MAX_THREADS:
        raise UsageError(f"--threads must be in [1, {MAX_THREADS}], got {threads}")


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None keeps torch's default; checked by :func:`check_threads`."""
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    algo_ov = {k: v for k, v in overrides.items() if not k.startswith(ENV_KEY_PREFIX)}
    env_ov = {k[len(ENV_KEY_PREFIX) :]: v for k, v in overrides.items() if k.startswith(ENV_KEY_PREFIX)}
    return algo_ov, env_ov


def _resolve(req: RunRequest) -> tuple[Algorithm, Any, Any, dict[str, Any], Path]:
    """Algorithm, algo config, env config, config record and run folder for ``req``."""
    if req.resume is not None:
        run_dir = Path(req.resume)
        record = read_config(run_dir)
        if not record:
            raise UsageError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        for field, given in (
            ("algo", req.algo),
            ("env", req.env),
            ("seed", req.seed),
            ("preset", req.preset),
        ):
            if given is not None and given != record.get(field):
                raise UsageError(f"--resume: the run has {field} {record.get(field)!r}; cannot change it to {given!r}")
        if req.overrides:
            raise UsageError("--resume: --set cannot change a stored run's config; start a new run instead")
        if req.run_id is not None and req.run_id != run_dir.name:
            raise UsageError(f"--resume: the run's id is {run_dir.name!r}; --run-id {req.run_id!r} cannot rename it")
        algo = get_algorithm(record["algo"])
        cfg = from_dict(algo.config, record["algo_config"])
        env_cfg = from_dict(env_spec(record["env"]).config, record.get("env_config") or {})
        if req.loggers is not None:
            _set_loggers(record, req.loggers)
        return algo, cfg, env_cfg, record, run_dir

    if req.algo is None or req.env is None:
        raise UsageError("--algo and --env are required (or --resume RUN_DIR)")
    algo = get_algorithm(req.algo)
    spec = env_spec(req.env)
    preset = req.preset or DEFAULT_PRESET
    if preset not in PRESETS:
        raise unknown_choice("preset", preset, PRESETS)
    seed = 0 if req.seed is None else req.seed
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be in [0, {MAX_SEED}], got {seed}")
    algo_ov, env_ov = split_overrides(req.overrides)
    # ``--set pwm.dataset=X`` is the same as ``--set dataset=X`` for algorithm pwm
    algo_ov = {k.removeprefix(f"{algo.name}."): v for k, v in algo_ov.items()}
    cfg = apply_overrides(algo.config.from_preset(preset, req.env), algo_ov, what=f"{algo.name} config key")
    cfg.validate()
    env_cfg = apply_overrides(spec.config(), env_ov, what=f"'{req.env}' env option")
    if algo.requires_gradients and not spec.differentiable:
        raise UsageError(f"algorithm '{algo.name}' needs simulator gradients; env '{req.env}' has none")
    run_id = (
        check_name(req.run_id, "--run-id")
        if req.run_id is not None
        else f"{datetime.now():%Y%m%d-%H%M%S}-s{seed}-{secrets.token_hex(2)}"
    )
    run_dir = Path(req.out) / "runs" / env_dirname(req.env) / algo.name / run_id
    if run_dir.is_file() or (run_dir / "config.yaml").exists():
        raise UsageError(f"run folder {run_dir} already exists")
    record = {
        "algo": algo.name,
        "env": req.env,
        "seed": seed,
        "preset": preset,
        "device": req.device,
        "overrides": {k: str(v) for k, v in req.overrides.items()},
        "algo_config": to_dict(cfg),
        "env_config": to_dict(env_cfg),
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    _set_loggers(record, req.loggers)
    return algo, cfg, env_cfg, record, run_dir


def _set_loggers(record: dict[str, Any], loggers: str | Sequence[str] | None) -> None:
    """Record the run's extra loggers (checked names; the key is left out when there are none)."""
    from pwm_bench.loggers import parse_loggers

    names = parse_loggers(loggers)
    if names:
        record["loggers"] = list(names)
    else:
        record.pop("loggers", None)


class _SignalGuard:
    """SIGINT/SIGTERM while a run trains: the first asks it to checkpoint and stop at the end of the
    iteration; a second SIGINT aborts at once (one ``KeyboardInterrupt``, never more). Once training
    has ended (``abortable`` False) signals are only noted, so the final status is always written."""

    def __init__(self, run: Run) -> None:
        self.run, self.abortable = run, True

    def __call__(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.abortable:
            log.warning("%s received while the run's outcome is being saved; it stops right after", name)
            return
        if self.run.stop_requested and signum == signal.SIGINT:
            self.abortable = False
            raise KeyboardInterrupt
        log.warning(
            "%s received: saving a checkpoint after this iteration, then stopping (Ctrl-C again to abort)", name
        )
        self.run.request_stop()


def _stop_on_signals(run: Run) -> contextlib.AbstractContextManager[Any]:
    """A :class:`_SignalGuard` for SIGINT and SIGTERM for the body (main thread only)."""
    return stop_signals_to(_SignalGuard(run))


def _resume_from_checkpoint(run: Run, run_dir: Path) -> None:
    """Load ``latest.pt``, or ``best.pt`` when the latest is damaged (saying so), into ``run``.

    Raises:
        DamagedFileError: every checkpoint present is damaged (the message names them).
    """
    problems: list[str] = []
    for path in (run_dir / "checkpoints" / "latest.pt", run_dir / "checkpoints" / "best.pt"):
        if not path.exists():
            continue
        try:
            run.load_checkpoint(path)
        except DamagedFileError as exc:
            problems.append(str(exc))
            continue
        if problems:
            log.warning(
                "%s; resuming from the older %s at env step %d instead", "; ".join(problems), path.name, run.env_steps
            )
        else:
            log.info("resuming %s from env step %d", run_dir, run.env_steps)
        return
    if problems:
        raise DamagedFileError(
            f"cannot resume {run_dir}: {'; '.join(problems)}; no sound checkpoint is left, start a new run"
        )
    log.info("no checkpoint in %s; starting it from the beginning", run_dir)


def _note_commit_of_resume(record: dict[str, Any], env_steps: int) -> None:
    """Record in ``record`` (the run's ``config.yaml``) that the run goes on under another commit.

    A run started under one commit and resumed under another has trained under both; its
    ``git_commit`` stays the one it started under, and ``resumed_commits`` lists
    ``{"git_commit", "env_steps"}`` for each change of commit, at the env step where it resumed.
    """
    now = git_commit()
    previous = record.get("resumed_commits") or []
    last = previous[-1]["git_commit"] if previous else record.get("git_commit")
    if now is None or now == last:
        return
    record["resumed_commits"] = [*previous, {"git_commit": now, "env_steps": int(env_steps)}]
    log.warning(
        "resuming under commit %s, not %s under which the run trained so far (recorded as resumed_commits)",
        now[:12],
        (last or "unknown")[:12],
    )


@contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, so a stage that saves its state on Ctrl-C
    (pretraining) does so on ``kill`` too; runs started inside install their own handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(req: RunRequest) -> RunResult:
    """Run (or resume) one training run and record it in the results store.

    Returns a :class:`RunResult` whose ``status`` is ``completed``, ``interrupted`` or ``failed``
    (NaN/inf). Bad input raises :class:`UsageError` before anything is written. Unexpected errors
    mark the run ``failed`` and propagate.
    """
    algo, cfg, env_cfg, record, run_dir = _resolve(req)
    if req.resume is not None:
        # a resumed run is locked before anything of it is read for training
        with run_lock(run_dir):
            status = read_summary(run_dir).get("status")
            if status == "completed":
                raise UsageError(f"--resume {run_dir}: the run already completed; nothing to resume")
            return _execute_resolved(req, algo, cfg, env_cfg, record, run_dir)
    return _execute_resolved(req, algo, cfg, env_cfg, record, run_dir)


def _execute_resolved(
    req: RunRequest, algo: Algorithm, cfg: Any, env_cfg: Any, record: dict[str, Any], run_dir: Path
) -> RunResult:
    device = resolve_device(req.device if req.resume is None or req.device != "auto" else record["device"])
    seed = int(record["seed"])
    set_threads(req.threads)
    reporter = req.reporter or Reporter()
    if req.resume is None and algo.prepare is not None:
        from pwm_bench.algos import PrepareContext

        ctx = PrepareContext(
            env=record["env"],
            env_overrides=split_overrides(req.overrides)[1],
            seed=seed,
            preset=record["preset"],
            device=device,
            out=Path(req.out),
            reporter=reporter,
        )
        try:
            with _interrupt_on_sigterm():
                cfg = algo.prepare(cfg, ctx)
        except (KeyboardInterrupt, RunInterrupted) as exc:
            error = "interrupted while preparing the run (its data or model); give the same command again"
            log.warning("%s%s", error, f" ({exc})" if str(exc) else "")
            return RunResult(run_dir=run_dir, status="interrupted", summary={}, error=error)
        cfg.validate()
        record["algo_config"] = to_dict(cfg)
    return _train(req, algo, cfg, env_cfg, record, run_dir, device, seed, reporter)


def _train(
    req: RunRequest,
    algo: Algorithm,
    cfg: Any,
    env_cfg: Any,
    record: dict[str, Any],
    run_dir: Path,
    device: torch.device,
    seed: int,
    reporter: Reporter,
) -> RunResult:
    seed_everything(seed)
    env_kwargs = dataclasses.asdict(env_cfg)
    grads = algo.differentiable_env(cfg, env_spec(record["env"]).differentiable)
    env = make_env(record["env"], cfg.num_envs, device, grads, **env_kwargs)
    if req.wrap_env is not None:
        env = req.wrap_env(env, run_dir)
    eval_env = make_env(record["env"], cfg.eval_episodes, device, False, **env_kwargs)
    run = Run(
        run_dir,
        cfg=cfg,
        config_record=record,
        seed=seed,
        device=device,
        eval_env=eval_env,
        reporter=reporter,
        loggers=record.get("loggers", ()),
    )
    with contextlib.ExitStack() as stack:
        stack.callback(eval_env.close)
        stack.callback(env.close)
        stack.callback(run.close)
        if req.resume is not None:  # execute holds its lock
            removed = remove_stale_temporaries(run_dir)
            if removed:
                log.info("removed %d partial file(s) left by the previous process", removed)
            _resume_from_checkpoint(run, run_dir)
            _note_commit_of_resume(record, run.env_steps)
        else:  # a new run takes its folder's lock as it creates the folder
            stack.enter_context(run_lock(run_dir))
        return _train_locked(run, algo, env, cfg, record, run_dir, seed, reporter)


def _train_locked(
    run: Run,
    algo: Algorithm,
    env: Any,
    cfg: Any,
    record: dict[str, Any],
    run_dir: Path,
    seed: int,
    reporter: Reporter,
) -> RunResult:
    status, error, policy = "failed", None, None
    with _stop_on_signals(run) as guard:
        run.start()  # a store that takes no write at all is bad input (one line, exit 2), not a failed run
        reporter.start(f"{algo.name} · {record['env']} · seed {seed}", run.budget, run.progress)
        log.info("run folder: %s", run_dir)
        try:
            try:
                policy = algo.train(env, cfg, run)
                run.finish(policy)
            finally:
                guard.abortable = False
            status = "completed"
        except RunInterrupted as exc:
            status = "interrupted"
            log.warning("run interrupted (%s); resume with: pwm-bench run --resume %s", exc, run_dir)
        except KeyboardInterrupt:
            guard.abortable = False
            status, error = (
                "interrupted",
                "aborted by a second Ctrl-C; metrics up to the last checkpoint are kept",
            )
            log.warning("%s", error)
        except NonFiniteError as exc:
            status, error = "failed", str(exc)
            log.error("run failed: %s", exc)
        except OSError as exc:
            # a full disk, a read-only remount: record the failure if the store still takes a write
            status, error = "failed", f"cannot write the run's files: {exc.strerror or exc} ({exc.filename or ''})"
            log.error("run failed: %s", error)
        except Exception as exc:
            with contextlib.suppress(OSError):
                run.write_metrics()
                run.write_summary("failed", error=f"{type(exc).__name__}: {exc}")
            reporter.stop()
            raise
        reporter.stop()
        if status != "completed":
            try:
                if status == "failed":
                    run.write_metrics()  # keep every completed iteration, not only the checkpointed ones
                run.write_summary(status, error=error)
            except OSError as exc:
                log.error("could not record status %r in %s: %s", status, run_dir, exc)
    summary = read_summary(run_dir) or {"status": status}
    return RunResult(run_dir, status, summary, policy, error)
