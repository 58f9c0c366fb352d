"""A live 3D view of a stored policy in a web browser (``pwm-bench view RUN_DIR``).

Newton's viser viewer (:class:`newton.viewer.ViewerViser`) serves the scene over WebSocket and
WebGL: open ``http://HOST:PORT`` in a browser while the command runs. The policy acts
deterministically in one world of the run's env, in real time (one control step every ``dt``
seconds), episode after episode from reset seeds ``seed, seed + 1, ...`` until Ctrl-C or
``episodes``. Warp envs only (their bodies are the model's shapes, on a ground plane); it needs
the ``view`` extra: ``pip install -e ".[view]"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from pwm_bench.errors import UsageError

log = logging.getLogger(__name__)


def view_run(
    run_dir: str | Path,
    *,
    checkpoint: Literal["best", "latest"] = "best",
    host: str = "127.0.0.1",
    port: int = 8080,
    seed: int = 0,
    episodes: int | None = None,
    max_steps: int = 1000,
    realtime: bool = True,
    on_episode: Callable[[int, float, int], None] | None = None,
) -> None:
    """Serve a live view of the run's policy on ``http://host:port`` (see the module docstring).

    Raises:
        UsageError: not a run folder, no checkpoint, an env that is not a Warp env, or no viser.
    """
    import dataclasses

    from pwm_bench.api import load_policy
    from pwm_bench.config import from_dict
    from pwm_bench.envs import env_spec, make_env
    from pwm_bench.envs.locomotion import WarpArticulationEnv
    from pwm_bench.render import picture_model, pose
    from pwm_bench.store import read_config

    run_dir = Path(run_dir)
    record = read_config(run_dir)
    if not record:
        raise UsageError(f"{run_dir}: not a run folder (no config.yaml)")
    try:
        import viser  # noqa: F401
    except ImportError:
        raise UsageError('pwm-bench view needs viser: pip install -e ".[view]"') from None
    import newton

    env_name = record["env"]
    if env_name.startswith(("gym:", "mt:")):
        raise UsageError(
            f"pwm-bench view shows the Warp envs; '{env_name}' is not one (pwm-bench render draws gym: envs)"
        )
    env_kwargs = dataclasses.asdict(from_dict(env_spec(env_name).config, record.get("env_config") or {}))
    env = make_env(env_name, 1, "cpu", False, **env_kwargs)
    if not isinstance(env, WarpArticulationEnv):
        env.close()
        raise UsageError(f"env '{env_name}' has no bodies to show: pwm-bench view shows the Warp envs")
    policy = load_policy(run_dir, checkpoint)
    model = picture_model(env)
    state = model.state(requires_grad=False)
    viewer = newton.viewer.ViewerViser(host=host, port=port, verbose=False, label=f"{record['algo']} on {env_name}")
    viewer.set_model(model)
    import warp as wp

    # the first view: from the side (-y), a little above the robot's starting height
    pose(model, state, env.q)
    centre = state.body_q.numpy()[:, :3].mean(axis=0)
    viewer.set_camera(wp.vec3(float(centre[0]), float(centre[1]) - 4.0, float(centre[2]) + 0.6), pitch=-8.0, yaw=90.0)
    log.info("viewing %s on http://%s:%d (Ctrl-C stops)", run_dir, host, port)
    k, sim_time = 0, 0.0
    try:
        while episodes is None or k < episodes:
            obs, _ = env.reset(seed=seed + k)
            total, steps = 0.0, 0
            with torch.no_grad():
                while steps < max_steps:
                    t0 = time.monotonic()
                    pose(model, state, env.q)
                    viewer.begin_frame(sim_time)
                    viewer.log_state(state)
                    viewer.end_frame()
                    obs, reward, terminated, truncated, _ = env.step(policy.act(obs, deterministic=True))
                    total += float(reward[0])
                    steps += 1
                    sim_time += env.dt
                    if bool(terminated[0] | truncated[0]):
                        break
                    if realtime:
                        time.sleep(max(0.0, env.dt - (time.monotonic() - t0)))
            log.info("episode %d (seed %d): return %.1f over %d steps", k, seed + k, total, steps)
            if on_episode is not None:
                on_episode(k, total, steps)
            k += 1
    finally:
        viewer.close()
        env.close()
