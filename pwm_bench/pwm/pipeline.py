"""The cached pipeline stages that give PWM its dataset and its pretrained world model."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pwm_bench.config import to_dict
from pwm_bench.errors import RunInterrupted, UsageError
from pwm_bench.pwm.config import PWMConfig

log = logging.getLogger(__name__)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def resolve_artefact(value: str, kind: Literal["datasets", "world_models"], root: Path) -> Path:
    """A dataset or world model given as a path or as a name under ``root/<kind>``."""
    p = Path(value)
    if p.exists():
        return p
    named = root / kind / value
    if named.exists():
        return named
    what = "dataset" if kind == "datasets" else "world model"
    raise UsageError(f"{what} {value!r} not found (neither a path nor a name under {root / kind})")


def prepare(cfg: PWMConfig, ctx: Any) -> PWMConfig:
    """Resolve (and when needed build) the dataset and the world model; returns the config with both set.

    Stages, each cached under the results root and skipped when complete:

    1. ``datasets/pwm-<env>-<hash>``: train ``collect_algo`` with every rollout recorded;
    2. ``world_models/pwm-<env>-<hash>``: pretrain the world model on that dataset.

    For a task set (``mt:<taskset>``) stage 1 runs once per task and stage 2 pretrains one model with
    a task embedding on all the datasets.
    """
    cfg = copy.deepcopy(cfg)
    root = Path(ctx.out)
    if ctx.env.startswith("mt:"):
        return _prepare_multitask(cfg, ctx)
    if cfg.world_model is not None:
        cfg.world_model = str(resolve_artefact(cfg.world_model, "world_models", root))
        if cfg.dataset is not None:
            cfg.dataset = str(resolve_artefact(cfg.dataset, "datasets", root))
        return cfg
    if cfg.dataset is None:
        cfg.dataset = str(_collect_stage(cfg, ctx, env_overrides={} if cfg.collect_default_env else None))
    else:
        cfg.dataset = str(resolve_artefact(cfg.dataset, "datasets", root))
    cfg.world_model = str(_pretrain_stage(cfg, ctx, cfg.dataset))
    return cfg


def _pretrain_stage(cfg: PWMConfig, ctx: Any, data: str | Sequence[str]) -> Path:
    """Pretrain the world model on ``data`` (one dataset, or one per task), cached by its settings."""
    from pwm_bench.pretrain import PretrainConfig, pretrain_world_model

    multi = not isinstance(data, str)
    pre = PretrainConfig(
        steps=cfg.pretrain_steps,
        batch_size=cfg.wm_batch_size,
        horizon=cfg.horizon,
        lr=cfg.wm_lr,
        rho=cfg.wm_rho,
        consistency_coef=cfg.wm_consistency_coef,
        reward_coef=cfg.wm_reward_coef,
        reward_norm=cfg.wm_reward_norm,
        reward_clip=cfg.wm_reward_clip,
        seed=ctx.seed,
        eval_every=max(1, min(1000, cfg.pretrain_steps // 5)),
        windows=cfg.wm_windows,
    )
    wm_cfg = cfg.world_model_config(len(data) if multi else 1)
    pre_id = dataclasses.asdict(pre)
    if pre.windows == "full":  # added later: models pretrained before it keep their folders
        pre_id.pop("windows")
    key = _digest({"dataset": data, "pretrain": pre_id, "wm": to_dict(wm_cfg)})
    out = Path(ctx.out) / "world_models" / f"pwm-{ctx.env.replace(':', '-').replace(',', '+')}-{key}"
    summary_file = out / "summary.json"
    done = summary_file.exists() and json.loads(summary_file.read_text()).get("status") == "completed"
    if done:
        log.info("world model: using cached %s", out)
    else:
        log.info("world model: pretraining %d steps into %s", cfg.pretrain_steps, out)
        pretrain_world_model(
            list(data) if multi else data,
            out,
            pre,
            wm_cfg,
            device=ctx.device,
            resume=True,
            reporter=ctx.reporter,
            env=ctx.env,
        )
    return out


def _prepare_multitask(cfg: PWMConfig, ctx: Any) -> PWMConfig:
    """Task sets: one dataset per task (collected unless given), one shared world model (pretrained
    unless given); the policies are then trained offline, one per task."""
    from pwm_bench.envs.multitask import task_set

    tasks = task_set(ctx.env)
    if ctx.env_overrides:
        raise UsageError(f"env '{ctx.env}': a task set takes no --set env.* options (each task fixes its env)")
    if cfg.dataset is not None:
        raise UsageError("a task set takes one dataset per task: --set pwm.datasets=[A,B,...], in task order")
    if cfg.mode != "offline":
        log.info("task sets train one offline policy per task (as in the paper): mode set to offline")
    cfg.mode = "offline"
    if cfg.datasets:
        if len(cfg.datasets) != len(tasks):
            raise UsageError(f"pwm.datasets has {len(cfg.datasets)} entries; the task set has {len(tasks)} tasks")
        cfg.datasets = tuple(str(resolve_artefact(d, "datasets", Path(ctx.out))) for d in cfg.datasets)
    else:
        cfg.datasets = tuple(
            str(_collect_stage(cfg, ctx, env=t.env, env_overrides=dict(t.overrides), label=t.name)) for t in tasks
        )
    if cfg.world_model is not None:
        cfg.world_model = str(resolve_artefact(cfg.world_model, "world_models", Path(ctx.out)))
    else:
        cfg.world_model = str(_pretrain_stage(cfg, ctx, list(cfg.datasets)))
    return cfg


def _collect_stage(
    cfg: PWMConfig,
    ctx: Any,
    *,
    env: str | None = None,
    env_overrides: dict[str, Any] | None = None,
    label: str | None = None,
) -> Path:
    """Train ``cfg.collect_algo`` on the env with every rollout recorded (cached by its settings).

    ``env``/``env_overrides`` default to the run's; ``label`` names the dataset (a task's name).
    An env without simulator gradients is collected by SAC when ``collect_algo`` needs gradients.
    """
    from pwm_bench.algos import get_algorithm
    from pwm_bench.datasets import RecordingEnv, read_manifest
    from pwm_bench.envs import env_spec
    from pwm_bench.runner import RunRequest, execute
    from pwm_bench.store import env_dirname, read_summary

    root = Path(ctx.out)
    env = env or ctx.env
    env_overrides = ctx.env_overrides if env_overrides is None else env_overrides
    algo = cfg.collect_algo
    if get_algorithm(algo).requires_gradients and not env_spec(env).differentiable:
        log.info("dataset: env '%s' has no simulator gradients; collecting with sac instead of %s", env, algo)
        algo = "sac"
    overrides: dict[str, Any] = {f"env.{k}": v for k, v in env_overrides.items()}
    if cfg.collect_steps is not None:
        overrides["total_steps"] = cfg.collect_steps
    key = _digest({"env": env, "algo": algo, "preset": cfg.collect_preset, "seed": ctx.seed, **overrides})
    name = f"pwm-{(label or env).replace(':', '-')}-{algo}-{key}"
    dataset = root / "datasets" / name
    run_dir = root / "runs" / env_dirname(env) / algo / name
    status = read_summary(run_dir).get("status") if run_dir.exists() else None
    if status == "completed":
        read_manifest(dataset)  # raises a clear error if the dataset went missing
        log.info("dataset: using cached %s", dataset)
        return dataset

    def wrap(train_env: Any, rdir: Path) -> Any:
        source = {
            "algo": algo,
            "preset": cfg.collect_preset,
            "seed": ctx.seed,
            "run": str(rdir),
            "env_overrides": {k: str(v) for k, v in env_overrides.items()},
        }
        return RecordingEnv.into(dataset, train_env, env, source)

    log.info("dataset: training %s (%s preset) and recording its rollouts into %s", algo, cfg.collect_preset, dataset)
    if run_dir.exists():
        req = RunRequest(resume=run_dir, device=str(ctx.device), reporter=ctx.reporter, wrap_env=wrap)
    else:
        req = RunRequest(
            algo=algo,
            env=env,
            seed=ctx.seed,
            preset=cfg.collect_preset,
            device=str(ctx.device),
            overrides=overrides,
            out=root,
            reporter=ctx.reporter,
            run_id=name,
            wrap_env=wrap,
        )
    result = execute(req)
    if result.status == "interrupted":
        raise RunInterrupted(f"data collection stopped at its checkpoint in {result.run_dir}")
    if result.status != "completed":
        raise UsageError(f"data collection {result.status} ({result.error or 'see ' + str(result.run_dir)})")
    return dataset


def data_env_steps(dataset: str | Path) -> int:
    """Env steps it cost to collect ``dataset``: the env steps of the runs that recorded it (from
    their summaries), or its transition count where a run's summary is gone."""
    from pwm_bench.datasets import read_manifest
    from pwm_bench.store import read_summary

    manifest = read_manifest(dataset)
    total, known = 0, True
    for source in manifest.get("sources") or []:
        run = source.get("run")
        steps = read_summary(run).get("env_steps") if run and Path(run).exists() else None
        if steps is None:
            known = False
            break
        total += int(steps)
    return total if known and total else int(manifest["transitions"])
