"""Algorithm and env registries, including third-party algorithms found through entry points."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from pwm_bench import algos
from pwm_bench.envs import env_spec, list_envs
from pwm_bench.errors import UsageError

from .conftest import REPO, cli, run_inprocess


def test_builtin_lookup_and_suggestions() -> None:
    assert algos.get_algorithm("ppo").name == "ppo"
    assert "pointmass" in list_envs()
    with pytest.raises(UsageError, match=r"unknown algorithm 'ppp'; did you mean 'ppo'\?"):
        algos.get_algorithm("ppp")
    with pytest.raises(UsageError, match=r"unknown env 'pointmas'; did you mean 'pointmass'\?"):
        env_spec("pointmas")


def _readme_plugin() -> tuple[str, str]:
    """The example of docs/add-algorithm.md: (module source, entry-point line)."""
    section = (REPO / "docs" / "add-algorithm.md").read_text()
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    ep_line = next(line for line in toml.splitlines() if "=" in line and ":" in line)
    return module, ep_line


def _install_plugin(root: Path) -> str:
    """Lay out the docs' example as an installed distribution under ``root``; return its name."""
    module, ep_line = _readme_plugin()
    name, target = (s.strip().strip('"') for s in ep_line.split("=", 1))
    root.mkdir(parents=True, exist_ok=True)
    parts = target.split(":")[0].split(".")
    pkg = root
    for part in parts[:-1]:
        pkg = pkg / part
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").touch()
    (pkg / f"{parts[-1]}.py").write_text(module)
    dist = root / "my_algos-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-algos\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[pwm_bench.algorithms]\n{name} = {target}\n")
    return name


def test_entry_point_algorithm_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    name = _install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(algos, "_ALGOS", {})
    algos.reload_entry_points()
    try:
        assert name in algos.algorithm_names()
        result = run_inprocess(out, algo=name)
        assert result.status == "completed"
        metrics = pd.read_csv(result.run_dir / "metrics.csv")
        assert metrics["env_steps"].iloc[-1] == result.summary["env_steps"] >= result.summary["total_steps"]
        assert metrics["eval/episode_return"].notna().any()
    finally:
        algos.reload_entry_points()
        sys.modules.pop("my_algos", None)


def test_entry_point_algorithm_from_cli(tmp_path: Path, out: Path) -> None:
    name = _install_plugin(tmp_path / "site")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    listing = cli("list", env_extra=env)
    assert listing.returncode == 0 and name in listing.stdout
    res = cli("run", "--algo", name, "--env", "pointmass", "--preset", "smoke", "--out", str(out), env_extra=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("completed:")
    assert list((out / "runs" / "pointmass" / name).glob("*/summary.json"))


def test_broken_entry_point_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pwm_bench.algorithms]\nbroken = no_such_module:ALGORITHM\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    algos.reload_entry_points()
    try:
        assert "ppo" in algos.algorithm_names()
        assert "broken" not in algos.algorithm_names()
        assert "could not load algorithm entry point 'broken'" in caplog.text
    finally:
        algos.reload_entry_points()
