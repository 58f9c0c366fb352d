"""Episode datasets: round trip, window sampling, corruption handling, collect and datasets commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pwm_bench.datasets import DatasetError, EpisodeDataset, EpisodeWriter, RecordingEnv, read_manifest
from pwm_bench.envs import make_env
from pwm_bench.envs.pointmass import PointMassConfig

from .conftest import cli


def _record_pointmass(
    path: Path, steps: int = 260, num_envs: int = 3, shard: int = 200, spread: float = 1.2, **env_kwargs: Any
) -> None:
    """Uniform random actions in ±``spread`` (beyond 1: stored clamped) on a point mass with ``env_kwargs``."""
    env = make_env("pointmass", num_envs, "cpu", **env_kwargs)
    writer = EpisodeWriter(path, env="pointmass", obs_dim=4, act_dim=2, num_envs=num_envs, shard_transitions=shard)
    rec = RecordingEnv(env, writer)
    rec.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rec.step(torch.rand(num_envs, 2, generator=gen) * 2 * spread - spread)
    rec.close()


def test_round_trip_keeps_every_transition_and_its_dynamics(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    _record_pointmass(path)
    m = read_manifest(path)
    assert m["transitions"] == 260 * 3 and len(m["shards"]) >= 2
    ds = EpisodeDataset(path)
    assert ds.num_transitions == 780 and ds.num_episodes == m["episodes"]
    assert int(ds.length.sum()) == 780 and len(ds.obs) == 780 + ds.num_episodes
    assert ds.action.abs().max() <= 1.0
    # every episode ends terminated or truncated, and only there
    ends = torch.cumsum(ds.length, 0) - 1
    done = ds.terminated | ds.truncated
    assert done[ends].all() and int(done.sum()) == ds.num_episodes
    # windows are consecutive steps of one episode: they obey the point-mass dynamics exactly
    c = PointMassConfig()
    batch = ds.sample(64, horizon=16, generator=torch.Generator().manual_seed(1))
    assert batch.obs.shape == (17, 64, 4) and batch.action.shape == (16, 64, 2) and batch.reward.shape == (16, 64)
    pos, vel = batch.obs[:-1, :, :2], batch.obs[:-1, :, 2:]
    vel_next = (1 - c.damping * c.dt) * vel + c.dt * c.max_force * batch.action / c.mass
    torch.testing.assert_close(batch.obs[1:, :, 2:], vel_next, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.obs[1:, :, :2], pos + c.dt * vel_next, atol=1e-5, rtol=1e-5)
    reward = -(batch.obs[1:, :, :2].square().sum(-1) + 0.1 * vel_next.square().sum(-1))
    reward = reward - 0.01 * batch.action.square().sum(-1)
    torch.testing.assert_close(batch.reward, reward, atol=1e-4, rtol=1e-4)
    assert not batch.terminated[:-1].any()
    assert ds.sample_states(10).shape == (10, 4)


def test_appending_extends_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    _record_pointmass(path, steps=50)
    _record_pointmass(path, steps=50)
    m = read_manifest(path)
    assert m["transitions"] == 300 and len(m["sources"]) == 0
    with pytest.raises(DatasetError, match="cannot append"):
        EpisodeWriter(path, env="hopper", obs_dim=11, act_dim=3, num_envs=1)


def test_corrupt_truncated_or_missing_shards_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    _record_pointmass(path)
    shard = path / read_manifest(path)["shards"][0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=shard.name):
        EpisodeDataset(path)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(DatasetError, match="corrupt"):
        EpisodeDataset(path)
    shard.unlink()
    with pytest.raises(DatasetError, match=shard.name):
        EpisodeDataset(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest"):
        EpisodeDataset(path)
    with pytest.raises(DatasetError, match="not a dataset"):
        EpisodeDataset(tmp_path / "nowhere")


def test_unlisted_files_are_never_read(tmp_path: Path) -> None:
    """A shard that was being written when the process died is not in the manifest and is ignored."""
    path = tmp_path / "ds"
    _record_pointmass(path, steps=50)
    (path / "shard-00099.npz").write_bytes(b"partial")
    (path / ".shard-00100.npz.tmp").write_bytes(b"partial")
    assert EpisodeDataset(path).num_transitions == 150


def test_windows_longer_than_every_episode_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    _record_pointmass(path, steps=20)
    with pytest.raises(DatasetError, match="no episode has 64"):
        EpisodeDataset(path).sample(4, horizon=64)


def test_collect_and_datasets_commands(tmp_path: Path) -> None:
    out = tmp_path / "results"
    res = cli("collect", "--env", "pointmass", "--algo", "ppo", "--preset", "smoke", "--steps", "1024",
              "--out", str(out), "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    path = out / "datasets" / "pointmass-ppo-s0"
    m = json.loads((path / "manifest.json").read_text())
    assert m["transitions"] == 1024 and m["sources"][0]["algo"] == "ppo"
    assert np.isclose(sum(s["transitions"] for s in m["shards"]), 1024)
    listing = cli("datasets", "--out", str(out))
    assert listing.returncode == 0 and "pointmass-ppo-s0" in listing.stdout and "1,024" in listing.stdout
    bad = cli("collect", "--env", "nope", "--out", str(out))
    assert bad.returncode == 2 and "valid" in bad.stderr and "Traceback" not in bad.stderr


TINY_WM = {"latent_dim": 32, "enc_hidden": (32,), "mlp_hidden": (32, 32)}


def test_pretrain_world_model_learns_and_resumes(tmp_path: Path) -> None:
    import pandas as pd

    from pwm_bench.errors import UsageError
    from pwm_bench.pretrain import PretrainConfig, load_world_model, pretrain_world_model
    from pwm_bench.world_model import model_config

    data = tmp_path / "ds"
    _record_pointmass(data, steps=400, num_envs=4, shard=500)
    out = tmp_path / "wm"
    cfg = PretrainConfig(steps=150, batch_size=32, horizon=8, lr=3e-3, eval_every=50, eval_batches=2)
    summary = pretrain_world_model(data, out, cfg, model_config("pwm", **TINY_WM))
    assert summary["status"] == "completed" and summary["step"] == 150
    df = pd.read_csv(out / "metrics.csv")
    assert df["step"].tolist() == [50, 100, 150]
    # rewards in the reference's units (centred, divided by the std, clamped): the training error
    # falls by a third or more, and the held-out error (a few short episodes, so it moves up and
    # down between evaluations) drops below 0.8 of its first value at a later evaluation
    assert df["train/reward"].iloc[-1] < 0.7 * df["train/reward"].iloc[0]
    assert df["heldout/reward"].iloc[1:].min() < 0.8 * df["heldout/reward"].iloc[0]
    with pytest.raises(UsageError, match="--resume"):
        pretrain_world_model(data, out, cfg, model_config("pwm", **TINY_WM))
    more = pretrain_world_model(data, out, PretrainConfig(steps=250), resume=True)
    assert more["step"] == 250
    df = pd.read_csv(out / "metrics.csv")
    assert df["step"].tolist() == [50, 100, 150, 200, 250]
    model = load_world_model(out)
    assert model.cfg.latent_dim == 32 and not model.training
    # the reference's units by default: centred on the training split's mean reward (the point mass's
    # rewards are negative distances), clamped at ±5
    assert float(model.reward_clip) == 5.0 and float(model.reward_shift) < 0.0
    batch = EpisodeDataset(data).sample(4, 8)
    assert model.reward(model.encode(batch.obs[0]), batch.action[0]).shape == (4,)


def test_pretrain_cli_rejects_bad_input(tmp_path: Path) -> None:
    res = cli("pretrain-wm", "--dataset", "nope", "--out", str(tmp_path), "--device", "cpu")
    assert res.returncode == 2 and "not a dataset" in res.stderr and "Traceback" not in res.stderr
    res = cli("pretrain-wm", "--dataset", "x", "--size", "3M", "--out", str(tmp_path))
    assert res.returncode == 2 and "valid" in res.stderr


def test_partial_windows_stop_at_the_episode_end(tmp_path: Path) -> None:
    """Every transition starts a partial window; past the episode's end the mask is 0 and the steps repeat
    the last one; inside, the windows obey the dynamics; the end flag sits on the last valid step."""
    path = tmp_path / "ds"
    _record_pointmass(path, steps=60, spread=1.0, episode_length=7, bound=2.0)
    ds = EpisodeDataset(path)
    assert int((ds.length < 7).sum()) > 0 and int((ds.length < 5).sum()) > 0  # some terminated early
    h = 5
    batch = ds.sample(4000, h, generator=torch.Generator().manual_seed(1), partial=True)
    m = batch.mask
    assert m is not None and m.shape == (h, 4000)
    assert bool((m[0] == 1).all()) and bool((m[1:] <= m[:-1]).all())
    # the share of windows cut short: min(L, H - 1) of an episode's L starts are
    expected = float(ds.length.clamp(max=h - 1).sum() / ds.length.sum())
    assert float((m[-1] == 0).float().mean()) == pytest.approx(expected, abs=0.03)
    c = PointMassConfig()
    vel_next = (1 - c.damping * c.dt) * batch.obs[:-1, :, 2:] + c.dt * c.max_force * batch.action / c.mass
    inside = m.bool().unsqueeze(-1).expand_as(vel_next)
    torch.testing.assert_close(batch.obs[1:, :, 2:][inside], vel_next[inside], atol=1e-5, rtol=1e-5)
    assert not bool((batch.terminated[:-1] & m[1:].bool()).any())  # a terminal step is the last valid one
    assert bool((batch.terminated & m.bool()).any())
    full = ds.sample(64, h, generator=torch.Generator().manual_seed(1))
    assert full.mask is None
