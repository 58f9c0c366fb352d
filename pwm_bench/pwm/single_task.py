"""Single-task PWM training, online (live start states, lock-step env, model fine-tuning) or offline."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import UsageError
from pwm_bench.nn import RunningMeanStd
from pwm_bench.pwm.config import PWMConfig
from pwm_bench.pwm.imagination import actor_critic_update, imagine, linear_lr
from pwm_bench.pwm.networks import CriticEnsemble, LatentActor, PWMPolicy
from pwm_bench.replay import WindowReplay
from pwm_bench.run import Run
from pwm_bench.world_model import world_model_loss

log = logging.getLogger(__name__)


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
    latent = wm.cfg.latent_dim
    actor = LatentActor(latent, env.act_dim, cfg.actor_hidden, cfg.init_log_std).to(device)
    critics = CriticEnsemble(latent, cfg.critic_hidden, cfg.num_critics).to(device)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, betas=cfg.betas)
    critic_opt = torch.optim.Adam(critics.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
    online = cfg.mode == "online"
    finetune = online and cfg.finetune_wm
    tuned = [p for n, p in wm.named_parameters() if cfg.finetune_encoder or not n.startswith("encoder.")]
    wm_opt = torch.optim.Adam(tuned, lr=cfg.wm_lr) if finetune else None
    ret_rms = RunningMeanStd(()).to(device)
    replay = (
        WindowReplay(min(cfg.replay_size, cfg.total_steps), env.num_envs, env.obs_dim, env.act_dim, device)
        if finetune
        else None
    )
    dataset = None
    if not online and cfg.dataset is None:
        raise UsageError("offline PWM needs a dataset for its start states")
    if cfg.dataset is not None and (not online or (finetune and cfg.finetune_offline_fraction > 0)):
        from pwm_bench.datasets import EpisodeDataset

        dataset = EpisodeDataset(cfg.dataset, device=device)
    n_offline = round(cfg.wm_batch_size * cfg.finetune_offline_fraction) if dataset is not None else 0
    policy = PWMPolicy(wm, actor)
    epoch = 0

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
        if replay is not None:
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
    while not run.done:
        frac = run.progress / run.budget
        linear_lr(actor_opt, cfg.actor_lr, cfg.lr_min, frac)
        linear_lr(critic_opt, cfg.critic_lr, cfg.lr_min, frac)
        if wm_opt is not None:
            linear_lr(wm_opt, cfg.wm_lr, cfg.lr_min, frac)
        wm.requires_grad_(False)
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

        wm_metrics: dict[str, float] = {}
        if finetune and replay is not None and len(replay) >= cfg.finetune_after and replay.can_sample(cfg.horizon):
            # fine-tune on a mix of the pretraining data and the new real transitions, so a small,
            # narrow replay does not make the model forget what it learned offline
            for p in tuned:
                p.requires_grad_(True)
            wm.train()
            cons = rew = 0.0
            for _ in range(cfg.wm_iterations):
                o, a, r, d = replay.sample(cfg.wm_batch_size - n_offline, cfg.horizon)
                if n_offline:
                    b = dataset.sample(n_offline, cfg.horizon)
                    o, a, r = torch.cat([o, b.obs], 1), torch.cat([a, b.action], 1), torch.cat([r, b.reward], 1)
                    d = torch.cat([d, b.terminated.float()], 1)
                losses = world_model_loss(
                    wm, o, a, r, rho=cfg.wm_rho, consistency_coef=cfg.wm_consistency_coef, terminated=d
                )
                wm_opt.zero_grad(set_to_none=True)
                losses.total.backward()
                nn.utils.clip_grad_norm_(tuned, 20.0)
                wm_opt.step()
                cons += float(losses.consistency)
                rew += float(losses.reward)
            wm.eval()
            wm_metrics = {"wm/consistency": cons / cfg.wm_iterations, "wm/reward": rew / cfg.wm_iterations}
        epoch += 1
        run.log({**metrics, "pwm/epoch": epoch, **wm_metrics})
        run.end_iteration(policy, state_fn)
    return policy
