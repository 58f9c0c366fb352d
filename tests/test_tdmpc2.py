"""TD-MPC2: discount heuristic, replay windows, MPPI, the update, learning and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from pwm_bench.baselines.tdmpc2 import (
    MPPIConfig,
    RunningScale,
    TDMPC2Agent,
    TDMPC2Config,
    TDMPC2Policy,
    discount_heuristic,
    mppi,
)
from pwm_bench.config import apply_overrides
from pwm_bench.errors import UsageError
from pwm_bench.replay import WindowReplay
from pwm_bench.runner import RunRequest, execute
from pwm_bench.world_model import WorldModel, WorldModelConfig, rho_weights, two_hot

from .conftest import run_inprocess
from .test_run import SignalAt

# a point-mass budget that learns in about two minutes on one core (zero actions score about -310, uniform
# random actions about -430; seeds 0/1/2 measured -182/-82/-79 at the end, -368/-375/-616 after 1000 steps)
TDMPC2_POINTMASS = {
    "total_steps": "3000",
    "num_envs": "4",
    "seed_steps": "400",
    "updates_per_env_step": "0.5",
    "latent_dim": "32",
    "mlp_dim": "64",
    "enc_dim": "64",
    "batch_size": "128",
    "num_samples": "128",
    "num_pi_trajs": "16",
    "num_elites": "16",
    "iterations": "3",
    "eval_every": "1000",
    "eval_episodes": "8",
}

TINY = {"model_size": "1M", "latent_dim": 16, "mlp_dim": 32, "enc_dim": 32, "num_q": 3, "batch_size": 32}


def test_discount_heuristic_matches_the_reference_values() -> None:
    assert discount_heuristic(500) == pytest.approx(0.99)  # DMControl
    assert discount_heuristic(100) == pytest.approx(0.95)  # Meta-World, clipped low
    assert discount_heuristic(1000) == pytest.approx(0.995)
    assert discount_heuristic(200) == pytest.approx(0.975)
    assert discount_heuristic(None) == pytest.approx(0.995)


def _fill_replay(replay: WindowReplay, steps: int, ends: dict[int, set[int]]) -> None:
    """Observations encode (world, step); ``ends[t]`` lists worlds whose episode ends at step t."""
    n = replay.n
    for t in range(steps):
        w = torch.arange(n, dtype=torch.float32)
        obs = torch.stack([w, torch.full((n,), float(t))], -1)
        nxt = torch.stack([w, torch.full((n,), t + 1.0)], -1)
        ended = torch.tensor([i in ends.get(t, set()) for i in range(n)])
        replay.add(obs, torch.full((n, 1), float(t)), torch.full((n,), float(t)), nxt, ended, ended)


@pytest.mark.parametrize("capacity", [3 * 40, 3 * 25])  # no wrap, and wrapped around
def test_replay_windows_never_cross_an_episode_end(capacity: int) -> None:
    replay = WindowReplay(capacity, 3, 2, 1, torch.device("cpu"))
    ends = {5: {0}, 6: {0}, 12: {1, 2}, 30: {0, 1}, 33: {2}}
    _fill_replay(replay, 40, ends)
    obs, action, reward, term = replay.sample(2000, 3)
    assert obs.shape == (4, 2000, 2) and action.shape == (3, 2000, 1) and reward.shape == term.shape == (3, 2000)
    world, step = obs[..., 0], obs[..., 1]
    assert (world == world[0]).all()  # one world per window
    assert (step[1:] - step[:-1] == 1).all()  # consecutive steps
    assert (action[..., 0] == step[:-1]).all() and (reward == step[:-1]).all()
    assert step[0].min() >= 40 - capacity // 3  # only rows still stored
    for t, worlds in ends.items():
        for w in worlds:  # an episode may end only at the window's last transition
            inside = (world[0] == w) & (step[0] <= t) & (step[0] + 2 > t)
            assert not inside.any()
    # the last transition of a window may be a terminal one
    assert term[-1].sum() > 0 and term[:-1].sum() == 0


def test_replay_state_round_trip() -> None:
    a = WindowReplay(60, 3, 2, 1, torch.device("cpu"))
    _fill_replay(a, 25, {3: {1}})
    b = WindowReplay(60, 3, 2, 1, torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    x = a.sample(64, 3)
    torch.manual_seed(0)
    y = b.sample(64, 3)
    assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


def test_mppi_beats_the_policy_prior_on_a_known_optimum() -> None:
    """Return ``-Σ_t |a_t - a*|²`` per world: the optimum is a* (different in each world)."""
    torch.manual_seed(0)
    n, h, a = 5, 3, 2
    target = torch.rand(n, 1, 1, a) * 1.6 - 0.8

    def value(actions: torch.Tensor) -> torch.Tensor:
        return -(actions - target).square().sum(dim=(-1, -2))

    # a poor prior: tight samples around 0
    prior = (0.1 * torch.randn(n, 24, h, a)).clamp(-1, 1)
    action, mean, std = mppi(value, prior, MPPIConfig(), num_worlds=n, horizon=h, act_dim=a)
    assert action.shape == (n, a) and mean.shape == std.shape == (n, h, a)
    err = (action - target[:, 0, 0]).norm(dim=-1)
    prior_err = (prior[:, :, 0] - target[:, :, 0]).norm(dim=-1).min(dim=1).values
    assert (err < 0.1).all() and (err < prior_err).all(), (err, prior_err)
    assert (mean - target[:, 0]).abs().max() < 0.05
    assert (std >= 0.05 - 1e-6).all() and (std <= 2.0).all()
    # exploration noise is the final std; without it the action is one of the elites' first actions
    noisy, _, _ = mppi(value, prior, MPPIConfig(), num_worlds=n, horizon=h, act_dim=a, explore=True)
    assert (noisy.abs() <= 1).all()


def test_mppi_keeps_the_policy_samples_and_warm_starts_from_the_shifted_mean() -> None:
    seen: list[torch.Tensor] = []

    def value(actions: torch.Tensor) -> torch.Tensor:
        seen.append(actions.clone())
        return -actions.square().sum(dim=(-1, -2))

    prior = torch.full((2, 4, 3, 1), 0.5)
    prev = torch.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1).repeat(2, 1, 1)
    cfg = MPPIConfig(iterations=2, num_samples=4000, num_elites=8, max_std=0.05, min_std=0.05)
    mppi(value, prior, cfg, num_worlds=2, horizon=3, act_dim=1, prev_mean=prev)
    assert all(torch.equal(s[:, :4], prior) for s in seen)
    first = seen[0][:, 4:].mean(dim=1)[..., 0]  # sample mean of the first iteration
    assert torch.allclose(first, torch.tensor([0.2, 0.3, 0.0]).expand(2, 3), atol=0.01)


def test_running_scale_tracks_the_percentile_range_with_floor_one() -> None:
    scale = RunningScale(tau=0.5)
    scale.update(torch.linspace(0, 100, 1001))  # P95 - P5 = 90
    assert scale.value.item() == pytest.approx(0.5 * 1 + 0.5 * 90, rel=1e-4)
    scale.update(torch.zeros(100))  # range 0 -> floor 1
    assert scale.value.item() == pytest.approx(0.5 * 45.5 + 0.5 * 1, rel=1e-4)
    assert scale(torch.tensor(23.25)).item() == pytest.approx(1.0, rel=1e-4)


def _agent(**over: object) -> TDMPC2Agent:
    cfg = apply_overrides(TDMPC2Config(), {**TINY, **over})
    cfg.validate()
    return TDMPC2Agent(5, 2, cfg, discount=0.9)


def test_scaled_entropy_is_minus_action_dims_times_the_gaussian_log_density() -> None:
    torch.manual_seed(0)
    agent = _agent()
    z = torch.rand(7, 16)
    torch.manual_seed(1)
    action, ent = agent.sample_policy(z)
    torch.manual_seed(1)
    mean, log_std = agent.model.policy_dist(z)
    u = mean + torch.randn_like(mean) * log_std.exp()
    log_n = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    assert torch.allclose(action, torch.tanh(u), atol=1e-6)
    assert torch.allclose(ent, -2 * log_n, atol=1e-4)


def test_update_fits_a_fixed_batch_and_moves_targets_by_tau() -> None:
    torch.manual_seed(0)
    agent = _agent(lr=3e-3)
    h, b = 3, 32
    obs = torch.randn(h + 1, b, 5)
    action = torch.rand(h, b, 2) * 2 - 1
    reward = obs[:-1, :, 0] + action[..., 0]
    term = torch.zeros(h, b)
    term[-1, :4] = 1.0
    q_before = [p.clone() for p in agent.model.qs.parameters()]
    tq_before = [p.clone() for p in agent.target_qs.parameters()]
    first = agent.update(obs, action, reward, term)
    for p, tp, tp0 in zip(agent.model.qs.parameters(), agent.target_qs.parameters(), tq_before, strict=True):
        # target <- target + tau (online - target), with the online weights after this update
        assert torch.allclose(tp, tp0 + 0.01 * (p - tp0), atol=1e-7)
    # zero-initialised last layers: the first step moves (at least) the heads' output layers
    assert any(not torch.equal(p, p0) for p, p0 in zip(agent.model.qs.parameters(), q_before, strict=True))
    for _ in range(60):
        last = agent.update(obs, action, reward, term)
    # soft cross-entropy against two-hot targets bottoms out at their entropy: compare the excess (KL)
    target = two_hot(reward, 101, -10.0, 10.0)
    floor = (rho_weights(h, 0.5) * -(target * target.clamp_min(1e-12).log()).sum(-1).mean(1)).sum() / h
    assert last["loss/reward"] - floor < 0.5 * (first["loss/reward"] - floor)
    assert last["loss/termination"] < first["loss/termination"]
    assert all(torch.isfinite(v).all() for v in last.values())
    assert not agent.model.training and not agent.target_qs.training


def test_policy_update_does_not_change_the_q_functions() -> None:
    torch.manual_seed(0)
    agent = _agent()
    q_before = [p.clone() for p in agent.model.qs.parameters()]
    pi_before = [p.clone() for p in agent.model.pi.parameters()]
    agent._update_pi(torch.softmax(torch.randn(4, 8, 16), -1))
    assert all(torch.equal(p, p0) for p, p0 in zip(agent.model.qs.parameters(), q_before, strict=True))
    assert any(not torch.equal(p, p0) for p, p0 in zip(agent.model.pi.parameters(), pi_before, strict=True))
    assert all(p.requires_grad for p in agent.model.qs.parameters())


def test_batched_planning_and_policy_warm_start_bookkeeping() -> None:
    torch.manual_seed(0)
    agent = _agent(num_samples=32, num_pi_trajs=4, num_elites=4, iterations=2)
    policy = TDMPC2Policy(agent)
    obs = torch.randn(6, 5)
    action = policy.act(obs)
    assert action.shape == (6, 2) and (action.abs() <= 1).all()
    assert policy.prev_mean is not None and policy.prev_mean.shape == (6, 3, 2)
    policy.reset_episodes(torch.tensor([True, False, False, False, False, True]))
    assert (policy.prev_mean[[0, 5]] == 0).all()
    policy.reset_episodes(torch.ones(6, dtype=torch.bool))
    assert policy.prev_mean is None
    assert policy.act(torch.randn(1, 5)).shape == (1, 2)  # a different batch size starts fresh


def test_config_validation_names_the_bad_field() -> None:
    with pytest.raises(UsageError, match="num_pi_trajs"):
        apply_overrides(TDMPC2Config(), {"num_pi_trajs": 600}).validate()
    with pytest.raises(UsageError, match="pwm"):
        apply_overrides(TDMPC2Config(), {"model_size": "pwm"}).validate()
    with pytest.raises(UsageError, match="num_q"):
        apply_overrides(TDMPC2Config(), {"num_q": 1}).validate()


def _pwm_model(obs_dim: int = 5, termination: bool = False) -> WorldModel:
    """A small scalar-reward PWM model with non-trivial weights, predicting rewards as ``(r - 1) / 2``."""
    wm = WorldModel(
        obs_dim, 2, WorldModelConfig(latent_dim=16, enc_hidden=(32,), mlp_hidden=(32, 32), termination=termination)
    )
    with torch.no_grad():
        for p in wm.parameters():
            p.normal_(0.0, 0.3)
    wm.set_reward_stats(shift=1.0, scale=2.0)
    return wm


def _policy_only_agent(frozen: WorldModel, **over: object) -> TDMPC2Agent:
    cfg = apply_overrides(TDMPC2Config(), {**TINY, "policy_only": True, **over})
    cfg.validate()
    return TDMPC2Agent(5, 2, cfg, discount=0.9, frozen=frozen)


def test_policy_only_trains_the_qs_and_the_prior_on_a_frozen_model() -> None:
    torch.manual_seed(0)
    frozen = _pwm_model()
    frozen_before = {k: v.clone() for k, v in frozen.state_dict().items()}
    agent = _policy_only_agent(frozen, lr=3e-3)
    assert agent.model.cfg.latent_dim == 16 and agent.model.term_head is None
    own = {k: v.clone() for k, v in agent.model.state_dict().items()}
    h, b = 3, 32
    obs = torch.randn(h + 1, b, 5)
    action = torch.rand(h, b, 2) * 2 - 1
    reward = obs[:-1, :, 0] + action[..., 0]
    term = torch.zeros(h, b)
    first = agent.update(obs, action, reward, term)
    for _ in range(60):
        last = agent.update(obs, action, reward, term)
    assert "loss/consistency" not in last and "loss/reward" not in last
    assert last["loss/value"] < first["loss/value"]
    # the pretrained model is never trained, nor the agent's own encoder, dynamics and reward
    assert all(torch.equal(v, frozen_before[k]) for k, v in frozen.state_dict().items())
    after = agent.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in own.items() if not k.startswith(("qs.", "pi."))), "trained"
    assert any(not torch.equal(after[k], own[k]) for k in own if k.startswith("qs."))
    assert any(not torch.equal(after[k], own[k]) for k in own if k.startswith("pi."))
    assert not frozen.training and not agent.model.training


@pytest.mark.parametrize("termination", [False, True])
def test_policy_only_plans_with_the_frozen_models_rewards_in_env_units(termination: bool) -> None:
    torch.manual_seed(0)
    frozen = _pwm_model(termination=termination)
    with torch.no_grad():  # the model predicts 0.5 everywhere, i.e. an env reward of 0.5 * 2 + 1 = 2
        frozen.reward_head[-1].weight.zero_()
        frozen.reward_head[-1].bias.fill_(0.5)
        if termination:  # and, when it has the head, that every step ends the episode
            frozen.term_head[-1].weight.zero_()
            frozen.term_head[-1].bias.fill_(5.0)
    agent = _policy_only_agent(frozen)  # Q heads start at zero weights: Q = 0
    obs = torch.randn(4, 5)
    z = agent.dyn.encode(obs)
    assert torch.equal(z, frozen.encode(obs))  # the frozen model encodes, not the agent's own encoder
    g = agent.estimate_value(z, torch.rand(4, 3, 2) * 2 - 1)
    expected = 2.0 if termination else 2.0 * (1 + 0.9 + 0.81)
    assert torch.allclose(g, torch.full((4,), expected), atol=1e-5)


def test_policy_only_checks_its_model_and_its_options() -> None:
    with pytest.raises(UsageError, match="observations of 6"):
        _policy_only_agent(_pwm_model(obs_dim=6))
    with pytest.raises(UsageError, match="policy_only"):
        apply_overrides(TDMPC2Config(), {"world_model": "m"}).validate()
    with pytest.raises(UsageError, match="pwm_pretrain_steps"):
        apply_overrides(TDMPC2Config(), {"policy_only": True, "pwm_pretrain_steps": 0}).validate()


def test_policy_only_run_trains_on_the_model_of_pwms_pipeline(out: Path) -> None:
    pwm = run_inprocess(out, algo="pwm", run_id="p")
    td = run_inprocess(out, algo="tdmpc2", run_id="t", overrides={"policy_only": "true"})
    assert pwm.status == td.status == "completed"
    (model,) = (out / "world_models").iterdir()  # built once, by the first run
    assert f"world_model: {model}" in (td.run_dir / "config.yaml").read_text()
    pretrained = torch.load(model / "model.pt", weights_only=False)["model"]
    ckpt = torch.load(td.run_dir / "checkpoints" / "latest.pt", weights_only=False)["algo_state"]["agent"]
    assert all(torch.equal(ckpt[f"frozen.wm.{k}"], v) for k, v in pretrained.items())
    df = pd.read_csv(td.run_dir / "metrics.csv")
    assert "loss/value" in df.columns and "loss/consistency" not in df.columns
    # the frozen model's error on the newest data, as PWM's rows of wm-budget log it
    assert df["wm/newest_reward"].notna().any() and df["wm/newest_consistency"].notna().any()


def test_tdmpc2_learns_pointmass(out: Path) -> None:
    result = run_inprocess(out, algo="tdmpc2", env="pointmass", preset="cpu", overrides=TDMPC2_POINTMASS)
    assert result.status == "completed"
    df = pd.read_csv(result.run_dir / "metrics.csv")
    evals = df["eval/episode_return"].dropna()
    # well past the zero-action policy, and a clear gain over the first evaluation (seed spread is wide)
    assert result.summary["final_eval_return"] > -250.0, evals.tolist()
    assert result.summary["final_eval_return"] > evals.iloc[0] + 100.0, evals.tolist()
    assert {"loss/consistency", "loss/reward", "loss/value", "time/plan_ms", "time/updates_per_s"} <= set(df.columns)
    # burst of seed_steps x UTD updates, then UTD per env step
    assert df["tdmpc2/updates"].iloc[-1] == pytest.approx(0.5 * 3000, abs=8)


def test_tdmpc2_smoke_is_deterministic_and_resumes(out: Path) -> None:
    from pwm_bench.run import timing_columns

    runs = [run_inprocess(out, algo="tdmpc2", run_id=f"r{i}") for i in range(2)]
    assert all(r.status == "completed" for r in runs)
    a, b = (pd.read_csv(r.run_dir / "metrics.csv") for r in runs)
    assert {"time/plan_ms", "time/updates_per_s"} <= set(timing_columns(a.columns))
    a, b = (df.drop(columns=timing_columns(df.columns)) for df in (a, b))
    pd.testing.assert_frame_equal(a, b)

    part = run_inprocess(out, algo="tdmpc2", run_id="part", reporter=SignalAt(600))
    assert part.status == "interrupted"
    resumed = execute(RunRequest(resume=part.run_dir))
    assert resumed.status == "completed" and resumed.summary["resumes"] == 1
    ckpt = torch.load(resumed.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["env_steps"] == resumed.summary["env_steps"] >= 1024
    assert math.isfinite(resumed.summary["final_eval_return"])


def test_replay_validity_is_refreshed_by_every_add() -> None:
    replay = WindowReplay(3 * 10, 3, 2, 1, torch.device("cpu"))
    _fill_replay(replay, 4, {})
    assert replay._valid(3).all()  # computed (and cached) before the next add
    ended = torch.tensor([True, False, False])
    replay.add(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3), torch.zeros(3, 2), ended, ended)
    _fill_replay(replay, 1, {})
    valid = replay._valid(3)
    assert valid.shape == (4, 3)
    # world 0 ended at row 4: the window of rows 3..5 crosses it, the one of rows 2..4 does not
    assert valid[:, 0].tolist() == [True, True, True, False] and valid[:, 1:].all()


def test_partial_replay_windows_stop_at_the_first_end() -> None:
    replay = WindowReplay(3 * 30, 3, 2, 1, torch.device("cpu"))
    _fill_replay(replay, 30, {4: {0}, 10: {1}, 12: {1}})
    torch.manual_seed(0)
    obs, action, reward, term, mask = replay.sample_partial(3000, 6)
    assert obs.shape == (7, 3000, 2) and mask.shape == (6, 3000)
    assert bool((mask[0] == 1).all()) and bool((mask[1:] <= mask[:-1]).all())
    ended = torch.zeros_like(mask, dtype=torch.bool)
    # rows hold their step index in obs[..., 0] (see _fill_replay): recover each step's end flag
    world, step = obs[:-1, :, 0].long(), obs[:-1, :, 1].long()
    for s, worlds in {4: {0}, 10: {1}, 12: {1}}.items():
        for w in worlds:
            ended |= (step == s) & (world == w)
    first_end_or_before = 1 - (ended.float().cumsum(0) - ended.float()).clamp(max=1)
    assert torch.equal(mask, first_end_or_before)
    assert bool((mask[-1] == 0).any())
    assert (action[..., 0] == step).all() and (reward == step).all()
    assert torch.equal(term.bool() & mask.bool(), ended & mask.bool())  # the end is the last valid step
