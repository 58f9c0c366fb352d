"""PWM's configuration: every hyperparameter, its presets, its validation."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from pwm_bench.config import TrainConfig, neutral
from pwm_bench.errors import UsageError, unknown_choice
from pwm_bench.world_model import MODEL_SIZES, VARIANTS, sized_config

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
    """Initial log std of the actor (clamped in place to at least LOG_STD_MIN after every step)."""
    action_bound: float = 2.0
    """Pre-tanh |mean| beyond which action_bound_coef penalises the actor (tanh(2) = 0.96)."""
    action_bound_coef: float = 0.0
    """Weight of ``mean(relu(|μ| - action_bound)²)`` over the imagined latents in the actor loss; keeps
    a gradient on actions that would otherwise saturate for good (0: off, as in the reference)."""
    value_gradient: bool = True
    """Backpropagate the actor loss through the critics' bootstrap values (the reference); False
    treats them as constants, so the actor follows the H-step reward gradient only."""
    detach_actor_input: bool = neutral(True)
    """Detach the latent the actor reads in the imagined window (the reference's ``detach: True``):
    the actor's gradient then flows only through the actions' effect on the model's rewards, latents
    and bootstraps, as if later actions did not respond to the states earlier ones lead to (an
    open-loop gradient). False gives the gradient of the window's return as the method writes it,
    through the policy's response ``π(z_t)`` to every imagined latent as well (closed loop, as SHAC
    differentiates the simulator)."""
    dynamics: Literal["model", "simulator"] = "model"
    """Online: 'model' imagines through the world model (PWM); 'simulator' rolls the same actor and
    critics through the differentiable env instead (a control that separates optimiser error from
    model error; the model's encoder is kept as a fixed feature map and not fine-tuned)."""
    real_actions: Literal["imagined", "closed_loop"] = neutral("imagined")
    """Online, model dynamics: what the real worlds execute while the window is imagined.
    'imagined' (the reference): the actions the actor takes on the imagined latents, so each world
    runs the policy open loop on the model's prediction of its state for up to ``horizon`` steps.
    'closed_loop': the actor on the encoding of each world's real observation, with the same
    exploration noise; the data then come from the policy that is evaluated."""
    grad_check_every: int = 50
    """Online, differentiable envs: every this many epochs, log the model-vs-simulator gradient cosine
    on the policy's own actions from all live worlds (pwm/grad_cosine*; 0: never)."""
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
    wm_variant: str = neutral("simnorm")
    """Latent heads of a pipeline-pretrained model: 'simnorm' (the reference), 'mish' (TD-MPC2's
    architecture without SimNorm) or 'relu' (plain ReLU MLPs) — the paper's world-model-type ablation."""
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
    """World-model Adam learning rate (pretraining and fine-tuning)."""
    wm_rho: float = 0.99
    """Per-step weight base of the world-model losses."""
    wm_task_dim: int = 64
    """Multi-task: task-embedding size of the world model (the reference's MT30 model: 64)."""
    wm_num_bins: int | None = None
    """Reward bins of a pipeline-pretrained model (None: the size's; multi-task: 101, two-hot as in the reference)."""
    wm_termination: bool = False
    """Give the pretrained model a termination head and weight imagined rewards and bootstraps by the
    predicted probability of still being alive (not in the reference, whose imagination never ends)."""
    wm_windows: Literal["full", "partial"] = neutral("full")
    """Windows the model trains on (pretraining and fine-tuning): 'full' lie inside one episode (the
    reference), 'partial' may stop at their episode's end, so that episode ends (a falling hopper)
    are learned at every rollout depth (see PretrainConfig.windows)."""
    wm_consistency_coef: float = 1.0
    """Weight of the latent consistency loss against the reward loss (PWM: 1, TD-MPC2: 20)."""
    wm_reward_coef: float | None = None
    """Weight of the reward loss (pretraining and fine-tuning); None is the reference's 1/horizon."""
    wm_reward_norm: Literal["scale", "standard", "none"] = "standard"
    """Reward units of the pretrained model (see PretrainConfig.reward_norm): 'standard' centres on the
    pretraining data's mean, divides by its std and clamps to ±5 (the reference's units, fixed here;
    on the hopper at `cpu` its 3 seeds ended at 218 ± 92 against 100 ± 59 with 'scale'), 'scale' only
    divides by the std (this project's earlier default), 'none' keeps env units."""
    wm_reward_clip: float | None = None
    """Clamp of the model's reward units (PretrainConfig.reward_clip); None: ±5 for 'standard' only."""
    finetune_wm: bool = True
    """Online: fine-tune the model on the collected data."""
    wm_iterations: int = 8
    """Online: model gradient steps per epoch."""
    finetune_encoder: bool = True
    """Online: fine-tune the encoder too (the reference trains every model parameter; False keeps the
    latent space that the actor and critics see fixed)."""
    wm_lr_schedule: Literal["constant", "linear"] = "constant"
    """Online fine-tuning LR: 'constant' at wm_lr (the data keep changing), or 'linear' to lr_min over
    the run (the reference, whose decay spans 15k epochs)."""
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
    collect_default_env: bool = neutral(False)
    """Collect the pretraining data on the env without the run's ``--set env.*`` options, so that a
    run on a modified env (a stiffer contact) starts from the default env's world model; online
    fine-tuning then trains it on the modified env. False: data from the run's own env."""

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
                "grad_check_every": 4,
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
        if self.wm_reward_clip is not None and not self.wm_reward_clip > 0:
            raise UsageError(f"config 'wm_reward_clip' must be positive, got {self.wm_reward_clip}")
        if self.wm_windows not in ("full", "partial"):
            raise unknown_choice("world-model windows (wm_windows)", self.wm_windows, ["full", "partial"])
        if self.wm_size not in MODEL_SIZES:
            raise unknown_choice("world-model size", self.wm_size, list(MODEL_SIZES))
        if self.wm_variant not in VARIANTS:
            raise unknown_choice("world-model variant (wm_variant)", self.wm_variant, VARIANTS)
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise UsageError("config 'gamma' must be in (0, 1] and 'lam' in [0, 1]")
        if self.dynamics == "simulator" and self.mode != "online":
            raise UsageError("dynamics=simulator rolls out in the live env: it needs mode=online")
        if self.grad_check_every < 0:
            raise UsageError(f"config 'grad_check_every' must be >= 0, got {self.grad_check_every}")
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
            variant=self.wm_variant,
            **extra,
        )
