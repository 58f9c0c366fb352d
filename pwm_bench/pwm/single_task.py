"""Single-task PWM training, online (live start states, lock-step env, model fine-tuning) or offline."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from pwm_bench.datasets import EpisodeDataset
from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError
from pwm_bench.nn import RunningMeanStd, adam
from pwm_bench.pwm.config import PWMConfig
from pwm_bench.pwm.imagination import actor_critic_update, imagine, linear_lr
from pwm_bench.pwm.networks import CriticEnsemble, LatentActor, PWMPolicy
from pwm_bench.replay import WindowReplay
from pwm_bench.run import Run
from pwm_bench.world_model import WorldModel, world_model_loss

log = logging.getLogger(__name__)


def pwm_model_loss(
    wm: WorldModel,
    cfg: PWMConfig,
    o: torch.Tensor,
    a: torch.Tensor,
    r: torch.Tensor,
    d: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> Any:
    """The world-model loss of windows ``o (H+1, B, O)``, ``a (H, B, A)``, ``r, d (H, B)`` with PWM's
    weights (``mask (H, B)``: the steps of partial windows inside their episode)."""
    reward_coef = 1.0 / cfg.horizon if cfg.wm_reward_coef is None else cfg.wm_reward_coef
    return world_model_loss(
        wm,
        o,
        a,
        r,
        rho=cfg.wm_rho,
        consistency_coef=cfg.wm_consistency_coef,
        reward_coef=reward_coef,
        terminated=d,
        mask=mask,
    )


def finetune_world_model(
    wm: WorldModel,
    optim: torch.optim.Optimizer,
    params: list[nn.Parameter],
    replay: WindowReplay,
    dataset: EpisodeDataset | None,
    cfg: PWMConfig,
) -> dict[str, float]:
    """``cfg.wm_iterations`` model steps on windows of the new real transitions, mixed with
    ``finetune_offline_fraction`` of the pretraining ``dataset`` (when given); returns the mean losses.

    The mix is a departure from the reference, which fine-tunes on the new data alone: a small,
    narrow early replay made the model forget what it learned offline.
    """
    n_offline = round(cfg.wm_batch_size * cfg.finetune_offline_fraction) if dataset is not None else 0
    for p in params:
        p.requires_grad_(True)
    wm.train()
    cons = rew = 0.0
    partial = cfg.wm_windows == "partial"
    for _ in range(cfg.wm_iterations):
        n_new = cfg.wm_batch_size - n_offline
        if partial:
            o, a, r, d, m = replay.sample_partial(n_new, cfg.horizon)
        else:
            (o, a, r, d), m = replay.sample(n_new, cfg.horizon), None
        if n_offline:
            b = dataset.sample(n_offline, cfg.horizon, partial=partial)
            o, a, r = torch.cat([o, b.obs], 1), torch.cat([a, b.action], 1), torch.cat([r, b.reward], 1)
            d = torch.cat([d, b.terminated.float()], 1)
            m = torch.cat([m, b.mask], 1) if partial else None
        losses = pwm_model_loss(wm, cfg, o, a, r, d, m)
        optim.zero_grad(set_to_none=True)
        losses.total.backward()
        nn.utils.clip_grad_norm_(params, 20.0)
        optim.step()
        cons += float(losses.consistency)
        rew += float(losses.reward)
    wm.eval()
    wm.requires_grad_(False)
    return {"wm/consistency": cons / cfg.wm_iterations, "wm/reward": rew / cfg.wm_iterations}


@torch.no_grad()
def newest_data_losses(wm: WorldModel, replay: WindowReplay, cfg: PWMConfig) -> dict[str, float]:
    """The model's losses on the newest window of every world, before it trains on them (``wm/newest_*``)."""
    latest = replay.latest(cfg.horizon)
    if latest is None:
        return {}
    losses = pwm_model_loss(wm, cfg, *latest)
    return {"wm/newest_consistency": float(losses.consistency), "wm/newest_reward": float(losses.reward)}


def actor_gradient_cosine(
    env: VecEnv,
    wm: WorldModel,
    actor: LatentActor,
    critics: CriticEnsemble,
    obs: torch.Tensor,
    cfg: PWMConfig,
    seed: int,
) -> float:
    """Cosine between the actor-parameter gradients of the actor loss imagined through the model and
    of the same loss rolled out through the differentiable ``env`` from its live states ``obs (N, O)``
    (same critics, same exploration noise from ``seed``; the env and the global RNG are left as they were).

    This is the direction the actor actually follows, bootstrap included; with
    ``cfg.value_gradient = False`` it compares the H-step reward gradients alone. Both windows are
    rolled out as training rolls them out: the model's window steps the real worlds alongside it
    (a real episode end closes its segment), and a world whose episode ends resets, to the same
    state in both windows.
    """
    from pwm_bench.diagnostics import probing

    params = list(actor.parameters())
    grads = []
    for dynamics in ("model", "simulator"):
        with torch.random.fork_rng(devices=[]), probing(env, resets=True), torch.enable_grad():
            torch.manual_seed(seed)
            sub = dataclasses.replace(cfg, dynamics=dynamics)
            window, _ = imagine(wm, actor, critics, wm.encode(obs), sub, env=env, obs=obs)
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(window.loss.mean(), params)]))
    return float(nn.functional.cosine_similarity(grads[0], grads[1], dim=0))


def model_gradient_check(
    env: VecEnv,
    wm: WorldModel,
    actor: LatentActor,
    critics: CriticEnsemble,
    obs: torch.Tensor,
    cfg: PWMConfig,
    seed: int,
) -> dict[str, float]:
    """How well the model's gradients match the simulator's from the live states (training env left as it was).

    - ``pwm/grad_cosine``, ``pwm/grad_cosine_first``: cosine of the H-step imagined return's gradient
      with respect to the deterministic policy's closed-loop actions (all, and the first only), model
      against simulator (the cheap form of ``pwm-bench wm-check``);
    - ``pwm/actor_grad_cosine``: :func:`actor_gradient_cosine`, the actor's own update direction.
    """
    from pwm_bench.diagnostics import model_gradient_alignment, policy_actions

    actions = policy_actions(env, lambda o: actor(wm.encode(o), deterministic=True), obs, cfg.horizon)
    summary = model_gradient_alignment(env, wm, obs, actions, cfg.gamma).summary()
    out = {"pwm/grad_check_alive": summary["alive"]}
    if "cosine" in summary:
        out.update({"pwm/grad_cosine": summary["cosine"], "pwm/grad_cosine_first": summary["cosine_first"]})
    out["pwm/actor_grad_cosine"] = actor_gradient_cosine(env, wm, actor, critics, obs, cfg, seed)
    return out


def train_single_task(env: VecEnv, cfg: PWMConfig, run: Run) -> PWMPolicy:
    """Train a single-task PWM policy (see the package docstring) within the budget, reporting through ``run``."""
    from pwm_bench.pretrain import load_world_model

    device = run.device
    if cfg.world_model is None:
        raise UsageError("PWM needs a world model: run through pwm-bench (which prepares one) or set world_model")
    wm = load_world_model(cfg.world_model, device)
    if (wm.obs_dim, wm.act_dim) != (env.obs_dim, env.act_dim):
        raise UsageError(
            f"world model {cfg.world_model} has obs/act sizes {wm.obs_dim}/{wm.act_dim}; "
            f"env has {env.obs_dim}/{env.act_dim}"
        )
    online = cfg.mode == "online"
    simulator = cfg.dynamics == "simulator"
    if simulator and not env.differentiable:
        raise UsageError(f"dynamics=simulator needs an env with simulator gradients; '{env.name}' has none")
    latent = wm.cfg.latent_dim
    actor = LatentActor(latent, env.act_dim, cfg.actor_hidden, cfg.init_log_std).to(device)
    critics = CriticEnsemble(latent, cfg.critic_hidden, cfg.num_critics).to(device)
    actor_opt = adam(actor.parameters(), lr=cfg.actor_lr, betas=cfg.betas)
    critic_opt = adam(critics.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
    finetune = online and cfg.finetune_wm and not simulator
    tuned = [p for n, p in wm.named_parameters() if cfg.finetune_encoder or not n.startswith("encoder.")]
    wm_opt = adam(tuned, lr=cfg.wm_lr) if finetune else None
    ret_rms = RunningMeanStd(()).to(device)
    # a frozen model (finetune_wm=false) keeps only the newest windows, to report its error on new data
    capacity = min(cfg.replay_size, cfg.total_steps) if finetune else 2 * (cfg.horizon + 1) * env.num_envs
    replay = (
        WindowReplay(capacity, env.num_envs, env.obs_dim, env.act_dim, device) if online and not simulator else None
    )
    grad_check = online and not simulator and cfg.grad_check_every > 0 and env.differentiable
    dataset = None
    if not online and cfg.dataset is None:
        raise UsageError("offline PWM needs a dataset for its start states")
    if cfg.dataset is not None and (not online or (finetune and cfg.finetune_offline_fraction > 0)):
        from pwm_bench.datasets import EpisodeDataset

        dataset = EpisodeDataset(cfg.dataset, device=device)
    policy = PWMPolicy(wm, actor)
    epoch = 0
    if cfg.dataset is not None:
        from pwm_bench.pwm.pipeline import data_env_steps

        # what the pretraining data cost, to compare algorithms on env steps in all (summary.json)
        run.extra_summary["data_env_steps"] = data_env_steps(cfg.dataset)

    state = run.restore()
    if state is not None:
        actor.load_state_dict(state["actor"])
        critics.load_state_dict(state["critics"])
        actor_opt.load_state_dict(state["actor_opt"])
        critic_opt.load_state_dict(state["critic_opt"])
        ret_rms.load_state_dict(state["ret_rms"])
        wm.load_state_dict(state["wm"])
        if wm_opt is not None:
            wm_opt.load_state_dict(state["wm_opt"])
        if replay is not None and state.get("replay") is not None:
            replay.load_state_dict(state["replay"])
        epoch = int(state["epoch"])

    def state_fn() -> dict[str, Any]:
        return {
            "actor": actor.state_dict(),
            "critics": critics.state_dict(),
            "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict(),
            "ret_rms": ret_rms.state_dict(),
            "wm": wm.state_dict(),
            "wm_opt": wm_opt.state_dict() if wm_opt is not None else None,
            "replay": replay.state_dict() if replay is not None else None,
            "epoch": epoch,
        }

    obs = env.reset(seed=run.env_seed)[0] if online else None
    wm.eval()
    wm.requires_grad_(False)
    while not run.done:
        frac = run.progress / run.budget
        linear_lr(actor_opt, cfg.actor_lr, cfg.lr_min, frac)
        linear_lr(critic_opt, cfg.critic_lr, cfg.lr_min, frac)
        if wm_opt is not None:
            linear_lr(wm_opt, cfg.wm_lr, cfg.lr_min, frac if cfg.wm_lr_schedule == "linear" else 0.0)
        extra: dict[str, float] = {}
        if grad_check and epoch % cfg.grad_check_every == 0:
            extra.update(model_gradient_check(env, wm, actor, critics, obs, cfg, seed=run.seed + epoch))
        critics.requires_grad_(False)
        if online:
            with torch.no_grad():
                z0 = wm.encode(obs)
            window, obs = imagine(wm, actor, critics, z0, cfg, env=env, run=run, replay=replay, obs=obs)
        else:
            with torch.no_grad():
                z0 = wm.encode(dataset.sample_states(cfg.batch_size))
            window, _ = imagine(wm, actor, critics, z0, cfg)
        critics.requires_grad_(True)
        metrics = actor_critic_update(window, actor, critics, actor_opt, critic_opt, ret_rms, cfg)
        if replay is not None:
            extra.update(newest_data_losses(wm, replay, cfg))
            if finetune and len(replay) >= cfg.finetune_after and replay.can_sample(cfg.horizon):
                extra.update(finetune_world_model(wm, wm_opt, tuned, replay, dataset, cfg))
        epoch += 1
        run.log({**metrics, "pwm/epoch": epoch, **extra})
        run.end_iteration(policy, state_fn)
    return policy
