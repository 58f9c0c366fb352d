"""Videos of a stored policy (``pwm-bench render RUN_DIR``): deterministic episodes as MP4 and GIF.

Warp envs are drawn by Newton's OpenGL viewer (:class:`newton.viewer.ViewerGL`) without a window:
pyglet renders off-screen through EGL (Mesa's software rasteriser where there is no GPU). The
bodies are the model's own collision shapes, posed by forward kinematics from the env's joint
coordinates after every control step, on a ground plane, with a camera that follows the root body
from the side. Muscle-driven envs also draw every muscle as lines from waypoint to waypoint,
coloured from blue (activation 0) to red (activation 1). ``gym:`` envs render through their own
``rgb_array`` mode. This module is the glue; it needs the ``render`` extra (pyglet, imageio,
imageio-ffmpeg): ``pip install -e ".[render]"``.

Frames are taken at the env's control rate (60 Hz for the DiffRL envs): the MP4 plays at that
rate, the GIF at a third of the frames (20 Hz), in real time. Videos go to ``RUN_DIR/videos``,
each written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pwm_bench.errors import UsageError

log = logging.getLogger(__name__)

GIF_STRIDE = 3
"""Every this many frames go into the GIF (60 Hz control steps -> 20 frames per second)."""


@dataclasses.dataclass
class Episode:
    """One rendered episode: its frames ``(T, H, W, 3)`` uint8, return and length, and the video files."""

    frames: np.ndarray
    episode_return: float
    length: int
    fps: float
    files: list[Path] = dataclasses.field(default_factory=list)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f'rendering needs {module.split(".")[0]}: pip install -e ".[render]"') from None


@contextlib.contextmanager
def _headless_gl() -> Iterator[Any]:
    """pyglet set up for off-screen rendering (EGL), before anything of it is imported."""
    pyglet = _require("pyglet")
    pyglet.options["headless"] = True
    yield pyglet


class WarpRenderer:
    """Off-screen pictures of one world of a Warp env (the first), from its joint coordinates.

    Args:
        env: a :class:`~pwm_bench.envs.locomotion.WarpArticulationEnv` (any number of worlds).
        width: image width [px].
        height: image height [px].
        distance: camera distance from the root body [m] (default: from the robot's size).
    """

    def __init__(self, env: Any, width: int = 640, height: int = 360, distance: float | None = None) -> None:
        import newton
        import warp as wp

        with _headless_gl():
            self.viewer = newton.viewer.ViewerGL(width=width, height=height, headless=True)
        self.env, self.wp = env, wp
        sim = env.sim
        self.model = picture_model(env)
        self.state = self.model.state(requires_grad=False)
        self.viewer.set_model(self.model)
        self.viewer.show_ui = False
        extent = float(np.ptp(np.asarray(sim.built.builder.body_q, dtype=np.float64)[:, :3], axis=0).max())
        self.distance = distance if distance is not None else max(3.0, 2.5 * extent)
        self.muscles = getattr(sim, "_muscles", None)
        # planar robots (the hopper) from the side; the others three-quarters from the front
        self.yaw = 90.0 if env.name in ("hopper", "double_pendulum") else 55.0
        self.time = 0.0

    def frame(self, q: torch.Tensor, activation: torch.Tensor | None = None) -> np.ndarray:
        """The picture ``(H, W, 3)`` uint8 of world 0 at joint coordinates ``q (N, nq)``; ``activation``
        ``(N, A)`` colours the muscles of a muscle-driven env."""

        wp = self.wp
        pose(self.model, self.state, q)
        centre = self.state.body_q.numpy()[:, :3].mean(axis=0)  # follow the bodies' mean position
        # looking along yaw (90°: along +y, from the side), slightly from above
        yaw = np.deg2rad(self.yaw)
        height = float(max(centre[2], 0.6)) + 0.15 * self.distance
        eye = centre[:2] - self.distance * np.array([np.cos(yaw), np.sin(yaw)])
        self.viewer.set_camera(wp.vec3(float(eye[0]), float(eye[1]), height), pitch=-8.0, yaw=self.yaw)
        self.viewer.begin_frame(self.time)
        self.viewer.log_state(self.state)
        if self.muscles is not None and activation is not None:
            self._log_muscles(activation[0])
        self.viewer.end_frame()
        self.time += self.env.dt
        return self.viewer.get_frame().numpy()

    def activation(self, action: torch.Tensor) -> torch.Tensor | None:
        """Muscle activations ``(N, M)`` of actions ``(N, A)`` (the env's gain and bias); None without muscles."""
        if self.muscles is None:
            return None
        return self.muscles.act_gain * action + self.muscles.act_bias

    def _log_muscles(self, activation: torch.Tensor) -> None:
        """Each muscle's path as line segments between consecutive waypoints, blue (0) to red (1)."""
        wp = self.wp
        starts, ends, colors = muscle_segments(self.muscles, self.state.body_q.numpy(), activation.cpu().numpy())
        self.viewer.log_lines(
            "muscles",
            wp.array(starts, dtype=wp.vec3),
            wp.array(ends, dtype=wp.vec3),
            wp.array(colors, dtype=wp.vec3),
        )

    def close(self) -> None:
        self.viewer.close()


def picture_model(env: Any) -> Any:
    """A one-world Newton model of a Warp env's robot (its shapes) on a ground plane, for viewers;
    pose it with :func:`pose` from the env's joint coordinates."""
    import newton

    builder = newton.ModelBuilder(up_axis=newton.Axis.Z, gravity=(0.0, 0.0, -9.81))
    builder.add_builder(env.sim.built.builder)
    if env.has_ground:
        builder.add_ground_plane()
    return builder.finalize(device="cpu")


def pose(model: Any, state: Any, q: torch.Tensor) -> None:
    """Set ``state``'s bodies from world 0 of the joint coordinates ``q (N, nq)`` (forward kinematics)."""
    import newton

    state.joint_q.assign(q[0].detach().cpu().numpy().astype(np.float32))
    newton.eval_fk(model, state.joint_q, state.joint_qd, state)


def muscle_segments(muscles: Any, body_q: np.ndarray, activation: np.ndarray) -> tuple[np.ndarray, ...]:
    """World-space segments of every muscle of world 0: ``starts, ends (S, 3)`` and ``colors (S, 3)``.

    ``muscles`` is the env's :class:`~pwm_bench.envs.muscles.MuscleForces`; ``body_q (B, 7)`` the
    bodies' poses (position [m], quaternion xyzw); ``activation (M,)`` in [0, 1] (clipped).
    """
    body = np.asarray(muscles.muscles.body)  # (W,) body of each waypoint (world 0)
    local = np.asarray(muscles.muscles.local, dtype=np.float64)  # (W, 3) waypoint in its body's frame
    first = np.asarray(muscles.muscles.start)  # (M + 1,) waypoint ranges of the muscles
    pos, quat = body_q[body, :3], body_q[body, 3:7]
    world = pos + _rotate(quat, local)
    starts, ends, colors = [], [], []
    act = np.clip(activation, 0.0, 1.0)
    for m in range(len(first) - 1):
        a, b = int(first[m]), int(first[m + 1])
        if b - a < 2:
            continue
        starts.append(world[a : b - 1])
        ends.append(world[a + 1 : b])
        colors.append(np.repeat([[act[m], 0.2, 1.0 - act[m]]], b - a - 1, axis=0))
    return (
        np.concatenate(starts).astype(np.float32),
        np.concatenate(ends).astype(np.float32),
        np.concatenate(colors).astype(np.float32),
    )


def _rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``v (..., 3)`` by unit quaternions ``q (..., 4)`` (x, y, z, w)."""
    u, w = q[..., :3], q[..., 3:4]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def _warp_episode(
    policy: Any, env_name: str, env_kwargs: dict[str, Any], seed: int, max_steps: int, width: int, height: int
) -> Episode:
    from pwm_bench.envs import make_env
    from pwm_bench.envs.locomotion import WarpArticulationEnv

    env = make_env(env_name, 1, "cpu", False, **env_kwargs)
    if not isinstance(env, WarpArticulationEnv):
        env.close()
        raise UsageError(f"env '{env_name}' has no picture: render works on the Warp envs and gym: envs")
    renderer = WarpRenderer(env, width, height)
    try:
        obs, _ = env.reset(seed=seed)
        frames = [renderer.frame(env.q)]
        total, steps = 0.0, 0
        with torch.no_grad():
            while steps < max_steps:
                action = policy.act(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward[0])
                steps += 1
                if bool(terminated[0] | truncated[0]):
                    break  # the env already reset this world: its last state is not drawn
                frames.append(renderer.frame(env.q, renderer.activation(action)))
    finally:
        renderer.close()
        env.close()
    return Episode(np.stack(frames), total, steps, 1.0 / env.dt)


def _gym_episode(policy: Any, env_name: str, env_kwargs: dict[str, Any], seed: int, max_steps: int) -> Episode:
    import gymnasium as gym

    kwargs = {k: v for k, v in env_kwargs.items() if v is not None}
    try:
        env = gym.make(env_name.removeprefix("gym:"), render_mode="rgb_array", **kwargs)
    except Exception as exc:
        raise UsageError(f"cannot render {env_name}: {exc}") from None
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    total, steps = 0.0, 0
    while steps < max_steps:
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1))
        a = policy.act(o, deterministic=True)[0].cpu().numpy().astype(np.float64)
        obs, reward, terminated, truncated, _ = env.step((low + (a + 1.0) * 0.5 * (high - low)).reshape(low.shape))
        total += float(reward)
        steps += 1
        frames.append(env.render())
        if terminated or truncated:
            break
    fps = float(env.metadata.get("render_fps") or 30)
    env.close()
    return Episode(np.stack(frames), total, steps, fps)


def write_videos(episode: Episode, stem: Path, formats: tuple[str, ...] = ("mp4", "gif")) -> list[Path]:
    """Write ``episode``'s frames to ``stem.mp4`` / ``stem.gif`` (temp file, then rename)."""
    iio = _require("imageio.v3")
    files = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.{fmt}")
        if fmt == "mp4":
            iio2 = _require("imageio.v2")
            frames = episode.frames
            # libx264 with yuv420p needs even sizes
            h, w = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
            iio2.mimwrite(tmp, list(frames[:, :h, :w]), format="FFMPEG", fps=episode.fps, codec="libx264")
        else:
            stride = max(1, round(episode.fps / 20.0))
            iio.imwrite(tmp, episode.frames[::stride], extension=".gif", duration=1000.0 * stride / episode.fps, loop=0)
        tmp.replace(path)
        files.append(path)
    return files


def render_run(
    run_dir: str | Path,
    *,
    checkpoint: Literal["best", "latest"] = "best",
    episodes: int = 1,
    seed: int = 0,
    max_steps: int = 300,
    width: int = 640,
    height: int = 360,
    formats: tuple[str, ...] = ("mp4", "gif"),
    progress: Callable[[int, Episode], None] | None = None,
    device: str = "cpu",
) -> list[Episode]:
    """Render ``episodes`` deterministic episodes of a stored run's policy into ``RUN_DIR/videos``.

    Episode ``k`` starts from the env's reset with seed ``seed + k`` and lasts until it ends or
    ``max_steps`` control steps. Files: ``<checkpoint>-seed<seed+k>.mp4|.gif``.

    Raises:
        UsageError: not a run folder, no checkpoint, a task set, or a missing ``render`` extra.
    """
    from pwm_bench.api import load_policy
    from pwm_bench.config import from_dict
    from pwm_bench.envs import env_spec
    from pwm_bench.store import read_config

    run_dir = Path(run_dir)
    record = read_config(run_dir)
    if not record:
        raise UsageError(f"{run_dir}: not a run folder (no config.yaml)")
    env_name = record["env"]
    if env_name.startswith("mt:"):
        raise UsageError(f"{env_name} is a task set; render one task's run instead")
    gym_env = env_name.startswith("gym:")
    for extra in ("imageio", "imageio_ffmpeg") if gym_env else ("pyglet", "imageio", "imageio_ffmpeg"):
        _require(extra)
    env_kwargs = dataclasses.asdict(from_dict(env_spec(env_name).config, record.get("env_config") or {}))
    policy = load_policy(run_dir, checkpoint, device)
    out_dir = run_dir / "videos"
    out_dir.mkdir(exist_ok=True)
    result = []
    for k in range(episodes):
        s = seed + k
        if gym_env:
            ep = _gym_episode(policy, env_name, env_kwargs, s, max_steps)
        else:
            ep = _warp_episode(policy, env_name, env_kwargs, s, max_steps, width, height)
        ep.files = write_videos(ep, out_dir / f"{checkpoint}-seed{s}", formats)
        result.append(ep)
        log.info("episode %d: return %.1f over %d steps -> %s", k, ep.episode_return, ep.length, ep.files[0])
        if progress is not None:
            progress(k, ep)
    return result


def motion(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, in grey levels (0 for a still picture)."""
    f = frames.astype(np.float32)
    return float(np.abs(np.diff(f, axis=0)).mean()) if len(f) > 1 else 0.0


__all__ = ["Episode", "WarpRenderer", "motion", "muscle_segments", "render_run", "write_videos"]
