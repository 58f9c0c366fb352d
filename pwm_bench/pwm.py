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
        return ("iterations", self.epochs) if self.mode == "offline" else ("env_steps", self.total_steps)

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
        if self.mode == "offline" and self.world_model is None and self.dataset is None:
            raise UsageError("offline PWM needs a dataset (--set pwm.dataset=NAME) or a world model trained on one")

    def world_model_config(self) -> Any:
        """Architecture of the world model the pipeline pretrains."""
        return sized_config(
            self.wm_size,
            latent_dim=self.wm_latent_dim,
            mlp_dim=self.wm_mlp_dim,
            enc_dim=self.wm_enc_dim,
            termination=self.wm_termination,
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
    """Encoder + actor mean: ``a = tanh(μ(h(o)))`` (no planning)."""

    def __init__(self, wm: WorldModel, actor: LatentActor, task: int | None = None) -> None:
        self.wm, self.actor, self.task = wm, actor, task

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions ``(N, A)`` in [-1, 1] for raw observations ``(N, O)``."""
        task = None if self.task is None else torch.full((obs.shape[0],), self.task, device=obs.device)
        return self.actor(self.wm.encode(obs, task), deterministic=deterministic)


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
) -> tuple[Imagination, torch.Tensor | None]:
    """Roll the model ``cfg.horizon`` steps from ``z0 (N, L)`` with the actor; returns the window and the
    last real observation (online) or None.

    With ``env`` (online), the real worlds step with the same actions; their transitions go to
    ``replay``, finished episodes are recorded on ``run``, and a world whose episode ends closes its
    segment and restarts from the encoding of its new observation. Model and critic parameters
    should have ``requires_grad=False`` here; gradients flow through their activations.
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
    """
    from pwm_bench.pretrain import PretrainConfig, pretrain_world_model

    cfg = copy.deepcopy(cfg)
    root = Path(ctx.out)
    if cfg.world_model is not None:
        cfg.world_model = str(resolve_artefact(cfg.world_model, "world_models", root))
        if cfg.dataset is not None:
            cfg.dataset = str(resolve_artefact(cfg.dataset, "datasets", root))
        return cfg
    if cfg.dataset is None:
        cfg.dataset = str(_collect_stage(cfg, ctx))
    else:
        cfg.dataset = str(resolve_artefact(cfg.dataset, "datasets", root))
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
    wm_cfg = cfg.world_model_config()
    key = _digest({"dataset": cfg.dataset, "pretrain": dataclasses.asdict(pre), "wm": to_dict(wm_cfg)})
    out = root / "world_models" / f"pwm-{ctx.env.replace(':', '-')}-{key}"
    summary_file = out / "summary.json"
    done = summary_file.exists() and json.loads(summary_file.read_text()).get("status") == "completed"
    if done:
        log.info("world model: using cached %s", out)
    else:
        log.info("world model: pretraining %d steps into %s", cfg.pretrain_steps, out)
        pretrain_world_model(cfg.dataset, out, pre, wm_cfg, device=ctx.device, resume=True, reporter=ctx.reporter)
    cfg.world_model = str(out)
    return cfg


def _collect_stage(cfg: PWMConfig, ctx: Any) -> Path:
    """Train ``cfg.collect_algo`` on the env with every rollout recorded (cached by its settings)."""
    from pwm_bench.datasets import EpisodeWriter, RecordingEnv, read_manifest
    from pwm_bench.runner import RunRequest, execute
    from pwm_bench.store import env_dirname, read_summary

    root = Path(ctx.out)
    overrides: dict[str, Any] = {f"env.{k}": v for k, v in ctx.env_overrides.items()}
    if cfg.collect_steps is not None:
        overrides["total_steps"] = cfg.collect_steps
    key = _digest(
        {"env": ctx.env, "algo": cfg.collect_algo, "preset": cfg.collect_preset, "seed": ctx.seed, **overrides}
    )
    name = f"pwm-{ctx.env.replace(':', '-')}-{cfg.collect_algo}-{key}"
    dataset = root / "datasets" / name
    run_dir = root / "runs" / env_dirname(ctx.env) / cfg.collect_algo / name
    status = read_summary(run_dir).get("status") if run_dir.exists() else None
    if status == "completed":
        read_manifest(dataset)  # raises a clear error if the dataset went missing
        log.info("dataset: using cached %s", dataset)
        return dataset

    def wrap(train_env: Any, rdir: Path) -> Any:
        writer = EpisodeWriter(
            dataset,
            env=ctx.env,
            obs_dim=train_env.obs_dim,
            act_dim=train_env.act_dim,
            num_envs=train_env.num_envs,
            source={"algo": cfg.collect_algo, "preset": cfg.collect_preset, "seed": ctx.seed, "run": str(rdir)},
        )
        return RecordingEnv(train_env, writer)

    log.info(
        "dataset: training %s (%s preset) and recording its rollouts into %s",
        cfg.collect_algo,
        cfg.collect_preset,
        dataset,
    )
    if run_dir.exists():
        req = RunRequest(resume=run_dir, device=str(ctx.device), reporter=ctx.reporter, wrap_env=wrap)
    else:
        req = RunRequest(
            algo=cfg.collect_algo,
            env=ctx.env,
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
        if cfg.return_norm:
            ret_rms.update(window.returns)
            actor_loss = (window.loss / (ret_rms.var + 1e-5).sqrt().float()).mean()
        else:
            actor_loss = (window.loss / cfg.horizon).mean()
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), cfg.actor_grad_clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteError(f"PWM actor gradient norm is {float(grad_norm)} at env step {run.env_steps}")
        actor_opt.step()

        targets = critic_targets(window, cfg)
        critic_loss = train_critics(critics, critic_opt, window.latents, targets, cfg)

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
        run.log(
            {
                "loss/actor": actor_loss.detach(),
                "loss/critic": critic_loss,
                "grad_norm/actor": grad_norm,
                "pwm/imagined_return": window.returns.mean(),
                "pwm/model_reward": window.rewards.mean(),
                "pwm/value": window.next_values.mean(),
                "pwm/log_std": actor.log_std.detach().clamp_min(LOG_STD_MIN).mean(),
                "pwm/epoch": epoch,
                **wm_metrics,
            }
        )
        run.end_iteration(policy, state_fn)
    return policy


ALGORITHM = Algorithm(
    name="pwm",
    config=PWMConfig,
    train=train,
    description="PWM: first-order policy gradients through a pretrained world model (Georgiev et al. 2024)",
    prepare=prepare,
)
