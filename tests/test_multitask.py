"""Multi-task PWM: task sets, the padded task-set env, task variants, multi-task data and the pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pwm_bench.datasets import EpisodeWriter, MultiTaskDataset
from pwm_bench.envs import env_spec, make_env
from pwm_bench.envs.multitask import TASK_SETS, TaskSetEnv, task_set
from pwm_bench.errors import UsageError
from pwm_bench.pretrain import PretrainConfig, load_world_model, pretrain_world_model
from pwm_bench.pwm import MultiTaskPolicy, iqm, normalized_score
from pwm_bench.world_model import model_config

from .conftest import cli, run_inprocess

# -- task sets and the task-set env ------------------------------------------------------------------


def test_task_sets_resolve_by_name_or_as_a_list_and_reject_bad_names() -> None:
    assert [t.name for t in task_set("mt:toy")] == [t.name for t in TASK_SETS["toy"]]
    adhoc = task_set("mt:pointmass,gym:Pendulum-v1")
    assert [t.env for t in adhoc] == ["pointmass", "gym:Pendulum-v1"]
    with pytest.raises(UsageError, match="toy"):
        task_set("mt:nope")  # the message lists the valid sets
    with pytest.raises(UsageError, match="env"):
        task_set("mt:pointmass,nope")
    with pytest.raises(UsageError, match="twice"):
        task_set("mt:pointmass,pointmass")
    assert not env_spec("mt:toy").differentiable


def test_task_set_env_pads_observations_truncates_actions_and_matches_its_tasks() -> None:
    env = make_env("mt:toy", 3)
    assert isinstance(env, TaskSetEnv)
    assert (env.num_envs, env.obs_dim, env.act_dim) == (12, 6, 3)
    assert env.task_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert env.action_mask.sum(1).tolist() == [2, 2, 1, 3]
    obs, _ = env.reset(seed=5)
    singles = [t.make(3) for t in env.tasks]
    ref = [s.reset(seed=5 + 1009 * k)[0] for k, s in enumerate(singles)]
    for k, r in enumerate(ref):
        block = obs[3 * k : 3 * k + 3]
        assert torch.equal(block[:, : r.shape[1]], r) and not block[:, r.shape[1] :].any()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.rand(12, 3, generator=gen) * 2 - 1  # padded entries are ignored
        obs, rew, _, _, info = env.step(a)
        for k, s in enumerate(singles):
            o, r, *_ = s.step(a[3 * k : 3 * k + 3, : s.act_dim])
            assert torch.allclose(obs[3 * k : 3 * k + 3, : s.obs_dim], o) and torch.allclose(rew[3 * k : 3 * k + 3], r)
    assert info["final_obs"].shape == (12, 6)


def test_task_variants_change_the_reward_as_documented() -> None:
    # point mass: goal and size
    env = make_env("pointmass", 2, dims=3, goal=(1.0, 0.0, 0.0))
    assert (env.obs_dim, env.act_dim) == (6, 3)
    env.reset(seed=0)
    env.pos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    env.vel = torch.zeros(2, 3)
    r = env.step(torch.zeros(2, 3))[1]
    assert r[0] > -1e-6 and abs(float(r[1]) + 1.0) < 1e-5
    with pytest.raises(UsageError, match="goal"):
        make_env("pointmass", 1, dims=2, goal=(1.0,))
    with pytest.raises(UsageError, match="direction"):
        make_env("hopper", 1, direction=0.5)


@pytest.mark.parametrize(("env_name", "opts"), [("hopper", {"direction": -1.0}), ("ant", {"direction_deg": 90.0})])
def test_locomotion_direction_variants_reward_the_velocity_along_the_direction(env_name: str, opts: dict) -> None:
    base, variant = make_env(env_name, 2), make_env(env_name, 2, **opts)
    base.reset(seed=1)
    variant.reset(seed=1)
    obs = base._observe(base.q, base.qd, base.last_action)
    a = torch.zeros(2, base.act_dim)
    diff = variant._reward(obs, a) - base._reward(obs, a)
    if env_name == "hopper":
        expected = -2.0 * obs[:, 5]  # -vx instead of vx
    else:  # ant: vy instead of vx, and the heading is measured toward a target along +y
        expected = obs[:, 6] - obs[:, 5]
        from pwm_bench.envs.locomotion import quat_rotate

        body_x = quat_rotate(variant.q[:, 3:7], torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3))
        v_obs = variant._observe(variant.q, variant.qd, variant.last_action)
        assert torch.allclose(v_obs[:, 28], body_x[:, 1], atol=1e-3)  # heading toward a target far along +y
    assert torch.allclose(diff, expected, atol=1e-5)


# -- multi-task data and model ------------------------------------------------------------------------


def _write(folder: Path, dims: int, episodes: int, seed: int) -> Path:
    """Random-action point-mass episodes of 20 steps (obs 2·dims, act dims)."""
    env = make_env("pointmass", episodes, dims=dims, episode_length=20)
    w = EpisodeWriter(folder, env=f"pointmass-{dims}d", obs_dim=env.obs_dim, act_dim=env.act_dim, num_envs=episodes)
    gen = torch.Generator().manual_seed(seed)
    w.begin(env.reset(seed=seed)[0])
    for _ in range(20):
        a = torch.rand(episodes, dims, generator=gen) * 2 - 1
        obs, r, te, tr, info = env.step(a)
        w.add(a, r, te, tr, obs, info["final_obs"])
    w.close()
    return folder


def test_multitask_dataset_pads_and_balances_the_tasks(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", dims=2, episodes=3, seed=0)
    b = _write(tmp_path / "b", dims=1, episodes=20, seed=1)
    ds = MultiTaskDataset([a, b], env="mt:test")
    assert (ds.manifest["obs_dim"], ds.manifest["act_dim"], ds.num_tasks) == (4, 2, 2)
    batch = ds.sample(9, 5, generator=torch.Generator().manual_seed(0))
    assert batch.obs.shape == (6, 9, 4) and batch.action.shape == (5, 9, 2)
    assert batch.task.tolist() == [0] * 5 + [1] * 4  # balanced despite 3 vs 20 episodes
    assert not batch.obs[:, 5:, 2:].any() and not batch.action[:, 5:, 1:].any()  # zero padding
    states = ds.sample_states(7, task=1)
    assert states.shape == (7, 4) and not states[:, 2:].any()
    train, held = ds.split(0.3)
    assert train.num_tasks == held.num_tasks == 2


def test_pretraining_a_multitask_model_needs_a_task_embedding(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", dims=2, episodes=3, seed=0)
    b = _write(tmp_path / "b", dims=1, episodes=3, seed=1)
    small = {"latent_dim": 16, "enc_hidden": (16,), "mlp_hidden": (16, 16)}
    cfg = PretrainConfig(steps=3, batch_size=8, horizon=4, eval_every=3, eval_batches=1)
    with pytest.raises(UsageError, match="task_dim"):
        pretrain_world_model([a, b], tmp_path / "wm0", cfg, model_config("pwm", **small))
    mt = model_config("pwm", **small, num_tasks=2, task_dim=4, num_bins=11)
    summary = pretrain_world_model([a, b], tmp_path / "wm", cfg, mt, env="mt:test")
    assert summary["status"] == "completed"
    wm = load_world_model(tmp_path / "wm")
    assert (wm.obs_dim, wm.act_dim, wm.cfg.num_tasks) == (4, 2, 2)


def test_multitask_policy_acts_per_task_block_and_masks_unused_actions() -> None:
    from pwm_bench.pwm import LatentActor
    from pwm_bench.world_model import WorldModel

    torch.manual_seed(0)
    wm = WorldModel(
        4, 3, model_config("pwm", latent_dim=16, enc_hidden=(16,), mlp_hidden=(16, 16), num_tasks=2, task_dim=4)
    )
    actors = [LatentActor(16, 3, (16,)), LatentActor(16, 3, (16,))]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    policy = MultiTaskPolicy(wm, actors, mask)
    obs = torch.randn(6, 4)
    a = policy.act(obs)
    assert a.shape == (6, 3) and not a[3:, 1:].any()
    z = wm.encode(obs[:3], torch.zeros(3, dtype=torch.long))
    assert torch.allclose(a[:3], actors[0](z, deterministic=True))
    with pytest.raises(ValueError, match="task blocks"):
        policy.act(torch.randn(5, 4))


def test_scores_and_iqm() -> None:
    assert normalized_score(5.0, 0.0, 10.0) == 0.5
    assert normalized_score(5.0, 10.0, 10.0) is None and normalized_score(5.0, 0.0, None) is None
    assert iqm([1.0, 2.0, 3.0, 100.0]) == 2.5  # drops one from each end of four
    assert iqm([4.0]) == 4.0 and math.isnan(iqm([]))


# -- the pipeline through the CLI -----------------------------------------------------------------------

TINY_MT = ["--set", "epochs=6", "--set", "pretrain_steps=30", "--set", "collect_steps=256"]


def test_multitask_pipeline_runs_through_the_cli_and_reports_per_task_scores(out: Path) -> None:
    res = cli("run", "--algo", "pwm", "--env", "mt:toy", "--preset", "smoke", "--out", str(out), "-q", *TINY_MT)
    assert res.returncode == 0, res.stderr
    for t in TASK_SETS["toy"]:
        assert t.name in res.stdout
    assert "normalized score" in res.stdout or "score —" in res.stdout
    runs = list((out / "runs" / "mt-toy" / "pwm").iterdir())
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["iterations"] == 6 * 4 and summary["env_steps"] == 0
    assert set(summary["tasks"]) == {t.name for t in TASK_SETS["toy"]}
    for t in summary["tasks"].values():
        assert math.isfinite(t["return"]) and math.isfinite(t["random_return"]) and t["reference_return"] is not None
    assert len(list((out / "datasets").iterdir())) == 4 and len(list((out / "world_models").iterdir())) == 1


def test_multitask_run_interrupted_mid_task_resumes_to_the_same_result(out: Path) -> None:
    from pwm_bench.runner import RunRequest, execute

    from .test_run import SignalAt

    over = {"epochs": "6", "pretrain_steps": "30", "collect_steps": "256"}
    whole = run_inprocess(out, algo="pwm", env="mt:toy", run_id="whole", overrides=over)
    assert whole.status == "completed"
    # stages are cached now, so the reporter only sees the policy iterations: stop in task 2 of 4
    part = run_inprocess(out, algo="pwm", env="mt:toy", run_id="part", overrides=over, reporter=SignalAt(9))
    assert part.status == "interrupted"
    assert 1 <= len(json.loads((part.run_dir / "summary.json").read_text())["tasks"]) < 4
    resumed = execute(RunRequest(resume=part.run_dir))
    assert resumed.status == "completed" and resumed.summary["resumes"] == 1
    assert resumed.summary["tasks"] == whole.summary["tasks"]


def test_multitask_bad_inputs_are_one_line_errors(out: Path) -> None:
    res = cli("run", "--algo", "pwm", "--env", "mt:nope", "--out", str(out))
    assert res.returncode == 2 and "toy" in res.stderr and "Traceback" not in res.stderr
    res = cli("run", "--algo", "pwm", "--env", "mt:toy", "--set", "pwm.datasets=[a,b]", "--out", str(out))
    assert res.returncode == 2 and "4 tasks" in res.stderr and "Traceback" not in res.stderr
    res = cli("run", "--algo", "pwm", "--env", "mt:toy", "--set", "env.dims=2", "--out", str(out))
    assert res.returncode == 2 and "none to choose from" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("taskset", ["mt:toy", "mt:hopper", "mt:locomotion"])
def test_multitask_presets_validate_and_budget_epochs_per_task(taskset: str) -> None:
    from pwm_bench.config import PRESETS
    from pwm_bench.pwm import PWMConfig

    for preset in PRESETS:
        cfg = PWMConfig.from_preset(preset, taskset)
        cfg.validate()
        assert cfg.eval_every == cfg.epochs
        cfg.mode, cfg.datasets = "offline", tuple(f"d{k}" for k in range(len(task_set(taskset))))
        assert cfg.budget() == ("iterations", cfg.epochs * len(task_set(taskset)))
