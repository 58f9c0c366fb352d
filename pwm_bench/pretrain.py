"""World-model pretraining on an episode dataset (``pwm-bench pretrain-wm``).

Each step samples ``batch_size`` sub-trajectories of ``horizon + 1`` observations from the training
episodes and minimises :func:`~pwm_bench.world_model.world_model_loss` (Adam, gradient-norm clip).
A held-out split of whole episodes measures generalisation every ``eval_every`` steps.

Output folder ``<root>/world_models/<name>/``::

    config.yaml     dataset, pretraining config, world-model config, sizes
    metrics.csv     step, wall_time, train/{consistency,reward}, heldout/{consistency,reward}
    summary.json    status, steps, final losses, parameter count
    model.pt        latest checkpoint (model, optimiser, step, RNG, metrics rows); ``--resume`` continues it

Everything is written atomically; an interrupted pretraining resumes from its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from pwm_bench.config import neutral, to_dict
from pwm_bench.datasets import EpisodeDataset, MultiTaskDataset
from pwm_bench.errors import NonFiniteError, RunInterrupted, UsageError, unknown_choice
from pwm_bench.nn import adam
from pwm_bench.progress import Reporter
from pwm_bench.signals import stop_signals_to
from pwm_bench.store import (
    DEFAULT_ROOT,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    read_torch,
)
from pwm_bench.world_model import WorldModel, WorldModelConfig, model_config, parameter_count, world_model_loss

log = logging.getLogger(__name__)

REFERENCE_REWARD_CLIP = 5.0
"""PWM's reference clamps normalised rewards to ±5 (``reward_norm='standard'``)."""


@dataclasses.dataclass
class PretrainConfig:
    """World-model pretraining settings (PWM's single-task defaults)."""

    steps: int = 100_000
    """Gradient steps."""
    batch_size: int = 256
    """Sub-trajectories per step."""
    horizon: int = 16
    """Model rollout length H (windows hold H + 1 observations)."""
    lr: float = 3e-4
    """Adam learning rate."""
    grad_clip: float = 20.0
    """Gradient-norm clip."""
    rho: float = 0.99
    """Per-step loss weight base ρ."""
    consistency_coef: float = 1.0
    """Weight of the latent consistency loss (PWM: 1, TD-MPC2: 20)."""
    reward_coef: float | None = None
    """Weight of the reward loss; None is PWM's reference weighting 1/horizon (its reward term is a
    mean over the steps, the consistency term a sum; TD-MPC2: 0.1)."""
    reward_norm: Literal["scale", "standard", "none"] = "standard"
    """Reward units of a scalar reward head, from the training split: 'standard' subtracts the mean,
    divides by the std and clamps to ±5 (the reference's normaliser, PWM's default); 'scale' only
    divides by the std (a positive rescaling: every policy keeps its rank, and termination, which
    ends the return at 0, keeps its meaning); 'none' keeps env units."""
    reward_clip: float | None = None
    """Clamp of the reward units (±reward_clip); None: ±5 for 'standard', no clamp otherwise."""
    holdout: float = 0.05
    """Fraction of episodes held out for evaluation."""
    eval_every: int = 1_000
    """Held-out evaluation, metrics row and checkpoint every this many steps."""
    eval_batches: int = 8
    """Batches per held-out evaluation."""
    seed: int = 0
    """Seed of the split, the sampling and the initialisation."""
    windows: Literal["full", "partial"] = neutral("full")
    """'full': windows lie inside one episode (the reference's slice sampler; an episode's end is
    learned at the window's last step only); 'partial': every transition starts a window, and a
    window stops at its episode's end (masked after it), so an end is learned at every depth."""

    def reward_weight(self) -> float:
        """The reward loss's weight (``reward_coef``, or 1/horizon)."""
        return 1.0 / self.horizon if self.reward_coef is None else self.reward_coef

    def validate(self) -> None:
        if self.reward_norm not in ("scale", "standard", "none"):
            raise unknown_choice("pretraining reward_norm", self.reward_norm, ["scale", "standard", "none"])
        if self.reward_clip is not None and not self.reward_clip > 0:
            raise UsageError(f"pretraining 'reward_clip' must be positive, got {self.reward_clip}")
        for name in ("steps", "batch_size", "horizon", "lr", "grad_clip", "eval_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise UsageError(f"pretraining '{name}' must be positive, got {getattr(self, name)}")
        if self.windows not in ("full", "partial"):
            raise unknown_choice("pretraining windows", self.windows, ["full", "partial"])
        if not 0.0 <= self.holdout < 1.0:
            raise UsageError(f"pretraining 'holdout' must be in [0, 1), got {self.holdout}")


def _losses(model: WorldModel, ds: EpisodeDataset | MultiTaskDataset, cfg: PretrainConfig, gen: torch.Generator) -> Any:
    b = ds.sample(cfg.batch_size, cfg.horizon, generator=gen, partial=cfg.windows == "partial")
    task = b.task if model.cfg.task_dim > 0 else None
    return world_model_loss(
        model,
        b.obs,
        b.action,
        b.reward,
        rho=cfg.rho,
        consistency_coef=cfg.consistency_coef,
        reward_coef=cfg.reward_weight(),
        task=task,
        terminated=b.terminated,
        mask=b.mask,
    )


def reward_stats(
    ds: EpisodeDataset | MultiTaskDataset, norm: str, clip: float | None = None
) -> tuple[float, float, float]:
    """``(shift, scale, clip)`` of the reward units for ``norm`` ('scale', 'standard' or 'none') over ``ds``'s rewards.

    Unless ``clip`` is given, 'standard' clamps to ±5 (PWM's reference) and the others do not clamp,
    which would flatten the reward where it lies beyond the clip (a point mass far from its goal, a
    hopper falling).
    """
    if clip is not None:
        shift, scale, _ = reward_stats(ds, norm)
        return shift, scale, float(clip)
    if norm == "none":
        return 0.0, 1.0, math.inf
    parts = ds.parts if isinstance(ds, MultiTaskDataset) else [ds]
    r = torch.cat([p.reward.double().flatten() for p in parts])
    std = float(r.std(unbiased=False)) if r.numel() > 1 else 0.0
    scale = std if std > 1e-8 else 1.0
    if norm == "standard":
        return float(r.mean()), scale, REFERENCE_REWARD_CLIP
    return 0.0, scale, math.inf


def pretrain_world_model(
    dataset: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    cfg: PretrainConfig | None = None,
    wm_cfg: WorldModelConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    reporter: Reporter | None = None,
    env: str | None = None,
) -> dict[str, Any]:
    """Pretrain a world model on ``dataset`` into ``out_dir``; returns the summary.

    ``dataset`` is one dataset folder, or a sequence of them (one per task, in task-id order) for a
    multi-task model: observations and actions are zero-padded to the largest sizes, and ``wm_cfg``
    must have a task embedding (``task_dim > 0``) with ``num_tasks`` equal to the number of datasets.

    With ``resume=True`` an existing ``out_dir`` continues from its checkpoint (its stored configs
    win; ``cfg.steps`` may raise the step budget).
    """
    out = Path(out_dir)
    cfg = cfg or PretrainConfig()
    cfg.validate()
    reporter = reporter or Reporter()
    ckpt_path = out / "model.pt"
    state: dict[str, Any] | None = None
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise UsageError(f"{out} already exists; pass --resume to continue it or choose another --name")
        if ckpt_path.exists():
            state = _read_model_checkpoint(ckpt_path)
            steps = cfg.steps
            cfg = PretrainConfig(**state["pretrain_config"])
            cfg.steps = max(cfg.steps, steps)
            wm_cfg = WorldModelConfig(**state["wm_config"])
    multi = not isinstance(dataset, str | Path)
    ds: Any = (
        MultiTaskDataset([Path(p) for p in dataset], device=device, env=env or "mt")
        if multi
        else EpisodeDataset(dataset, device=device)
    )
    train, held = ds.split(cfg.holdout, seed=cfg.seed)
    if held.num_episodes == 0:
        log.warning("dataset has one episode: held-out losses use the training episode")
        held = train
    wm_cfg = wm_cfg or model_config("pwm")
    if multi and (wm_cfg.task_dim <= 0 or wm_cfg.num_tasks != ds.num_tasks):
        raise UsageError(
            f"a world model for {ds.num_tasks} task datasets needs task_dim > 0 and num_tasks = {ds.num_tasks} "
            f"(got task_dim {wm_cfg.task_dim}, num_tasks {wm_cfg.num_tasks})"
        )
    torch.manual_seed(cfg.seed)
    model = WorldModel(ds.manifest["obs_dim"], ds.manifest["act_dim"], wm_cfg).to(device)
    model.set_reward_stats(*reward_stats(train, cfg.reward_norm, cfg.reward_clip))
    optim = adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_gen_seed = cfg.seed + 1
    rows: list[dict[str, float]] = []
    step, wall0 = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        gen.set_state(state["generator"])
        rows, step, wall0 = state["rows"], state["step"], state["wall_time"]
        log.info("resuming world-model pretraining at step %d of %d", step, cfg.steps)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(
        out / "config.yaml",
        {
            "dataset": [str(p) for p in dataset] if multi else str(dataset),
            "env": ds.manifest["env"],
            "pretrain": dataclasses.asdict(cfg),
            "world_model": to_dict(wm_cfg),
            "parameters": parameter_count(model),
            "train_episodes": train.num_episodes,
            "heldout_episodes": held.num_episodes,
        },
    )

    def save(status: str) -> dict[str, Any]:
        buf = io.BytesIO()
        torch.save(
            {
                "model": model.state_dict(),
                "optim": optim.state_dict(),
                "generator": gen.get_state(),
                "rows": rows,
                "step": step,
                "wall_time": wall0 + time.monotonic() - t0,
                "pretrain_config": dataclasses.asdict(cfg),
                "wm_config": to_dict(wm_cfg),
                "obs_dim": ds.manifest["obs_dim"],
                "act_dim": ds.manifest["act_dim"],
                "env": ds.manifest["env"],
            },
            buf,
        )
        data = buf.getvalue()
        atomic_save(ckpt_path, lambda fh: fh.write(data))
        if rows:
            cols = list(rows[0])
            text = ",".join(cols) + "\n" + "".join(",".join(f"{r[c]:.6g}" for c in cols) + "\n" for r in rows)
            atomic_write_text(out / "metrics.csv", text)
        summary = {
            "status": status,
            "step": step,
            "steps": cfg.steps,
            "wall_time": wall0 + time.monotonic() - t0,
            "parameters": parameter_count(model),
            **({k: v for k, v in rows[-1].items() if "/" in k} if rows else {}),
        }
        atomic_write_json(out / "summary.json", summary)
        return summary

    t0 = time.monotonic()
    sums = {"consistency": 0.0, "reward": 0.0}
    n = 0
    summary: dict[str, Any] = {}
    stop = _StopFlag()
    with reporter.phase(f"world model on {ds.manifest['env']}", cfg.steps) as advance, stop.installed():
        advance(step)
        try:
            while step < cfg.steps:
                if stop.requested:
                    # between steps: the model, the generator and the rows agree, so nothing is lost
                    summary = save("interrupted")
                    log.warning("interrupted at step %d; continue with --resume", step)
                    raise RunInterrupted(f"world-model pretraining stopped at step {step}")
                model.train()
                loss = _losses(model, train, cfg, gen)
                if not torch.isfinite(loss.total):
                    raise NonFiniteError(f"world-model loss is {float(loss.total.detach())} at step {step}")
                optim.zero_grad(set_to_none=True)
                loss.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optim.step()
                step += 1
                sums["consistency"] += float(loss.consistency)
                sums["reward"] += float(loss.reward)
                n += 1
                advance(1)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    model.eval()
                    egen = torch.Generator().manual_seed(eval_gen_seed)
                    with torch.no_grad():
                        held_losses = [_losses(model, held, cfg, egen) for _ in range(cfg.eval_batches)]
                    rows.append(
                        {
                            "step": float(step),
                            "wall_time": wall0 + time.monotonic() - t0,
                            "train/consistency": sums["consistency"] / n,
                            "train/reward": sums["reward"] / n,
                            "heldout/consistency": sum(float(h.consistency) for h in held_losses) / len(held_losses),
                            "heldout/reward": sum(float(h.reward) for h in held_losses) / len(held_losses),
                        }
                    )
                    log.info(
                        "step %d: train consistency %.4g reward %.4g | held-out consistency %.4g reward %.4g",
                        step,
                        rows[-1]["train/consistency"],
                        rows[-1]["train/reward"],
                        rows[-1]["heldout/consistency"],
                        rows[-1]["heldout/reward"],
                    )
                    sums, n = {"consistency": 0.0, "reward": 0.0}, 0
                    summary = save("running" if step < cfg.steps else "completed")
        except KeyboardInterrupt:
            # a second Ctrl-C: the checkpoint of the last evaluation stays what --resume continues
            stop.abortable = False
            _mark_interrupted(out / "summary.json")
            log.warning("aborted; --resume continues from the last saved step")
            raise
    return summary or save("completed")


class _StopFlag:
    """SIGINT/SIGTERM during pretraining: the first stops it after the current step (saved, then
    :class:`RunInterrupted`); a second SIGINT raises ``KeyboardInterrupt`` once."""

    def __init__(self) -> None:
        self.requested, self.abortable = False, True

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT and self.abortable:
            self.abortable = False
            raise KeyboardInterrupt
        if not self.requested:
            name = signal.Signals(signum).name
            log.warning("%s received: saving the model after this step (Ctrl-C again to abort)", name)
        self.requested = True

    def installed(self) -> contextlib.AbstractContextManager[Any]:
        return stop_signals_to(self)


def _mark_interrupted(path: Path) -> None:
    """Set ``status: interrupted`` in a pretraining ``summary.json`` (if there is one)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(summary, dict) and summary.get("status") != "completed":
        summary["status"] = "interrupted"
        atomic_write_json(path, summary)


def _read_model_checkpoint(path: Path) -> dict[str, Any]:
    """A pretraining ``model.pt`` (raises :class:`DamagedFileError` naming it when unreadable)."""
    return read_torch(path, ("model", "wm_config", "obs_dim", "act_dim", "rows", "step"), "world-model checkpoint")


def load_world_model(path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
    """The model of a pretraining folder (or its ``model.pt``), in eval mode."""
    p = Path(path)
    file = p / "model.pt" if p.is_dir() else p
    if not file.exists():
        raise UsageError(f"{path}: no world-model checkpoint (model.pt)")
    state = _read_model_checkpoint(file)
    model = WorldModel(state["obs_dim"], state["act_dim"], WorldModelConfig(**state["wm_config"]))
    # models saved before reward units existed predict env rewards: keep shift 0, scale 1
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) - {"reward_shift", "reward_scale", "reward_clip"}:
        model.load_state_dict(state["model"])  # raises with the full list
    return model.to(device).eval()


def world_models_root(root: str | Path = DEFAULT_ROOT) -> Path:
    """Folder that holds pretrained world models of a results root."""
    return Path(root) / "world_models"
