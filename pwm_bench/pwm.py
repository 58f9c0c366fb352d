"""PWM: policy learning by first-order gradients through a pretrained world model (Georgiev et al. 2024).

A world model (:class:`~pwm_bench.world_model.WorldModel`: encoder, SimNorm latent dynamics, reward)
is pretrained on offline data. A SHAC-style actor-critic then learns on the model's latents:

- **Actor** ``π(z)``: 400-200-100 MLP (``Linear → Mish → LayerNorm``), state-independent log std
  (initialised at -1, floored at -1.427); the model receives ``tanh(μ + σ ε)``.
- **Actor loss**: from start latents ``z_0``, roll the model ``H = 16`` steps with the actor's actions
  (the actor's *input* latent is detached, so gradients reach the actor only through the actions,
  the dynamics and the reward), and minimise ``-(Σ_t γ^t r̂_t + γ^H min_k V_k(z_H))``, normalised by
  a running standard deviation of these returns. One Adam step (betas 0.7, 0.95), grad clip 1.
- **Critics**: 3 value MLPs ``V_k(z)`` (400-200), no target network; TD(λ = 0.95) targets over the
  imagined window from the detached min-critic values; 8 passes × 4 unshuffled minibatches, clip 100.
- LRs decay linearly from 5e-4 to 1e-5 over the run.

Two modes:

- ``online`` (single task): the start states are the live states of the parallel worlds; the real
  env steps in lock-step with the imagined rollout (same actions, no simulator gradients) to collect
  data and score real returns; a world whose real episode ends closes its imagined segment
  (bootstrap 0 after a termination, ``V(ẑ)`` after a time limit) and restarts from the encoding of
  its new real observation. The model is fine-tuned ``wm_iterations`` steps per epoch on
  windows drawn half from the collected data and half from the pretraining dataset (a departure
  from the reference, which fine-tunes on the new data alone: a small early replay made the model
  forget its pretraining and the policy stop improving), once ``finetune_after`` transitions exist.
  Env steps count against the budget as for every other algorithm.
- ``offline``: start states are observations sampled from a dataset; the model is frozen; the env is
  used only for evaluation. The budget is ``epochs`` policy iterations (``env_steps`` stays 0).

Reference quirks (pwm.md §8), each a config flag whose default is the mathematically correct choice:

- ``terminal_discount``: ``"gamma_h"`` bootstraps ``γ^H V(z_H)``; the reference code uses ``γ^(H+1)``
  (``"gamma_h_plus_1"``).
- ``critic_target``: ``"td_lambda"`` everywhere; the reference's offline path collapses to one-step
  targets ``r + γ V(z')`` (``"one_step"``).
- ``reward_decode``: for a two-hot reward head, ``"raw"`` decodes with symexp (the env's reward);
  the reference's multi-task path optimises the symlog reward (``"symlog"``).
- Actions in the data: ``pwm-bench collect`` stores the actions the env received (post-tanh, in
  [-1, 1]), which is what the model is fed during policy learning; the reference's SHAC data stored
  pre-tanh samples. There is nothing to switch.

When neither ``world_model`` nor ``dataset`` is given, :func:`prepare` runs the whole pipeline
before training, each stage cached under the results root and skipped when done: collect data by
training ``collect_algo`` (SHAC) with every rollout recorded, pretrain the world model on it, then
train the policy. Shapes: ``N`` worlds or start states, ``H`` horizon, ``L`` latent, ``A`` actions.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig, to_dict
from pwm_bench.envs.base import VecEnv
from pwm_bench.errors import NonFiniteError, UsageError, unknown_choice
from pwm_bench.nn import RunningMeanStd, ln_mlp
from pwm_bench.replay import WindowReplay
from pwm_bench.run import Run
from pwm_bench.world_model import MODEL_SIZES, WorldModel, sized_config, world_model_loss

log = logging.getLogger(__name__)

LOG_STD_MIN = -1.427
"""Floor of the actor's log standard deviation (σ ≈ 0.24)."""


# --------------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass
class PWMConfig(TrainConfig):
    """PWM hyperparameters. Online budgets are env steps over all worlds; offline, policy epochs."""

    total_steps: int = 15_000 * 16 * 64
    """Online: env-step budget (epochs × horizon × worlds)."""
    num_envs: int = 64
    """Online: parallel worlds, i.e. start states per epoch."""
    eval_every: int = 200 * 16 * 64
    """Evaluate the deterministic policy and checkpoint every this many env steps (online) or epochs (offline)."""
    mode: Literal["online", "offline"] = "online"
    """'online' (live start states, lock-step env, model fine-tuning) or 'offline' (dataset start states)."""
    epochs: int = 10_000
    """Offline: policy iterations."""
    batch_size: int = 512
    """Offline: start states per epoch."""
    horizon: int = 16
    """Imagined rollout length H."""
    gamma: float = 0.99
    """Discount."""
    lam: float = 0.95
    """TD(λ) parameter of the critic targets."""
    actor_hidden: tuple[int, ...] = (400, 200, 100)
    """Actor hidden layers (Linear → Mish → LayerNorm)."""
    critic_hidden: tuple[int, ...] = (400, 200)
    """Critic hidden layers."""
    num_critics: int = 3
    """Critic ensemble size; bootstraps use the minimum."""
    actor_lr: float = 5e-4
    """Initial actor learning rate."""
    critic_lr: float = 5e-4
    """Initial critic learning rate."""
    lr_min: float = 1e-5
    """Learning rates decay linearly to this value over the run."""
    betas: tuple[float, float] = (0.7, 0.95)
    """Adam betas of actor and critics."""
    actor_grad_clip: float = 1.0
    """Actor gradient-norm clip."""
    critic_grad_clip: float = 100.0
    """Critic gradient-norm clip."""
    critic_iterations: int = 8
    """Passes over the imagined window per epoch."""
    critic_batches: int = 4
    """Minibatches per pass."""
    init_log_std: float = -1.0
    """Initial log std of the actor."""
    return_norm: bool = True
    """Divide the actor loss by a running std of the imagined returns (else by H)."""
    terminal_discount: Literal["gamma_h", "gamma_h_plus_1"] = "gamma_h"
    """Bootstrap discount: γ^H (correct) or γ^(H+1) (reference code)."""
    critic_target: Literal["td_lambda", "one_step"] = "td_lambda"
    """TD(λ) targets, or one-step targets (the reference's offline behaviour)."""
    reward_decode: Literal["raw", "symlog"] = "raw"
    """Two-hot reward heads: decode to raw rewards (symexp) or keep symlog units (reference multi-task)."""
    # -- world model and data
    world_model: str | None = None
    """Pretrained world model: a folder (or model.pt) or a name under <results>/world_models."""
    dataset: str | None = None
    """Episode dataset to pretrain on (online) or sample start states from (offline); path or name."""
    datasets: tuple[str, ...] = ()
    """Multi-task (``--env mt:<taskset>``): one dataset per task, in task order (set by the pipeline)."""
    wm_size: str = "pwm"
    """Architecture of a world model pretrained by the pipeline (see world_model.MODEL_SIZES)."""
    wm_latent_dim: int | None = None
    """Override of the size's latent dimension."""
    wm_mlp_dim: int | None = None
    """Override of the size's dynamics/reward width."""
    wm_enc_dim: int | None = None
    """Override of the size's encoder width."""
    pretrain_steps: int = 50_000
    """Pretraining gradient steps (PWM: hopper 50k, ant 100k, humanoid 200k)."""
    wm_batch_size: int = 256
    """Windows per world-model step (pretraining and fine-tuning)."""
    wm_lr: float = 3e-4
    """World-model Adam learning rate (pretraining; the fine-tuning LR decays from it)."""
    wm_rho: float = 0.99
    """Per-step weight base of the world-model losses."""
    wm_task_dim: int = 64
    """Multi-task: task-embedding size of the world model (the reference's MT30 model: 64)."""
    wm_num_bins: int | None = None
    """Reward bins of a pipeline-pretrained model (None: the size's; multi-task: 101, two-hot as in the reference)."""
    wm_termination: bool = False
    """Give the pretrained model a termination head and weight imagined rewards and bootstraps by the
    predicted probability of still being alive (not in the reference, whose imagination never ends)."""
    wm_consistency_coef: float = 1.0
    """Weight of the latent consistency loss against the reward loss (PWM: 1, TD-MPC2: 20)."""
    finetune_wm: bool = True
    """Online: fine-tune the model on the collected data."""
    wm_iterations: int = 8
    """Online: model gradient steps per epoch."""
    finetune_encoder: bool = False
    """Online: fine-tune the encoder too (reference); False keeps the latent space the actor and critics see fixed."""
    finetune_after: int = 10_000
    """Online: fine-tuning starts once this many real transitions are collected."""
    finetune_offline_fraction: float = 0.5
    """Online: share of each fine-tuning batch drawn from the pretraining dataset (when known)."""
    replay_size: int = 1_000_000
    """Online: transitions kept for fine-tuning."""
    collect_algo: str = "shac"
    """Algorithm whose training rollouts make the pipeline's dataset."""
    collect_preset: str = "cpu"
    """Preset of the collecting run."""
    collect_steps: int | None = None
    """Env steps of the collecting run (None: its preset's budget)."""

    def preset_overrides(self, preset: str, env: str) -> dict[str, Any]:
        over = self._preset(preset, env)
        if preset == "cpu" and env in ("pointmass", "mt:toy"):
            # point masses: the paper's 400-200-100 actor did not learn offline in 300 epochs (-432,
            # random actions about -430); 64-64 networks did (-65)
            over.update(actor_hidden=(64, 64), critic_hidden=(64, 64))
        if env.startswith("mt:"):
            # task sets: offline policies, one per task, from one shared world model
            # (cpu: 300 epochs per task, where offline PWM on the point mass had converged)
            per_task = {"smoke": 20, "cpu": 300, "paper": 10_000}.get(preset, self.epochs)
            over.update(
                epochs=per_task,
                eval_every=per_task,
                wm_task_dim={"smoke": 8, "cpu": 32}.get(preset, 64),
                # critic passes over batch × H latents dominate an epoch on a CPU
                batch_size={"smoke": 32, "cpu": 64}.get(preset, 512),
            )
        return over

    def _preset(self, preset: str, env: str) -> dict[str, Any]:
        if preset == "smoke":
            return {
                "num_envs": 8,
                "total_steps": 8 * 8 * 8,
                "horizon": 8,
                "eval_every": 256,
                "eval_episodes": 2,
                "actor_hidden": (64, 32),
                "critic_hidden": (64,),
                "wm_latent_dim": 32,
                "wm_mlp_dim": 64,
                "wm_enc_dim": 64,
                "pretrain_steps": 100,
                "wm_batch_size": 32,
                "wm_iterations": 2,
                "finetune_after": 128,
                "collect_preset": "smoke",
                "epochs": 20,
                "batch_size": 32,
            }
        if preset == "cpu":
            # the paper's networks and learning rates; 32 worlds for 1000 epochs (512k env steps),
            # a narrower world model pretrained 5k steps on 262k transitions of a SHAC run
            return {
                "num_envs": 32,
                "total_steps": 32 * 16 * 1000,
                "eval_every": 51_200,
                "eval_episodes": 8,
                "wm_latent_dim": 128,
                "wm_mlp_dim": 256,
                "wm_enc_dim": 128,
                "pretrain_steps": 5_000,
                "wm_batch_size": 128,
                "wm_iterations": 2,
                "collect_preset": "cpu",
                "collect_steps": 262_144,
                "epochs": 2_000,
                "batch_size": 256,
            }
        if preset == "paper":
            big = env in ("humanoid", "snu_humanoid", "muscle_humanoid")
            worlds = 128 if env == "ant" else 64
            return {
                "num_envs": worlds,
                "total_steps": 15_000 * 16 * worlds,
                "eval_every": 200 * 16 * worlds,
                "pretrain_steps": 200_000 if big else (100_000 if env == "ant" else 50_000),
                "collect_preset": "paper",
            }
        return {}

    def budget(self) -> tuple[str, int]:
        """Online: env steps. Offline: policy epochs (``epochs`` per task for a task set)."""
        if self.mode == "offline":
            return "iterations", self.epochs * max(1, len(self.datasets))
        return "env_steps", self.total_steps

    def validate(self) -> None:
        super().validate()
        for name in (
            "horizon",
            "epochs",
            "batch_size",
            "num_critics",
            "critic_iterations",
            "critic_batches",
            "actor_lr",
            "critic_lr",
            "pretrain_steps",
            "wm_batch_size",
            "wm_lr",
        ):
            if getattr(self, name) <= 0:
                raise UsageError(f"config '{name}' must be positive, got {getattr(self, name)}")
        if self.wm_size not in MODEL_SIZES:
            raise unknown_choice("world-model size", self.wm_size, list(MODEL_SIZES))
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise UsageError("config 'gamma' must be in (0, 1] and 'lam' in [0, 1]")
        if self.mode == "offline" and self.world_model is None and self.dataset is None and not self.datasets:
            raise UsageError("offline PWM needs a dataset (--set pwm.dataset=NAME) or a world model trained on one")

    def world_model_config(self, num_tasks: int = 1) -> Any:
        """Architecture of the world model the pipeline pretrains (with a task embedding if ``num_tasks > 1``)."""
        extra: dict[str, Any] = {}
        if num_tasks > 1:
            extra.update(num_tasks=num_tasks, task_dim=self.wm_task_dim, num_bins=self.wm_num_bins or 101)
        elif self.wm_num_bins is not None:
            extra["num_bins"] = self.wm_num_bins
        return sized_config(
            self.wm_size,
            latent_dim=self.wm_latent_dim,
            mlp_dim=self.wm_mlp_dim,
            enc_dim=self.wm_enc_dim,
            termination=self.wm_termination,
            **extra,
        )


# --------------------------------------------------------------------------------------------------
# networks


class LatentActor(nn.Module):
    """Gaussian ``N(μ(z), exp(log_std))`` on latents; the model and the env get ``tanh`` of a sample.

    The log std is state-independent, clamped below at :data:`LOG_STD_MIN` on every forward pass.
    """

    def __init__(self, latent_dim: int, act_dim: int, hidden: Sequence[int], init_log_std: float = -1.0) -> None:
        super().__init__()
        self.mu = ln_mlp(latent_dim, hidden, act_dim, "mish")
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, z: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions ``tanh(μ + σ ε)`` ``(..., A)`` for latents ``(..., L)`` (reparameterised)."""
        mu = self.mu(z)
        if deterministic:
            return torch.tanh(mu)
        return torch.tanh(mu + self.log_std.clamp_min(LOG_STD_MIN).exp() * torch.randn_like(mu))


class CriticEnsemble(nn.Module):
    """``K`` value networks ``V_k(z)``, orthogonal init (gain √2, zero bias)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], num: int = 3) -> None:
        super().__init__()
        self.nets = nn.ModuleList(ln_mlp(latent_dim, hidden, 1, "mish", orthogonal=True) for _ in range(num))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Values ``(K, ...)`` of latents ``(..., L)``."""
        return torch.stack([net(z).squeeze(-1) for net in self.nets])

    def min(self, z: torch.Tensor) -> torch.Tensor:
        """``min_k V_k(z)`` ``(...)``."""
        return self(z).min(dim=0).values


class PWMPolicy:
    """Encoder + actor mean: ``a = tanh(μ(h(o)))`` (no planning).

    For one task of a multi-task model, ``task`` is its id; observations smaller than the model's
    are zero-padded and only the task's first ``act_dim`` action entries are returned.
    """

    def __init__(self, wm: WorldModel, actor: LatentActor, task: int | None = None, act_dim: int | None = None) -> None:
        self.wm, self.actor, self.task = wm, actor, task
        self.act_dim = act_dim or wm.act_dim

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A_task)`` in [-1, 1] for raw observations ``(N, O_task)``."""
        obs = nn.functional.pad(obs, (0, self.wm.obs_dim - obs.shape[-1]))
        task = None if self.task is None else torch.full((obs.shape[0],), self.task, device=obs.device)
        return self.actor(self.wm.encode(obs, task), deterministic=deterministic)[:, : self.act_dim]


class MultiTaskPolicy:
    """One actor per task on a shared model, acting on a :class:`~pwm_bench.envs.multitask.TaskSetEnv`'s
    task-major worlds: rows ``k·n .. k·n+n-1`` of a batch of ``T·n`` observations belong to task ``k``."""

    def __init__(self, wm: WorldModel, actors: Sequence[LatentActor], action_mask: torch.Tensor) -> None:
        self.wm, self.actors, self.action_mask = wm, list(actors), action_mask

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Padded actions ``(T·n, A)`` for padded observations ``(T·n, O)``; unused entries are 0."""
        t_count = len(self.actors)
        if obs.shape[0] % t_count:
            raise ValueError(f"{obs.shape[0]} observations do not split into {t_count} task blocks")
        n = obs.shape[0] // t_count
        out = []
        for k, actor in enumerate(self.actors):
            task = torch.full((n,), k, dtype=torch.long, device=obs.device)
            a = actor(self.wm.encode(obs[k * n : (k + 1) * n], task), deterministic=deterministic)
            out.append(a * self.action_mask[k])
        return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# imagined rollouts and the actor-critic losses


@dataclasses.dataclass
class Imagination:
    """One imagined window.

    Attributes:
        loss: per-start actor loss ``(N,)``: minus the sum of its closed segments' returns, differentiable.
        latents: ``(H, N, L)`` detached latents the critics train on.
        rewards: ``(H, N)`` detached model rewards.
        next_values: ``(H, N)`` detached bootstraps ``min V(z_{t+1})`` (0 after a real termination).
        dones: ``(H, N)`` segment ends (real episode ends, and the window's last step).
        continuation: ``(H, N)`` predicted probability of being alive after each step (1 without a
            termination head).
        env_steps: real env steps taken (online).
    """

    loss: torch.Tensor
    latents: torch.Tensor
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

    With ``env`` (online), the real worlds step with the same actions; their transitions go to
    ``replay``, finished episodes are recorded on ``run``, and a world whose episode ends closes its
    segment and restarts from the encoding of its new observation. Model and critic parameters
    should have ``requires_grad=False`` here; gradients flow through their activations.
    A multi-task model takes ``task`` ids ``(N,)``; ``act_mask`` ``(A,)`` zeroes the padded action
    entries a task does not have (the reference leaves them to the actor, pwm.md §2.2).
    """
    n, h = z0.shape[0], cfg.horizon
    gamma = cfg.gamma
    z = z0
    rew_acc = torch.zeros(n, device=z0.device)
    disc = torch.ones(n, device=z0.device)
    loss = torch.zeros(n, device=z0.device)
    zs, rs, vs, ds, cs = [], [], [], [], []
    steps = 0
    # a model with a termination head: weigh what follows by the predicted probability of being alive
    alive = torch.ones(n, device=z0.device)
    term_aware = wm.term_head is not None
    symlog_space = cfg.reward_decode == "symlog"
    for t in range(h):
        a = actor(z.detach())
        if act_mask is not None:
            a = a * act_mask
        r = wm.reward(z, a, task, symlog_space=symlog_space)
        z_next = wm.next(z, a, task)
        v_next = critics.min(z_next)
        last = t == h - 1
        done = torch.zeros(n, dtype=torch.bool, device=z0.device)
        if env is not None:
            with torch.no_grad():
                next_obs, reward, terminated, truncated, info = env.step(a.detach())
                done = terminated | truncated
                if replay is not None:
                    real_next = torch.where(done.unsqueeze(-1), info["final_obs"], next_obs)
                    replay.add(obs, a.detach(), reward, real_next, terminated, done)
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
        rs.append(r.detach())
        vs.append(v_next.detach())
        ds.append(end)
        disc = torch.where(done, torch.ones_like(disc), disc * gamma)
        alive = torch.where(done, torch.ones_like(alive), alive)
        rew_acc = torch.where(done, torch.zeros_like(rew_acc), rew_acc)
        if bool(done.any()):
            with torch.no_grad():
                z_new = wm.encode(obs, task)
            z = torch.where(done.unsqueeze(-1), z_new, z_next)
        else:
            z = z_next
    window = Imagination(
        loss,
        torch.stack(zs),
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
            for p in critics.parameters():
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
            nn.utils.clip_grad_norm_(critics.parameters(), cfg.critic_grad_clip)
            optim.step()
            total += float(loss.detach()) / cfg.num_critics / cfg.critic_batches
    return total


# --------------------------------------------------------------------------------------------------
# the pipeline: data, world model, policy


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
        cfg.dataset = str(_collect_stage(cfg, ctx))
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
        seed=ctx.seed,
        eval_every=max(1, min(1000, cfg.pretrain_steps // 5)),
    )
    wm_cfg = cfg.world_model_config(len(data) if multi else 1)
    key = _digest({"dataset": data, "pretrain": dataclasses.asdict(pre), "wm": to_dict(wm_cfg)})
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
    from pwm_bench.datasets import EpisodeWriter, RecordingEnv, read_manifest
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
        writer = EpisodeWriter(
            dataset,
            env=env,
            obs_dim=train_env.obs_dim,
            act_dim=train_env.act_dim,
            num_envs=train_env.num_envs,
            source={
                "algo": algo,
                "preset": cfg.collect_preset,
                "seed": ctx.seed,
                "run": str(rdir),
                "env_overrides": {k: str(v) for k, v in env_overrides.items()},
            },
        )
        return RecordingEnv(train_env, writer)

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
    if result.status != "completed":
        raise UsageError(f"data collection {result.status} ({result.error or 'see ' + str(result.run_dir)})")
    return dataset


# --------------------------------------------------------------------------------------------------
# training


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

    Raises:
        NonFiniteError: the actor's gradient norm is NaN or inf.
    """
    if cfg.return_norm:
        ret_rms.update(window.returns)
        actor_loss = (window.loss / (ret_rms.var + 1e-5).sqrt().float()).mean()
    else:
        actor_loss = (window.loss / cfg.horizon).mean()
    actor_opt.zero_grad(set_to_none=True)
    actor_loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), cfg.actor_grad_clip)
    if not torch.isfinite(grad_norm):
        raise NonFiniteError(f"PWM actor gradient norm is {float(grad_norm)}")
    actor_opt.step()
    critic_loss = train_critics(critics, critic_opt, window.latents, critic_targets(window, cfg), cfg)
    return {
        "loss/actor": actor_loss.detach(),
        "loss/critic": critic_loss,
        "grad_norm/actor": grad_norm,
        "pwm/imagined_return": window.returns.mean(),
        "pwm/model_reward": window.rewards.mean(),
        "pwm/value": window.next_values.mean(),
        "pwm/log_std": actor.log_std.detach().clamp_min(LOG_STD_MIN).mean(),
    }


def _linear_lr(optim: torch.optim.Optimizer, lr0: float, lr_min: float, frac: float) -> None:
    lr = lr0 + (lr_min - lr0) * min(max(frac, 0.0), 1.0)
    for g in optim.param_groups:
        g["lr"] = lr


def train(env: VecEnv, cfg: PWMConfig, run: Run) -> PWMPolicy:
    """Train a PWM policy (see the module docstring) within the budget, reporting through ``run``."""
    from pwm_bench.pretrain import load_world_model

    device = run.device
    if cfg.world_model is None:
        raise UsageError("PWM needs a world model: run through pwm-bench (which prepares one) or set world_model")
    if cfg.datasets:
        return train_multitask(env, cfg, run)
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
        _linear_lr(actor_opt, cfg.actor_lr, cfg.lr_min, frac)
        _linear_lr(critic_opt, cfg.critic_lr, cfg.lr_min, frac)
        if wm_opt is not None:
            _linear_lr(wm_opt, cfg.wm_lr, cfg.lr_min, frac)
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


# --------------------------------------------------------------------------------------------------
# multi-task: one shared world model, one offline policy per task


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
            actor_opt=torch.optim.Adam(actors[k].parameters(), lr=cfg.actor_lr, betas=cfg.betas),
            critic_opt=torch.optim.Adam(critics.parameters(), lr=cfg.critic_lr, betas=cfg.betas),
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
        _linear_lr(current["actor_opt"], cfg.actor_lr, cfg.lr_min, frac)
        _linear_lr(current["critic_opt"], cfg.critic_lr, cfg.lr_min, frac)
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


ALGORITHM = Algorithm(
    name="pwm",
    config=PWMConfig,
    train=train,
    description="PWM: first-order policy gradients through a pretrained world model (Georgiev et al. 2024)",
    prepare=prepare,
)
