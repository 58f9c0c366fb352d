"""``pwm-bench view``: the policy live in a browser (Newton's viser viewer), seen by headless Chromium."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .conftest import run_inprocess
from .test_reliability import inproc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_view_serves_a_page_on_which_chromium_sees_the_robot(out: Path, tmp_path: Path) -> None:
    pytest.importorskip("viser")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("needs Chromium (apt-get install chromium)")
    import imageio.v3 as iio

    result = run_inprocess(
        out, "ppo", "hopper", overrides={"total_steps": "256", "eval_every": "256", "num_envs": "8"}, threads=1
    )
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwm_bench.cli", "view", str(result.run_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the view did not start"
                time.sleep(0.5)
        time.sleep(3)  # the viewer sends the model to the page once it connects
        shot = tmp_path / "view.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-unsafe-swiftshader",
                "--use-angle=swiftshader",
                "--window-size=800,600",
                "--virtual-time-budget=10000",
                f"--screenshot={shot}",
                f"http://127.0.0.1:{port}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    img = iio.imread(shot)[..., :3].astype(np.int16)
    # below the page's panels, away from the axis gizmo: the ground is white and grey, the robot coloured
    scene = img[310:560, 80:800]
    coloured = (scene.max(-1) - scene.min(-1)) > 60
    assert coloured.mean() > 0.002, f"no robot drawn ({coloured.mean():.4f} of the scene is coloured)"


def test_view_refuses_what_it_cannot_show(out: Path) -> None:
    code, _, err = inproc("view", str(out))
    assert code == 2 and "not a run folder" in err
    code, _, err = inproc("view", str(out), "--port", "0")
    assert code == 2 and "--port" in err
