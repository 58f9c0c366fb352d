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

Layout: :mod:`~pwm_bench.pwm.config` (hyperparameters and presets), :mod:`~pwm_bench.pwm.networks`
(actor, critics, policies), :mod:`~pwm_bench.pwm.imagination` (rollouts, actor loss, critic
targets), :mod:`~pwm_bench.pwm.pipeline` (cached data and model stages),
:mod:`~pwm_bench.pwm.single_task` and :mod:`~pwm_bench.pwm.multitask` (the training loops).
"""

from __future__ import annotations

from pwm_bench.algos import Algorithm
from pwm_bench.envs.base import VecEnv
from pwm_bench.pwm.config import LOG_STD_MIN, PWMConfig
from pwm_bench.pwm.imagination import Imagination, actor_critic_update, critic_targets, imagine, train_critics
from pwm_bench.pwm.multitask import iqm, normalized_score, train_multitask
from pwm_bench.pwm.networks import CriticEnsemble, LatentActor, MultiTaskPolicy, PWMPolicy
from pwm_bench.pwm.pipeline import prepare, resolve_artefact
from pwm_bench.pwm.single_task import train_single_task
from pwm_bench.run import Run


def train(env: VecEnv, cfg: PWMConfig, run: Run) -> PWMPolicy | MultiTaskPolicy:
    """Train PWM within the budget: one policy per task for a task set (``cfg.datasets``), else one."""
    if cfg.datasets:
        return train_multitask(env, cfg, run)
    return train_single_task(env, cfg, run)


ALGORITHM = Algorithm(
    name="pwm",
    config=PWMConfig,
    train=train,
    description="PWM: first-order policy gradients through a pretrained world model (Georgiev et al. 2024)",
    prepare=prepare,
    wants_gradients=lambda cfg: cfg.mode == "online" and (cfg.dynamics == "simulator" or cfg.grad_check_every > 0),
)

__all__ = [
    "ALGORITHM",
    "LOG_STD_MIN",
    "CriticEnsemble",
    "Imagination",
    "LatentActor",
    "MultiTaskPolicy",
    "PWMConfig",
    "PWMPolicy",
    "actor_critic_update",
    "critic_targets",
    "imagine",
    "iqm",
    "normalized_score",
    "prepare",
    "resolve_artefact",
    "train",
    "train_critics",
    "train_multitask",
    "train_single_task",
]
