"""Throughput of PWM's and TD-MPC2's learning steps against the same run's matmul roofline (``pwm-bench bench-wm``).

Three stages of a PWM epoch are timed on random data of an env's sizes, with the preset's networks:

- ``model step``: one world-model training step (loss over ``H``-step windows of ``wm_batch_size``,
  backward, gradient clip, Adam);
- ``actor update``: one ``H``-step imagined rollout from ``num_envs`` start latents and the actor's
  step through it (model and critics frozen, gradients through their activations);
- ``critic passes``: the critics' ``critic_iterations × critic_batches`` minibatch steps on the
  window's latents.

:func:`bench_tdmpc2` times TD-MPC2's three costs the same way: ``plan`` (one MPPI call for the
``num_envs`` training worlds, exploration noise on), ``plan (eval)`` (one call for the
``eval_episodes`` evaluation worlds, the per-step cost of an evaluation) and ``update`` (one model
update and one policy-prior update on ``batch_size`` windows).

FLOPs per stage come from :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and
convolutions, forward and backward), so GFLOP/s is comparable with the reference: a square fp32
matmul (``2 n^3`` FLOPs) timed in the same process, which is about the best these cores do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from pwm_bench.bench import _sync


@dataclasses.dataclass
class StageTiming:
    """One timed stage: ``ms`` per call (median of the repeats), ``gflop`` per call and ``gflops``."""

    stage: str
    ms: float
    gflop: float
    gflops: float
    roofline_share: float
    """``gflops`` over the same run's matmul GFLOP/s."""


@dataclasses.dataclass
class ModelBenchResult:
    """Timings of one preset: its model's size and batch, the matmul reference and every stage."""

    algo: str
    preset: str
    env: str
    device: str
    threads: int
    parameters: int
    batch: int
    horizon: int
    worlds: int
    matmul_gflops: float
    matmul_n: int
    stages: list[StageTiming]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _median_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def _flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_gflops(device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of an ``n × n`` fp32 matmul on ``device`` (the median of ``repeats``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ms = _median_ms(lambda: torch.mm(a, b), device, repeats)
    return 2.0 * n**3 / (ms / 1000.0) / 1e9


def _time_stages(
    fns: tuple[tuple[str, Callable[[], Any]], ...], device: torch.device, repeats: int, gflops_ref: float
) -> list[StageTiming]:
    stages = []
    for name, fn in fns:
        flop = _flops(fn)
        ms = _median_ms(fn, device, repeats)
        rate = flop / (ms / 1000.0) / 1e9
        stages.append(StageTiming(name, ms, flop / 1e9, rate, rate / gflops_ref))
    return stages


def _bench(
    algo: str,
    preset: str,
    env: str,
    device: torch.device,
    model: torch.nn.Module,
    batch: int,
    horizon: int,
    worlds: int,
    fns: tuple[tuple[str, Callable[[], Any]], ...],
    repeats: int,
) -> ModelBenchResult:
    """Time ``fns`` against a matmul measured just before them and describe the setting."""
    gflops_ref = matmul_gflops(device)
    return ModelBenchResult(
        algo=algo,
        preset=preset,
        env=env,
        device=str(device),
        threads=torch.get_num_threads(),
        parameters=sum(p.numel() for p in model.parameters()),
        batch=batch,
        horizon=horizon,
        worlds=worlds,
        matmul_gflops=gflops_ref,
        matmul_n=1024,
        stages=_time_stages(fns, device, repeats, gflops_ref),
    )


def _env_sizes(env: str) -> tuple[int, int]:
    from pwm_bench.envs import make_env

    probe = make_env(env, 1, "cpu")
    try:
        return probe.obs_dim, probe.act_dim
    finally:
        probe.close()


def bench_models(
    preset: str = "cpu",
    env: str = "hopper",
    device: str = "cpu",
    repeats: int = 10,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> ModelBenchResult:
    """Time PWM's three learning stages for ``preset``'s networks on ``env``'s sizes (see module doc).

    ``overrides`` are PWM config fields (strings as on the command line, e.g. ``{"wm_batch_size": "256"}``).
    """
    from pwm_bench.nn import adam
    from pwm_bench.pwm import CriticEnsemble, LatentActor, PWMConfig
    from pwm_bench.pwm.imagination import imagine, train_critics
    from pwm_bench.pwm.single_task import pwm_model_loss
    from pwm_bench.world_model import WorldModel

    dev = torch.device(device)
    obs_dim, act_dim = _env_sizes(env)
    torch.manual_seed(seed)
    cfg = PWMConfig.from_preset(preset, env)
    if overrides:
        from pwm_bench.config import apply_overrides

        cfg = apply_overrides(cfg, overrides, what="pwm config key")
        cfg.validate()
    wm = WorldModel(obs_dim, act_dim, cfg.world_model_config()).to(dev)
    actor = LatentActor(wm.cfg.latent_dim, act_dim, cfg.actor_hidden, cfg.init_log_std).to(dev)
    critics = CriticEnsemble(wm.cfg.latent_dim, cfg.critic_hidden, cfg.num_critics).to(dev)
    wm_opt = adam(wm.parameters(), lr=cfg.wm_lr)
    actor_opt = adam(actor.parameters(), lr=cfg.actor_lr, betas=cfg.betas)
    critic_opt = adam(critics.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
    h, b, n = cfg.horizon, cfg.wm_batch_size, cfg.num_envs
    o = torch.randn(h + 1, b, obs_dim, device=dev)
    a = torch.rand(h, b, act_dim, device=dev) * 2 - 1
    r, d = torch.randn(h, b, device=dev), torch.zeros(h, b, device=dev)
    z0 = wm.encode(torch.randn(n, obs_dim, device=dev)).detach()

    def model_step() -> None:
        wm.requires_grad_(True)
        loss = pwm_model_loss(wm, cfg, o, a, r, d)
        wm_opt.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), 20.0)
        wm_opt.step()

    def actor_update() -> None:
        wm.requires_grad_(False)
        critics.requires_grad_(False)
        window, _ = imagine(wm, actor, critics, z0, cfg)
        critics.requires_grad_(True)
        # the actor's step alone: the critic passes are timed separately
        actor_opt.zero_grad(set_to_none=True)
        window.loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.actor_grad_clip)
        actor_opt.step()

    with torch.no_grad():
        latents = imagine(wm, actor, critics, z0, cfg)[0].latents
    targets = torch.randn(latents.shape[:-1], device=dev)

    def critic_passes() -> None:
        train_critics(critics, critic_opt, latents, targets, cfg)

    fns = (("model step", model_step), ("actor update", actor_update), ("critic passes", critic_passes))
    return _bench("pwm", preset, env, dev, wm, b, h, n, fns, repeats)


def bench_tdmpc2(
    preset: str = "cpu",
    env: str = "hopper",
    device: str = "cpu",
    repeats: int = 10,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> ModelBenchResult:
    """Time TD-MPC2's planning (training and evaluation worlds) and update for ``preset`` on ``env``'s sizes.

    ``overrides`` are TD-MPC2 config fields (strings as on the command line, e.g. ``{"num_samples": "128"}``).
    The agent's networks are freshly initialised and the windows random: the work per call is that of
    a run (planning does the same iterations whatever the values), not its numbers.
    """
    from pwm_bench.baselines.tdmpc2 import TDMPC2Agent, TDMPC2Config
    from pwm_bench.config import apply_overrides

    dev = torch.device(device)
    obs_dim, act_dim = _env_sizes(env)
    torch.manual_seed(seed)
    cfg = TDMPC2Config.from_preset(preset, env)
    if overrides:
        cfg = apply_overrides(cfg, overrides, what="tdmpc2 config key")
    cfg.validate()
    agent = TDMPC2Agent(obs_dim, act_dim, cfg, 0.99, None).to(dev)
    h, b = cfg.horizon, cfg.batch_size
    train_obs = torch.randn(cfg.num_envs, obs_dim, device=dev)
    eval_obs = torch.randn(cfg.eval_episodes, obs_dim, device=dev)
    o = torch.randn(h + 1, b, obs_dim, device=dev)
    a = torch.rand(h, b, act_dim, device=dev) * 2 - 1
    r, term = torch.randn(h, b, device=dev), torch.zeros(h, b, device=dev)

    fns = (
        (f"plan ({cfg.num_envs} worlds)", lambda: agent.act(train_obs, None, True)),
        (f"plan (eval, {cfg.eval_episodes} worlds)", lambda: agent.act(eval_obs, None, False)),
        ("update", lambda: agent.update(o, a, r, term)),
    )
    return _bench("tdmpc2", preset, env, dev, agent.model, b, h, cfg.num_envs, fns, repeats)
