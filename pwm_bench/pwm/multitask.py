"""Multi-task PWM: one shared, frozen world model and one offline policy per task."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError
from pwm_bench.nn import RunningMeanStd, adam
from pwm_bench.pwm.config import PWMConfig
from pwm_bench.pwm.imagination import actor_critic_update, imagine, linear_lr
from pwm_bench.pwm.networks import CriticEnsemble, LatentActor, MultiTaskPolicy, PWMPolicy
from pwm_bench.run import Run

log = logging.getLogger(__name__)


def iqm(scores: Sequence[float]) -> float:
    """Interquartile mean: the mean after cutting ``floor(n/4)`` scores from each end.

    The definition of rliable's ``aggregate_iqm`` (``scipy.stats.trim_mean(x, 0.25)``), written out
    so a single number does not pull in rliable's dependency chain.
    """
    x = sorted(float(v) for v in scores)
    if not x:
        return float("nan")
    cut = int(0.25 * len(x))
    kept = x[cut : len(x) - cut]
    return sum(kept) / len(kept)


def normalized_score(ret: float, random_ret: float, reference_ret: float | None) -> float | None:
    """``(R - R_random) / (R_reference - R_random)``: 0 = uniform random actions, 1 = the reference.

    The reference is the final evaluation return of the run that collected the task's data; None
    when it is unknown or no better than random.
    """
    if reference_ret is None or reference_ret - random_ret <= 1e-8:
        return None
    return (ret - random_ret) / (reference_ret - random_ret)


def _reference_return(dataset: str) -> float | None:
    """Final evaluation return of the run that collected ``dataset`` (from its manifest's source)."""
    from pwm_bench.datasets import read_manifest
    from pwm_bench.store import read_summary

    sources = read_manifest(dataset).get("sources") or [{}]
    run_dir = sources[-1].get("run")
    if not run_dir or not Path(run_dir).exists():
        return None
    value = read_summary(run_dir).get("final_eval_return")
    return None if value is None else float(value)


def train_multitask(env: VecEnv, cfg: PWMConfig, run: Run) -> MultiTaskPolicy:
    """Offline PWM on a task set: ``epochs`` policy iterations per task, tasks one after another.

    Each task gets its own actor and critics; all share the frozen multi-task world model (task
    embedding, padded observations, masked actions). After its last epoch a task's deterministic
    policy is evaluated on its own env (``eval_episodes`` episodes) and scored against uniform random
    actions (0) and the run that collected its data (1). Per-task returns and scores are logged as
    ``mt/<task>/return`` and ``mt/<task>/score``; ``summary.json`` gains ``tasks``, ``score_mean`` and
    ``score_iqm``.
    """
    from pwm_bench.datasets import MultiTaskDataset
    from pwm_bench.envs.multitask import TaskSetEnv
    from pwm_bench.pretrain import load_world_model
    from pwm_bench.run import EVAL_SEED_OFFSET, UniformRandomPolicy, evaluate

    if not isinstance(env, TaskSetEnv):
        raise UsageError("per-task datasets (pwm.datasets) need a task-set env: --env mt:<taskset>")
    device = run.device
    tasks = env.tasks
    if len(cfg.datasets) != len(tasks):
        raise UsageError(f"pwm.datasets has {len(cfg.datasets)} entries; {env.name} has {len(tasks)} tasks")
    wm = load_world_model(cfg.world_model, device)
    if wm.cfg.num_tasks != len(tasks) or (wm.obs_dim, wm.act_dim) != (env.obs_dim, env.act_dim):
        raise UsageError(
            f"world model {cfg.world_model} has {wm.cfg.num_tasks} tasks and obs/act sizes {wm.obs_dim}/{wm.act_dim}; "
            f"{env.name} has {len(tasks)} tasks and padded sizes {env.obs_dim}/{env.act_dim}"
        )
    wm.requires_grad_(False)
    data = MultiTaskDataset(cfg.datasets, device=device, env=env.name)
    latent = wm.cfg.latent_dim
    actors = [LatentActor(latent, env.act_dim, cfg.actor_hidden, cfg.init_log_std).to(device) for _ in tasks]
    mask = env.action_mask.to(device).float()
    policy = MultiTaskPolicy(wm, actors, mask)
    results: list[dict[str, Any]] = []
    current: dict[str, Any] = {"task": -1}

    def fresh(k: int) -> None:
        critics = CriticEnsemble(latent, cfg.critic_hidden, cfg.num_critics).to(device)
        current.update(
            task=k,
            critics=critics,
            actor_opt=adam(actors[k].parameters(), lr=cfg.actor_lr, betas=cfg.betas),
            critic_opt=adam(critics.parameters(), lr=cfg.critic_lr, betas=cfg.betas),
            ret_rms=RunningMeanStd(()).to(device),
        )

    state = run.restore()
    if state is not None:
        for actor, sd in zip(actors, state["actors"], strict=True):
            actor.load_state_dict(sd)
        results = list(state["results"])
        if state["task"] >= 0:
            with torch.random.fork_rng(devices=[]):  # the restored RNG state must not move
                fresh(state["task"])
            current["critics"].load_state_dict(state["critics"])
            current["actor_opt"].load_state_dict(state["actor_opt"])
            current["critic_opt"].load_state_dict(state["critic_opt"])
            current["ret_rms"].load_state_dict(state["ret_rms"])

    def state_fn() -> dict[str, Any]:
        live = current["task"] >= 0
        return {
            "actors": [a.state_dict() for a in actors],
            "results": results,
            "task": current["task"],
            "critics": current["critics"].state_dict() if live else None,
            "actor_opt": current["actor_opt"].state_dict() if live else None,
            "critic_opt": current["critic_opt"].state_dict() if live else None,
            "ret_rms": current["ret_rms"].state_dict() if live else None,
        }

    def summarise() -> None:
        scores = [r["score"] for r in results if r["score"] is not None]
        run.extra_summary = {
            "tasks": {r["task"]: {k: v for k, v in r.items() if k != "task"} for r in results},
            "score_mean": sum(scores) / len(scores) if scores else None,
            "score_iqm": iqm(scores) if scores else None,
        }

    summarise()
    eval_seed = run.seed + EVAL_SEED_OFFSET
    while not run.done:
        k, e = divmod(run.iterations, cfg.epochs)
        if current["task"] != k:
            fresh(k)
            log.info("task %d/%d: %s", k + 1, len(tasks), tasks[k].name)
        actor, critics = actors[k], current["critics"]
        frac = e / cfg.epochs
        linear_lr(current["actor_opt"], cfg.actor_lr, cfg.lr_min, frac)
        linear_lr(current["critic_opt"], cfg.critic_lr, cfg.lr_min, frac)
        task = torch.full((cfg.batch_size,), k, dtype=torch.long, device=device)
        critics.requires_grad_(False)
        with torch.no_grad():
            z0 = wm.encode(data.sample_states(cfg.batch_size, k), task)
        window, _ = imagine(wm, actor, critics, z0, cfg, task=task, act_mask=mask[k])
        critics.requires_grad_(True)
        metrics = actor_critic_update(
            window, actor, critics, current["actor_opt"], current["critic_opt"], current["ret_rms"], cfg
        )
        run.log({**metrics, "pwm/task": k, "pwm/epoch": e + 1})
        if e + 1 == cfg.epochs:
            name = tasks[k].name
            task_env = (
                run.eval_env.envs[k]
                if isinstance(run.eval_env, TaskSetEnv)
                else tasks[k].make(cfg.eval_episodes, device)
            )
            ret, length = evaluate(PWMPolicy(wm, actor, task=k, act_dim=env.act_dims[k]), task_env, seed=eval_seed)
            rand, _ = evaluate(UniformRandomPolicy(env.act_dims[k], eval_seed), task_env, seed=eval_seed)
            ref = _reference_return(cfg.datasets[k])
            score = normalized_score(ret, rand, ref)
            results.append(
                {
                    "task": name,
                    "return": ret,
                    "length": length,
                    "random_return": rand,
                    "reference_return": ref,
                    "score": score,
                }
            )
            run.log({f"mt/{name}/return": ret, **({f"mt/{name}/score": score} if score is not None else {})})
            log.info(
                "task %s: eval return %.2f (random %.2f, reference %s) -> score %s",
                name,
                ret,
                rand,
                "n/a" if ref is None else f"{ref:.2f}",
                "n/a" if score is None else f"{score:.3f}",
            )
            summarise()
        run.end_iteration(policy, state_fn)
    return policy
