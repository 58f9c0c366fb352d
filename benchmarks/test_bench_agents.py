"""pytest-benchmark suite: per-action latency of TD-MPC2 (planning) and PWM (policy), TD-MPC2 updates.

Run it with::

    python -m pytest benchmarks/test_bench_agents.py -q
    PWM_BENCH_DEVICE=cuda python -m pytest benchmarks/test_bench_agents.py -q

For the ``cpu`` preset's model and the reference 5M model (hopper sizes: 11 observations,
3 actions), it times one MPPI planning call for a batch of 1 and of 64 worlds (planning is batched
over worlds) and one update (model + policy prior, batch 256, H = 3). ``extra_info`` records the
latency per call and per action, and updates per second. The 5M model on a CPU takes about a
minute per 64-world plan, so that case runs a single round. PWM acts with one encoder and one
actor forward pass (no planning); its latency is timed for the `cpu` preset's model and the paper's
single-task model with the same batch sizes, which is the paper's inference-time comparison.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from pwm_bench.baselines.tdmpc2 import TDMPC2Agent, TDMPC2Config
from pwm_bench.pwm import LatentActor, PWMConfig, PWMPolicy
from pwm_bench.world_model import WorldModel

DEVICE = os.environ.get("PWM_BENCH_DEVICE", "cpu")
OBS, ACT = 11, 3
PRESETS = ["cpu", "paper"]


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _agent(preset: str) -> TDMPC2Agent:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    cfg = TDMPC2Config.from_preset(preset, "hopper")
    return TDMPC2Agent(OBS, ACT, cfg, discount=0.99).to(DEVICE)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("preset", PRESETS)
def test_plan_latency(benchmark: Any, preset: str, batch: int) -> None:
    agent = _agent(preset)
    obs = torch.randn(batch, OBS, device=DEVICE)
    prev = None

    def plan() -> None:
        nonlocal prev
        _, prev = agent.plan(obs, prev, explore=False)
        _sync()

    plan()  # warm-up (allocations, kernels)
    slow = preset == "paper" and batch > 1 and not DEVICE.startswith("cuda")
    benchmark.pedantic(plan, rounds=1 if slow else 5, iterations=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        preset=preset,
        device=DEVICE,
        worlds=batch,
        samples=agent.mppi_cfg.num_samples,
        iterations=agent.mppi_cfg.iterations,
        ms_per_call=1000 * mean,
        ms_per_action=1000 * mean / batch,
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_update(benchmark: Any, preset: str) -> None:
    agent = _agent(preset)
    h, b = agent.cfg.horizon, agent.cfg.batch_size
    obs = torch.randn(h + 1, b, OBS, device=DEVICE)
    action = torch.rand(h, b, ACT, device=DEVICE) * 2 - 1
    reward = torch.randn(h, b, device=DEVICE)
    term = torch.zeros(h, b, device=DEVICE)

    def update() -> None:
        agent.update(obs, action, reward, term)
        _sync()

    update()
    benchmark.pedantic(update, rounds=10, iterations=1)
    benchmark.extra_info.update(preset=preset, device=DEVICE, batch=b, updates_per_s=1 / benchmark.stats.stats.mean)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("preset", PRESETS)
def test_pwm_act_latency(benchmark: Any, preset: str, batch: int) -> None:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    cfg = PWMConfig.from_preset(preset, "hopper")
    wm = WorldModel(OBS, ACT, cfg.world_model_config()).to(DEVICE).eval()
    actor = LatentActor(wm.cfg.latent_dim, ACT, cfg.actor_hidden).to(DEVICE)
    policy = PWMPolicy(wm, actor)
    obs = torch.randn(batch, OBS, device=DEVICE)

    def act() -> None:
        policy.act(obs)
        _sync()

    act()
    benchmark.pedantic(act, rounds=50, iterations=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        preset=preset, device=DEVICE, worlds=batch, ms_per_call=1000 * mean, ms_per_action=1000 * mean / batch
    )


def _pwm_parts(preset: str) -> tuple[PWMConfig, WorldModel]:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    cfg = PWMConfig.from_preset(preset, "hopper")
    return cfg, WorldModel(OBS, ACT, cfg.world_model_config()).to(DEVICE)


@pytest.mark.parametrize("preset", PRESETS)
def test_pwm_world_model_step(benchmark: Any, preset: str) -> None:
    """One world-model gradient step (pretraining or fine-tuning): ``wm_batch_size`` windows of H + 1."""
    from pwm_bench.pwm.single_task import pwm_model_loss

    cfg, wm = _pwm_parts(preset)
    h, b = cfg.horizon, cfg.wm_batch_size
    obs = torch.randn(h + 1, b, OBS, device=DEVICE)
    action = torch.rand(h, b, ACT, device=DEVICE) * 2 - 1
    reward, term = torch.randn(h, b, device=DEVICE), torch.zeros(h, b, device=DEVICE)
    optim = torch.optim.Adam(wm.parameters(), lr=cfg.wm_lr)

    def step() -> None:
        loss = pwm_model_loss(wm, cfg, obs, action, reward, term)
        optim.zero_grad(set_to_none=True)
        loss.total.backward()
        optim.step()
        _sync()

    step()
    benchmark.pedantic(step, rounds=10, iterations=1)
    benchmark.extra_info.update(preset=preset, device=DEVICE, batch=b, steps_per_s=1 / benchmark.stats.stats.mean)


@pytest.mark.parametrize("preset", PRESETS)
def test_pwm_actor_critic_epoch(benchmark: Any, preset: str) -> None:
    """One policy epoch without the env: an H-step imagined window from ``num_envs`` latents, the
    actor step through the model and the 8 × 4 critic steps."""
    from pwm_bench.nn import RunningMeanStd
    from pwm_bench.pwm import CriticEnsemble, actor_critic_update, imagine

    cfg, wm = _pwm_parts(preset)
    wm.requires_grad_(False)
    latent = wm.cfg.latent_dim
    actor = LatentActor(latent, ACT, cfg.actor_hidden).to(DEVICE)
    critics = CriticEnsemble(latent, cfg.critic_hidden, cfg.num_critics).to(DEVICE)
    opts = [torch.optim.Adam(m.parameters(), lr=5e-4, betas=cfg.betas) for m in (actor, critics)]
    rms = RunningMeanStd(()).to(DEVICE)
    z0 = wm.encode(torch.randn(cfg.num_envs, OBS, device=DEVICE))

    def epoch() -> None:
        critics.requires_grad_(False)
        window, _ = imagine(wm, actor, critics, z0, cfg)
        critics.requires_grad_(True)
        actor_critic_update(window, actor, critics, *opts, rms, cfg)
        _sync()

    epoch()
    benchmark.pedantic(epoch, rounds=5, iterations=1)
    benchmark.extra_info.update(
        preset=preset, device=DEVICE, worlds=cfg.num_envs, s_per_epoch=benchmark.stats.stats.mean
    )
