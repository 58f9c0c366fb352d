"""Imagined rollouts through the world model and the actor-critic losses on them.

``imagine`` rolls the actor through the model (and, online, the real env in lock-step);
``actor_critic_update`` takes the actor step on its return and fits the critics to TD(λ) targets."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
from torch import nn

from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import NonFiniteError
from pwm_bench.nn import RunningMeanStd, clip_grad_norm_
from pwm_bench.pwm.config import LOG_STD_MIN, PWMConfig
from pwm_bench.pwm.networks import CriticEnsemble, LatentActor
from pwm_bench.replay import WindowReplay
from pwm_bench.run import Run
from pwm_bench.world_model import WorldModel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Imagination:
    """One imagined window.

    Attributes:
        loss: per-start actor loss ``(N,)``: minus the sum of its closed segments' returns, differentiable.
        latents: ``(H, N, L)`` detached latents the critics train on (the actor's inputs).
        actions: ``(H, N, A)`` detached actions, in [-1, 1], that the model (and the real env) received.
        rewards: ``(H, N)`` detached rewards in model units.
        next_values: ``(H, N)`` detached bootstraps ``min V(z_{t+1})`` (0 after a real termination).
        dones: ``(H, N)`` segment ends (real episode ends, and the window's last step).
        continuation: ``(H, N)`` predicted probability of being alive after each step (1 without a
            termination head).
        env_steps: real env steps taken (online).
    """

    loss: torch.Tensor
    latents: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_values: torch.Tensor
    dones: torch.Tensor
    continuation: torch.Tensor
    env_steps: int = 0

    @property
    def returns(self) -> torch.Tensor:
        """Imagined returns ``(N,)`` (``-loss``, detached), e.g. for the running normaliser."""
        return -self.loss.detach()


def imagine(
    wm: WorldModel,
    actor: LatentActor,
    critics: CriticEnsemble,
    z0: torch.Tensor,
    cfg: PWMConfig,
    *,
    env: VecEnv | None = None,
    run: Run | None = None,
    replay: WindowReplay | None = None,
    obs: torch.Tensor | None = None,
    task: torch.Tensor | None = None,
    act_mask: torch.Tensor | None = None,
) -> tuple[Imagination, torch.Tensor | None]:
    """Roll the model ``cfg.horizon`` steps from ``z0 (N, L)`` with the actor; returns the window and the
    last real observation (online) or None.

    With ``env`` (online), the real worlds step with the same actions (or, with ``cfg.real_actions ==
    "closed_loop"``, with the actor's actions on their own encoded observations and the same
    noise); their transitions go to
    ``replay``, finished episodes are recorded on ``run``, and a world whose episode ends closes its
    segment (bootstrap 0 after a termination) and restarts from the encoding of its new observation.
    Model and critic parameters should have ``requires_grad=False`` here; gradients flow through
    their activations. A multi-task model takes ``task`` ids ``(N,)``; ``act_mask`` ``(A,)`` zeroes
    the padded action entries a task does not have (the reference leaves them to the actor, pwm.md §2.2).

    With ``cfg.dynamics == "simulator"`` the differentiable ``env`` replaces the model: rewards are
    the env's (in the model's reward units), latents are the encodings of the real observations,
    and the gradient flows through the simulator and the (frozen) encoder into the bootstrap.
    With ``cfg.value_gradient`` False the bootstraps are constants for the actor (no gradient
    through the critic); the actor then follows the H-step reward gradient alone.
    """
    n, h = z0.shape[0], cfg.horizon
    gamma = cfg.gamma
    simulator = cfg.dynamics == "simulator"
    value_grad = cfg.value_gradient
    if simulator and (env is None or not env.differentiable):
        raise ValueError("dynamics='simulator' needs the differentiable env (online mode)")
    if simulator:
        env.detach()  # the window's gradient starts at the worlds' current states
    z = z0
    rew_acc = torch.zeros(n, device=z0.device)
    disc = torch.ones(n, device=z0.device)
    loss = torch.zeros(n, device=z0.device)
    zs, acts, rs, vs, ds, cs = [], [], [], [], [], []
    steps = 0
    # a model with a termination head: weigh what follows by the predicted probability of being alive
    alive = torch.ones(n, device=z0.device)
    term_aware = wm.term_head is not None and not simulator
    symlog_space = cfg.reward_decode == "symlog"
    closed_loop = env is not None and not simulator and cfg.real_actions == "closed_loop"
    for t in range(h):
        noise = None
        if closed_loop:  # one ε for the imagined and the real action
            noise = torch.randn(n, actor.log_std.shape[-1], device=z0.device)
        z_in = z.detach() if cfg.detach_actor_input else z
        a = actor(z_in) if noise is None else actor(z_in, noise=noise)
        if act_mask is not None:
            a = a * act_mask
        real_a = a.detach()
        if closed_loop:
            with torch.no_grad():
                real_a = actor(wm.encode(obs, task), noise=noise)
                if act_mask is not None:
                    real_a = real_a * act_mask
        last = t == h - 1
        done = torch.zeros(n, dtype=torch.bool, device=z0.device)
        if simulator:
            next_obs, reward, terminated, truncated, info = env.step(a)
            done = terminated | truncated
            r = (reward - wm.reward_shift) / wm.reward_scale
            z_next = wm.encode(next_obs, task)  # for finished worlds: their new episode's first state
            v_next = critics.min(z_next if value_grad else z_next.detach())
            if bool(done.any()):
                z_final = wm.encode(info["final_obs"], task)
                v_final = critics.min(z_final if value_grad else z_final.detach())
                v_next = torch.where(done, v_final, v_next)
        else:
            r = wm.reward(z, a, task, symlog_space=symlog_space)
            z_next = wm.next(z, a, task)
            v_next = critics.min(z_next if value_grad else z_next.detach())
            if env is not None:
                with torch.no_grad():
                    next_obs, reward, terminated, truncated, info = env.step(real_a)
                done = terminated | truncated
        if env is not None:
            if replay is not None:
                real_next = torch.where(done.unsqueeze(-1), info["final_obs"], next_obs).detach()
                replay.add(obs.detach(), real_a, reward.detach(), real_next, terminated, done)
            steps += n
            if run is not None:
                run.add_env_steps(n)
                run.record_episodes(info)
            v_next = torch.where(terminated, torch.zeros_like(v_next), v_next)
            obs = next_obs
        rew_acc = rew_acc + disc * alive * r
        cont = torch.sigmoid(-wm.termination_logit(z_next, task)) if term_aware else torch.ones_like(alive)
        alive = alive * cont
        cs.append(cont.detach())
        end = done | last
        boot = disc * gamma * alive
        if last and cfg.terminal_discount == "gamma_h_plus_1":
            boot = torch.where(done, boot, boot * gamma)
        seg = -(rew_acc + boot * v_next)
        loss = loss + torch.where(end, seg, torch.zeros_like(seg))
        zs.append(z.detach())
        acts.append(a.detach())
        rs.append(r.detach())
        vs.append(v_next.detach())
        ds.append(end)
        disc = torch.where(done, torch.ones_like(disc), disc * gamma)
        alive = torch.where(done, torch.ones_like(alive), alive)
        rew_acc = torch.where(done, torch.zeros_like(rew_acc), rew_acc)
        if bool(done.any()) and not simulator:
            with torch.no_grad():
                z_new = wm.encode(obs, task)
            z = torch.where(done.unsqueeze(-1), z_new, z_next)
        else:
            z = z_next
    if simulator:
        obs = obs.detach()
        env.detach()
    window = Imagination(
        loss,
        torch.stack(zs),
        torch.stack(acts),
        torch.stack(rs),
        torch.stack(vs),
        torch.stack(ds),
        torch.stack(cs),
        env_steps=steps,
    )
    return window, obs


def critic_targets(window: Imagination, cfg: PWMConfig) -> torch.Tensor:
    """Targets ``(H, N)`` for the critics: TD(λ) over the window, or one-step ``r + γ V'``."""
    gamma = cfg.gamma * window.continuation
    if cfg.critic_target == "one_step":
        return window.rewards + gamma * window.next_values
    from pwm_bench.baselines.shac import td_lambda_targets

    return td_lambda_targets(window.rewards, window.next_values, window.dones, gamma, cfg.lam)


def train_critics(
    critics: CriticEnsemble, optim: torch.optim.Optimizer, latents: torch.Tensor, targets: torch.Tensor, cfg: PWMConfig
) -> float:
    """``critic_iterations`` passes of ``critic_batches`` unshuffled minibatches; returns the last mean loss."""
    x = latents.reshape(-1, latents.shape[-1])
    y = targets.reshape(-1)
    size = math.ceil(x.shape[0] / cfg.critic_batches)
    total = 0.0
    for _ in range(cfg.critic_iterations):
        total = 0.0
        for i in range(cfg.critic_batches):
            xb, yb = x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]
            if xb.shape[0] == 0:
                continue
            loss = (critics(xb) - yb).square().mean(dim=1).sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            clip_grad_norm_(critics.parameters(), cfg.critic_grad_clip, nonfinite_to_zero=True)
            optim.step()
            total += float(loss.detach()) / cfg.num_critics / cfg.critic_batches
    return total


def actor_critic_update(
    window: Imagination,
    actor: LatentActor,
    critics: CriticEnsemble,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    ret_rms: RunningMeanStd,
    cfg: PWMConfig,
) -> dict[str, Any]:
    """One actor step on ``window.loss`` (return-normalised, clipped) and the critic passes; returns metrics.

    The actor loss adds ``action_bound_coef · mean(relu(|μ| - action_bound)²)`` over the window's
    latents when that weight is positive. After the step the log std is clamped in place to at
    least :data:`LOG_STD_MIN` (a clamp inside ``forward`` would leave it there with zero gradient).
    Besides the losses, the metrics describe the actions: ``pwm/mu_abs`` (mean pre-tanh |μ|, and
    per dimension ``pwm/mu_abs/<i>`` for up to 16 dimensions), ``pwm/mu_abs_max`` and
    ``pwm/saturated``, the share of executed action entries with ``|a| > 0.99``.

    Raises:
        NonFiniteError: the actor's gradient norm is NaN or inf.
    """
    if cfg.return_norm:
        ret_rms.update(window.returns)
        actor_loss = (window.loss / (ret_rms.var + 1e-5).sqrt().float()).mean()
    else:
        actor_loss = (window.loss / cfg.horizon).mean()
    penalise = cfg.action_bound_coef > 0
    with torch.set_grad_enabled(penalise):
        mu = actor.mu(window.latents)  # (H, N, A) pre-tanh means at the window's latents
    total = actor_loss
    if penalise:
        total = total + cfg.action_bound_coef * (mu.abs() - cfg.action_bound).clamp_min(0.0).square().mean()
    actor_opt.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), cfg.actor_grad_clip)
    if not torch.isfinite(grad_norm):
        raise NonFiniteError(f"PWM actor gradient norm is {float(grad_norm)}")
    actor_opt.step()
    with torch.no_grad():
        actor.log_std.clamp_(min=LOG_STD_MIN)
    critic_loss = train_critics(critics, critic_opt, window.latents, critic_targets(window, cfg), cfg)
    mu_abs = mu.detach().abs().flatten(0, -2).mean(0)  # (A,)
    per_dim = {f"pwm/mu_abs/{i}": v for i, v in enumerate(mu_abs.tolist())} if mu_abs.numel() <= 16 else {}
    return {
        "loss/actor": actor_loss.detach(),
        "loss/critic": critic_loss,
        "grad_norm/actor": grad_norm,
        "pwm/imagined_return": window.returns.mean(),
        "pwm/model_reward": window.rewards.mean(),
        "pwm/value": window.next_values.mean(),
        "pwm/log_std": actor.log_std.detach().mean(),
        "pwm/mu_abs": mu_abs.mean(),
        "pwm/mu_abs_max": mu_abs.max(),
        **per_dim,
        "pwm/saturated": (window.actions.abs() > 0.99).float().mean(),
    }


def linear_lr(optim: torch.optim.Optimizer, lr0: float, lr_min: float, frac: float) -> None:
    """Set every group's LR to ``lr0 → lr_min`` linearly at progress ``frac`` in [0, 1]."""
    lr = lr0 + (lr_min - lr0) * min(max(frac, 0.0), 1.0)
    for g in optim.param_groups:
        g["lr"] = lr
