"""The documentation builds (MkDocs, strict: a broken link, a missing page or a bad docstring fails),
and the README's links point at files that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_docs_build_strictly_and_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    done = _build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index", "cli", "api", "pwm", "reference"):
        assert (tmp_path / "site" / ("" if page == "index" else page) / "index.html").exists()
    # the same docs with one link to a page that does not exist
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    with (copy / "docs" / "cli.md").open("a") as fh:
        fh.write("\nSee [the missing page](missing.md).\n")
    broken = _build(copy, tmp_path / "site2")
    assert broken.returncode != 0 and "missing.md" in broken.stderr


def test_every_relative_link_of_the_readme_exists() -> None:
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local and all((REPO / t).exists() for t in local), [t for t in local if not (REPO / t).exists()]


@pytest.mark.parametrize(("script", "results"), [("env_table", "envs-cpu"), ("model_table", "models-cpu")])
def test_the_throughput_tables_are_the_benchmark_files(script: str, results: str) -> None:
    """docs/performance.md holds exactly the tables that benchmarks/*_table.py render from their JSON."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(script, REPO / "benchmarks" / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = json.loads((REPO / "benchmarks" / "results" / f"{results}.json").read_text())
    assert {"cpu", "cores", "torch", "warp", "newton"} <= set(data["machine"]) and data["rows"]
    assert module.markdown(data) in (REPO / "docs" / "performance.md").read_text()
