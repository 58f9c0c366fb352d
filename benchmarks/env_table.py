"""Env throughput table: measure it into a JSON file, and render the docs' table from that file.

    python benchmarks/env_table.py run benchmarks/results/envs-cpu.json   # about 10 minutes on 2 cores
    python benchmarks/env_table.py markdown benchmarks/results/envs-cpu.json

``run`` measures every env at every thread count with ``pwm-bench bench-env --differentiable
--json``, one fresh process after another (nothing else should run meanwhile), and writes the rows
with the machine, the versions and the commit. The reference of each row is measured in the same
run: forward + backward is given as a ratio to the forward throughput, and each thread count as a
ratio to one thread. ``markdown`` prints the table that docs/performance.md holds; a test checks
that the page and the file agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENVS = ("hopper", "ant", "humanoid", "muscle_humanoid")
THREADS = (1, 2)


def machine() -> dict[str, Any]:
    """CPU model, core count, OS and the versions that set the numbers."""
    import newton
    import torch
    import warp

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "warp": warp.__version__,
        "newton": newton.__version__,
    }


def commit() -> str:
    """The repository's commit (with ``+dirty`` for uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True)
    except OSError:
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def measure(env: str, threads: int, num_envs: int, steps: int) -> dict[str, Any]:
    """One ``pwm-bench bench-env --differentiable --json`` in a fresh process (this interpreter)."""
    cmd = [sys.executable, "-m", "pwm_bench", "bench-env", "--env", env, "--num-envs", str(num_envs)]
    cmd += ["--steps", str(steps), "--differentiable", "--threads", str(threads), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(out: Path, envs: list[str], threads: list[int], num_envs: int, steps: int) -> None:
    rows = []
    for env in envs:
        base = None
        for t in threads:
            r = measure(env, t, num_envs, steps)
            base = base or r
            row = {k: r[k] for k in ("env", "num_envs", "threads", "sim_threads", "forward_sps")}
            row["forward_backward_sps"] = r["forward_backward_sps"]
            row["backward_ratio"] = r["forward_backward_sps"] / r["forward_sps"]
            row["forward_vs_first"] = r["forward_sps"] / base["forward_sps"]
            row["forward_backward_vs_first"] = r["forward_backward_sps"] / base["forward_backward_sps"]
            rows.append(row)
            print(markdown_row(row), flush=True)
    data = {"machine": machine(), "commit": commit(), "command": " ".join(sys.argv), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=1)
    os.replace(f.name, out)


def markdown_row(row: dict[str, Any]) -> str:
    return (
        f"| `{row['env']}` | {row['threads']} | {row['sim_threads']} | {row['forward_sps']:,.0f} |"
        f" {row['forward_backward_sps']:,.0f} | {row['backward_ratio']:.2f} |"
        f" {row['forward_vs_first']:.2f} / {row['forward_backward_vs_first']:.2f} |"
    )


def markdown(data: dict[str, Any]) -> str:
    """The docs' table of a ``run`` file."""
    lines = [
        "| env | threads | worlds on | forward | forward + backward | ratio | vs the env's first row (fwd / fwd+bwd) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [markdown_row(r) for r in data["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure and write the JSON file")
    r.add_argument("out", type=Path)
    r.add_argument("--envs", default=",".join(ENVS))
    r.add_argument("--threads", default=",".join(map(str, THREADS)))
    r.add_argument("--num-envs", type=int, default=256)
    r.add_argument("--steps", type=int, default=48)
    m = sub.add_parser("markdown", help="print the table of a JSON file")
    m.add_argument("file", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.out, a.envs.split(","), [int(t) for t in a.threads.split(",")], a.num_envs, a.steps)
    else:
        print(markdown(json.loads(a.file.read_text())))


if __name__ == "__main__":
    main()
