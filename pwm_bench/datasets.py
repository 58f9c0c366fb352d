"""Episode datasets on disk: sharded, manifest-indexed, never read half-written.

Layout of one dataset folder::

    <root>/datasets/<name>/
        manifest.json        format, env, sizes, source, and one entry per shard (file, counts, sha256)
        shard-00000.npz      numpy arrays (no pickles) of whole episodes, written once
        shard-00001.npz
        ...

A shard holds ``E`` episodes with ``T`` transitions in all, concatenated:

- ``obs``        float32 ``(T + E, O)``: episode ``k`` owns ``len_k + 1`` rows, ``o_0 .. o_len``;
- ``action``     float32 ``(T, A)``: the action as sent to the env (in ``[-1, 1]``);
- ``reward``     float32 ``(T,)``: the reward that followed the action;
- ``terminated`` bool ``(T,)`` and ``truncated`` bool ``(T,)``: how the step ended; an episode's
  last transition has one of them set (an episode cut by the end of collection is ``truncated``);
- ``task``       int64 ``(E,)``: task id per episode (0 for single-task data);
- ``length``     int64 ``(E,)``: transitions per episode.

Shards and the manifest are written to a temporary file and renamed into place, and a shard is listed
in the manifest only after it is complete, so readers never see partial data. Readers check every
shard against the manifest (size and SHA-256) and raise :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pwm_bench.errors import UsageError
from pwm_bench.store import DEFAULT_ROOT, atomic_save, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "pwm-bench-episodes"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("obs", "action", "reward", "terminated", "truncated", "task", "length")


class DatasetError(UsageError):
    """A dataset is missing, corrupt or inconsistent (the message names the file)."""


def datasets_root(root: str | os.PathLike[str] = DEFAULT_ROOT) -> Path:
    """Folder that holds the datasets of a results root."""
    return Path(root) / "datasets"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# writing


@dataclasses.dataclass
class _Episode:
    obs: list[np.ndarray]
    action: list[np.ndarray]
    reward: list[float]
    terminated: list[bool]
    truncated: list[bool]


class EpisodeWriter:
    """Collects vectorised env steps into whole episodes and writes them as shards.

    Call :meth:`begin` with the first observations, :meth:`add` after every ``env.step``, and
    :meth:`close` at the end (episodes still running are stored, cut, as truncated). Opening an
    existing dataset appends to it (same env and sizes required).

    Args:
        path: dataset folder.
        env: env name (recorded; must match when appending).
        obs_dim: observation size O.
        act_dim: action size A.
        num_envs: worlds per step.
        shard_transitions: a shard is written once this many transitions of finished episodes wait.
        task: task id of the episodes.
        source: free-form description of where the data came from (recorded in the manifest).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        env: str,
        obs_dim: int,
        act_dim: int,
        num_envs: int,
        shard_transitions: int = 100_000,
        task: int = 0,
        source: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.num_envs = num_envs
        self.shard_transitions = shard_transitions
        self.task = task
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / MANIFEST).exists():
            self.manifest = read_manifest(self.path)
            problems = shard_problems(self.path, self.manifest)
            if problems:
                # appending would hide the damage under new data that no reader could then load
                raise DatasetError(f"cannot append to {self.path}: {problems[0]}; choose another --name")
            if (self.manifest["env"], self.manifest["obs_dim"], self.manifest["act_dim"]) != (env, obs_dim, act_dim):
                raise DatasetError(
                    f"{self.path / MANIFEST}: holds env {self.manifest['env']!r} with obs/act "
                    f"{self.manifest['obs_dim']}/{self.manifest['act_dim']}; cannot append {env!r} {obs_dim}/{act_dim}"
                )
        else:
            self.manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "env": env,
                "obs_dim": obs_dim,
                "act_dim": act_dim,
                "episodes": 0,
                "transitions": 0,
                "shards": [],
                "sources": [],
                "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            }
        if source:
            self.manifest["sources"].append(source)
        self._running: list[_Episode | None] = [None] * num_envs
        self._done: list[_Episode] = []
        self._done_transitions = 0
        self._write_manifest()

    def begin(self, obs: torch.Tensor) -> None:
        """Start an episode in every world from observations ``(N, O)``."""
        o = obs.detach().float().cpu().numpy()
        self._running = [_Episode([o[i]], [], [], [], []) for i in range(self.num_envs)]

    def add(
        self,
        action: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        next_obs: torch.Tensor,
        final_obs: torch.Tensor | None = None,
    ) -> None:
        """Record one vectorised step (tensors as returned by ``env.step``; ``final_obs`` from its info)."""
        a = action.detach().float().cpu().numpy()
        r = reward.detach().float().cpu().numpy()
        te = terminated.detach().cpu().numpy().astype(bool)
        tr = truncated.detach().cpu().numpy().astype(bool)
        nxt = next_obs.detach().float().cpu().numpy()
        fin = final_obs.detach().float().cpu().numpy() if final_obs is not None else nxt
        for i in range(self.num_envs):
            ep = self._running[i]
            if ep is None:
                raise RuntimeError("EpisodeWriter.add before begin")
            done = bool(te[i] or tr[i])
            ep.action.append(a[i])
            ep.reward.append(float(r[i]))
            ep.terminated.append(bool(te[i]))
            ep.truncated.append(bool(tr[i]))
            ep.obs.append(fin[i] if done else nxt[i])
            if done:
                self._finish(ep)
                self._running[i] = _Episode([nxt[i]], [], [], [], [])
        if self._done_transitions >= self.shard_transitions:
            self.flush()

    def _finish(self, ep: _Episode) -> None:
        self._done.append(ep)
        self._done_transitions += len(ep.action)

    def flush(self) -> None:
        """Write the finished episodes that wait as one shard (no-op when none)."""
        if not self._done:
            return
        eps = self._done
        arrays = {
            "obs": np.concatenate([np.stack(e.obs) for e in eps]).astype(np.float32),
            "action": np.concatenate([np.stack(e.action) for e in eps]).astype(np.float32),
            "reward": np.concatenate([np.asarray(e.reward, dtype=np.float32) for e in eps]),
            "terminated": np.concatenate([np.asarray(e.terminated, dtype=bool) for e in eps]),
            "truncated": np.concatenate([np.asarray(e.truncated, dtype=bool) for e in eps]),
            "task": np.full(len(eps), self.task, dtype=np.int64),
            "length": np.asarray([len(e.action) for e in eps], dtype=np.int64),
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        name = f"shard-{len(self.manifest['shards']):05d}.npz"
        atomic_save(self.path / name, lambda fh: fh.write(data))
        n_tr = int(arrays["length"].sum())
        self.manifest["shards"].append(
            {"file": name, "episodes": len(eps), "transitions": n_tr, "bytes": len(data), "sha256": _sha256(data)}
        )
        self.manifest["episodes"] += len(eps)
        self.manifest["transitions"] += n_tr
        self._write_manifest()
        self._done, self._done_transitions = [], 0

    def close(self) -> None:
        """Store the running episodes (cut: their last step is marked truncated) and flush."""
        for i, ep in enumerate(self._running):
            if ep is not None and ep.action:
                ep.truncated[-1] = ep.truncated[-1] or not ep.terminated[-1]
                self._finish(ep)
            self._running[i] = None
        self.flush()

    def _write_manifest(self) -> None:
        self.manifest["updated_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
        atomic_write_json(self.path / MANIFEST, self.manifest)


class RecordingEnv:
    """Wraps a :class:`~pwm_bench.envs.base.VecEnv` and records every step into an :class:`EpisodeWriter`.

    Everything else (attributes, ``detach``, ``get_state``...) passes through to the wrapped env, so
    any algorithm trains on it unchanged.
    """

    def __init__(self, env: Any, writer: EpisodeWriter) -> None:
        self._env = env
        self._writer = writer

    @classmethod
    def into(cls, path: str | os.PathLike[str], env: Any, env_name: str, source: dict[str, Any]) -> RecordingEnv:
        """Record ``env`` (registry name ``env_name``) into a new dataset at ``path``; ``source`` is
        stored in its manifest (what produced the data)."""
        writer = EpisodeWriter(
            path, env=env_name, obs_dim=env.obs_dim, act_dim=env.act_dim, num_envs=env.num_envs, source=source
        )
        return cls(env, writer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self._env.reset(**kwargs)
        self._writer.close()  # episodes cut by the reset are kept as truncated
        self._writer.begin(obs)
        return obs, info

    def step(self, actions: torch.Tensor) -> Any:
        obs, reward, terminated, truncated, info = self._env.step(actions)
        self._writer.add(actions.clamp(-1.0, 1.0), reward, terminated, truncated, obs, info.get("final_obs"))
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self._writer.close()
        self._env.close()


# --------------------------------------------------------------------------------------------------
# reading


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of dataset folder ``path`` (raises :class:`DatasetError` when missing or bad)."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: not a dataset (no {MANIFEST})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{file}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{file}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    return manifest


def shard_problems(folder: str | os.PathLike[str], manifest: dict[str, Any], verify: bool = False) -> list[str]:
    """What is wrong with a dataset's shards: missing, or a size that differs from the manifest's
    (and, with ``verify``, a SHA-256 that differs: this reads every shard). Empty when sound."""
    folder = Path(folder)
    problems = []
    for entry in manifest.get("shards", []):
        file = folder / str(entry.get("file"))
        try:
            size = file.stat().st_size
        except OSError:
            problems.append(f"{file.name} is missing")
            continue
        expected = entry.get("bytes")
        if size != expected:
            problems.append(f"{file.name} is truncated or damaged ({size} bytes, the manifest says {expected})")
        elif verify and _sha256(file.read_bytes()) != entry.get("sha256"):
            problems.append(f"{file.name} is damaged (its SHA-256 differs from the manifest's)")
    return problems


def _load_shard(folder: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    file = folder / entry["file"]
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read shard ({exc})") from None
    if len(data) != entry["bytes"] or _sha256(data) != entry["sha256"]:
        raise DatasetError(f"{file}: corrupt or truncated shard (size/checksum differ from {MANIFEST})")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ARRAYS}
    except (KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"{file}: malformed shard ({exc})") from None
    n_ep, n_tr = len(arrays["length"]), int(arrays["length"].sum())
    if n_ep != entry["episodes"] or n_tr != entry["transitions"] or len(arrays["obs"]) != n_tr + n_ep:
        raise DatasetError(f"{file}: array sizes disagree with {MANIFEST}")
    return arrays


@dataclasses.dataclass
class Batch:
    """Sub-trajectories of length ``H + 1`` (time-major).

    Attributes:
        obs: ``(H+1, B, O)``.
        action: ``(H, B, A)``; ``action[t]`` was taken at ``obs[t]``.
        reward: ``(H, B)``.
        terminated: ``(H, B)`` bool; only the last step of a window (of a partial window: its last
            valid step) can be terminal.
        task: ``(B,)``.
        mask: ``(H, B)`` float, 1 on the steps inside the episode, for partial windows (windows that
            may run past their episode's end; the steps after it repeat the last one and are masked);
            None for full windows.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    task: torch.Tensor
    mask: torch.Tensor | None = None


class EpisodeDataset:
    """All episodes of a dataset folder in memory (torch tensors on ``device``), sampled uniformly.

    Args:
        path: dataset folder (with ``manifest.json``).
        device: where the tensors live.
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        shards = [_load_shard(self.path, e) for e in self.manifest["shards"]]
        if not shards:
            raise DatasetError(f"{self.path}: the dataset has no episodes yet")
        cat = {k: np.concatenate([s[k] for s in shards]) for k in ARRAYS}
        dev = torch.device(device)
        self.obs = torch.from_numpy(cat["obs"]).to(dev)
        self.action = torch.from_numpy(cat["action"]).to(dev)
        self.reward = torch.from_numpy(cat["reward"]).to(dev)
        self.terminated = torch.from_numpy(cat["terminated"]).to(dev)
        self.truncated = torch.from_numpy(cat["truncated"]).to(dev)
        self.task = torch.from_numpy(cat["task"]).to(dev)
        self.length = torch.from_numpy(cat["length"]).to(dev)
        ends = torch.cumsum(self.length, 0)
        self.tr_start = ends - self.length  # first transition of each episode
        self.obs_start = self.tr_start + torch.arange(len(self.length), device=dev)  # first obs row
        self.device = dev

    def split(self, holdout: float, seed: int = 0) -> tuple[EpisodeDataset, EpisodeDataset]:
        """Split by episode into ``(train, held_out)``; at least one episode each when possible.

        Both views share the stored tensors; only the episode index differs.
        """
        n = self.num_episodes
        k = min(max(1, round(holdout * n)), n - 1) if n > 1 else 0
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return self._subset(perm[k:].sort().values), self._subset(perm[:k].sort().values)

    def _subset(self, episodes: torch.Tensor) -> EpisodeDataset:
        view = copy.copy(self)
        for name in ("length", "task", "tr_start", "obs_start"):
            setattr(view, name, getattr(self, name)[episodes])
        return view

    @property
    def num_episodes(self) -> int:
        return len(self.length)

    @property
    def num_transitions(self) -> int:
        return int(self.length.sum())

    def sample(
        self, batch: int, horizon: int, generator: torch.Generator | None = None, partial: bool = False
    ) -> Batch:
        """``batch`` windows of ``horizon`` transitions, uniform over all valid start positions.

        Full windows (the default, as the reference's slice sampler) lie inside one episode, so an
        episode's last transitions start no window and the step into a termination is seen at one
        depth only (the window's last). With ``partial`` every transition starts a window; a window
        that reaches its episode's end stops there (``Batch.mask``), so an episode end is learned at
        every depth from 0 to ``horizon - 1``, and episodes shorter than ``horizon`` are used too.
        """
        ok = self.length >= (1 if partial else horizon)
        if not bool(ok.any()):
            raise DatasetError(f"{self.path}: no episode has {horizon} transitions (longest {int(self.length.max())})")
        starts = self.length if partial else self.length - horizon + 1
        starts_per_ep = torch.where(ok, starts, torch.zeros_like(self.length))
        cum = torch.cumsum(starts_per_ep, 0)
        pick = torch.randint(0, int(cum[-1]), (batch,), generator=generator).to(self.device)
        ep = torch.searchsorted(cum, pick, right=True)
        offset = pick - (cum[ep] - starts_per_ep[ep])
        step = offset.unsqueeze(0) + torch.arange(horizon + 1, device=self.device).unsqueeze(1)  # (H+1, B)
        tr_step, ob_step, mask = step[:-1], step, None
        if partial:
            last = (self.length[ep] - 1).unsqueeze(0)  # index of the episode's last transition
            mask = (tr_step <= last).float()
            tr_step, ob_step = torch.minimum(tr_step, last), torch.minimum(step, last + 1)
        tr = self.tr_start[ep].unsqueeze(0) + tr_step
        ob = self.obs_start[ep].unsqueeze(0) + ob_step
        return Batch(self.obs[ob], self.action[tr], self.reward[tr], self.terminated[tr], self.task[ep], mask)

    def sample_states(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch`` observations ``(B, O)`` drawn uniformly from the episodes' observations."""
        rows = self.length + 1
        cum = torch.cumsum(rows, 0)
        pick = torch.randint(0, int(cum[-1]), (batch,), generator=generator).to(self.device)
        ep = torch.searchsorted(cum, pick, right=True)
        return self.obs[self.obs_start[ep] + pick - (cum[ep] - rows[ep])]


def iter_datasets(root: str | os.PathLike[str] = DEFAULT_ROOT) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(folder, manifest)`` of every dataset under ``root/datasets`` (unreadable ones are skipped)."""
    for folder, manifest, _ in scan_datasets(root):
        if manifest is not None:
            yield folder, manifest


def scan_datasets(
    root: str | os.PathLike[str] = DEFAULT_ROOT, verify: bool = False
) -> Iterator[tuple[Path, dict[str, Any] | None, list[str]]]:
    """``(folder, manifest or None, problems)`` of every folder under ``root/datasets``: the manifest is
    None when it cannot be read; ``problems`` lists what :func:`shard_problems` finds (with ``verify``,
    checksums too)."""
    base = datasets_root(root)
    if not base.is_dir():
        return
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            manifest = read_manifest(folder)
        except DatasetError as exc:
            yield folder, None, [str(exc)]
            continue
        yield folder, manifest, shard_problems(folder, manifest, verify)


class MultiTaskDataset:
    """Several single-task datasets behind one padded interface; task ``k`` is the ``k``-th dataset.

    Observations and actions are zero-padded to the largest sizes of the set (TD-MPC2's multi-task
    convention). Each batch draws about the same number of windows from every task, so a task with
    little data is not drowned by one with much.

    Args:
        paths: one dataset folder per task, in task-id order.
        device: where the tensors live.
        env: name recorded as the set's env (``mt:<taskset>``).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        device: str | torch.device = "cpu",
        env: str = "mt",
        *,
        parts: Sequence[EpisodeDataset] | None = None,
    ) -> None:
        self.parts = list(parts) if parts is not None else [EpisodeDataset(p, device=device) for p in paths or ()]
        if not self.parts:
            raise DatasetError("a multi-task dataset needs at least one dataset")
        self.obs_dims = [int(d.manifest["obs_dim"]) for d in self.parts]
        self.act_dims = [int(d.manifest["act_dim"]) for d in self.parts]
        self.device = self.parts[0].device
        self.manifest = {
            "env": env,
            "obs_dim": max(self.obs_dims),
            "act_dim": max(self.act_dims),
            "tasks": [d.manifest["env"] for d in self.parts],
        }

    @property
    def num_tasks(self) -> int:
        return len(self.parts)

    @property
    def num_episodes(self) -> int:
        return sum(d.num_episodes for d in self.parts)

    def split(self, holdout: float, seed: int = 0) -> tuple[MultiTaskDataset, MultiTaskDataset]:
        """Split every task's episodes into ``(train, held_out)`` (see :meth:`EpisodeDataset.split`)."""
        pairs = [d.split(holdout, seed=seed + k) for k, d in enumerate(self.parts)]
        mk = lambda ps: MultiTaskDataset(env=self.manifest["env"], parts=ps)  # noqa: E731
        return mk([p[0] for p in pairs]), mk([p[1] if p[1].num_episodes else p[0] for p in pairs])

    def _pad(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, size - x.shape[-1]))

    def sample(
        self, batch: int, horizon: int, generator: torch.Generator | None = None, partial: bool = False
    ) -> Batch:
        """``batch`` padded windows, split evenly over the tasks (the first ``batch mod T`` get one more);
        ``task`` holds each window's task id (``partial``: see :meth:`EpisodeDataset.sample`)."""
        t_count = self.num_tasks
        sizes = [batch // t_count + (1 if k < batch % t_count else 0) for k in range(t_count)]
        bs = [d.sample(n, horizon, generator, partial) for d, n in zip(self.parts, sizes, strict=True) if n > 0]
        ids = [k for k, n in enumerate(sizes) if n > 0]
        o, a = self.manifest["obs_dim"], self.manifest["act_dim"]
        return Batch(
            torch.cat([self._pad(b.obs, o) for b in bs], 1),
            torch.cat([self._pad(b.action, a) for b in bs], 1),
            torch.cat([b.reward for b in bs], 1),
            torch.cat([b.terminated for b in bs], 1),
            torch.cat(
                [
                    torch.full((b.reward.shape[1],), k, dtype=torch.long, device=self.device)
                    for k, b in zip(ids, bs, strict=True)
                ]
            ),
            torch.cat([b.mask for b in bs], 1) if partial else None,
        )

    def sample_states(self, batch: int, task: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch`` padded observations ``(B, O)`` of task ``task``."""
        return self._pad(self.parts[task].sample_states(batch, generator), self.manifest["obs_dim"])
