"""``pwm-bench render``: videos of a stored policy, drawn off-screen by Newton's viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import run_inprocess
from .test_reliability import inproc

pytest.importorskip("pyglet")
pytest.importorskip("imageio_ffmpeg")


def _body(frame: np.ndarray) -> np.ndarray:
    """Mask of the robot's pixels: its shapes are coloured, the sky and the ground are near grey."""
    f = frame.astype(np.int16)
    return (f.max(-1) - f.min(-1)) > 90


def test_the_hopper_is_drawn_and_moves_between_frames() -> None:
    from pwm_bench.envs import make_env
    from pwm_bench.render import WarpRenderer, motion

    env = make_env("hopper", 1, "cpu")
    env.reset(seed=0)
    renderer = WarpRenderer(env, 160, 120)
    frames = [renderer.frame(env.q)]
    for _ in range(20):  # full torque on every joint: the hopper folds and falls
        env.step(torch.ones(1, env.act_dim))
        frames.append(renderer.frame(env.q))
    renderer.close()
    env.close()
    first, last = _body(frames[0]), _body(frames[-1])
    assert 0.003 < first.mean() < 0.3 and last.mean() > 0.003  # visible, not the whole picture
    # the body is drawn where the robot is: its pixels change place as it moves
    assert (first ^ last).mean() > 0.002 and motion(np.stack(frames)) > 0.1
    assert frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8


def test_cli_renders_a_run_to_mp4_and_gif(out: Path) -> None:
    import imageio.v3 as iio

    result = run_inprocess(
        out, "ppo", "hopper", overrides={"total_steps": "256", "eval_every": "256", "num_envs": "8"}, threads=1
    )
    assert result.status == "completed"
    code, stdout, err = inproc("render", str(result.run_dir), "--max-steps", "6", "--width", "96", "--height", "64")
    assert code == 0, err
    mp4, gif = result.run_dir / "videos" / "best-seed0.mp4", result.run_dir / "videos" / "best-seed0.gif"
    assert mp4.stat().st_size > 0 and gif.stat().st_size > 0 and "return" in stdout
    video = iio.imread(mp4, plugin="pyav") if _has_av() else np.stack(list(iio.imiter(mp4, extension=".mp4")))
    assert 2 <= len(video) <= 7
    assert not list((result.run_dir / "videos").glob(".*tmp*"))  # written by rename
    code, _, err = inproc("render", str(out), "--max-steps", "6")
    assert code == 2 and "not a run folder" in err


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True
