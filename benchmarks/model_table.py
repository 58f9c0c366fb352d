"""Learning-step table: measure PWM's and TD-MPC2's learning stages into a JSON file, render the docs' table.

    python benchmarks/model_table.py run benchmarks/results/models-cpu.json   # about 5 minutes on 2 cores
    python benchmarks/model_table.py markdown benchmarks/results/models-cpu.json

``run`` times every case below with ``pwm-bench bench-wm --json`` at every thread count, one fresh
process after another (nothing else should run meanwhile), and writes the rows with the machine,
the versions and the commit. Each row's reference is measured in the same process: a 1024² fp32
matmul, whose GFLOP/s every stage is set against. ``markdown`` prints the table that
docs/performance.md holds; a test checks that the page and the file agree. The Gymnasium case needs
the ``mujoco`` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CASES: tuple[tuple[str, str, str], ...] = (
    ("pwm", "hopper", "cpu"),
    ("pwm", "hopper", "paper"),
    ("tdmpc2", "hopper", "cpu"),
    ("tdmpc2", "gym:InvertedPendulum-v5", "cpu"),
)
"""(algorithm, env, preset) of every measured case."""
THREADS = (1, 2)


def _env_table() -> Any:
    """benchmarks/env_table.py, for its machine description and commit (the same for both files)."""
    spec = importlib.util.spec_from_file_location("env_table", Path(__file__).resolve().parent / "env_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(algo: str, env: str, preset: str, threads: int, repeats: int) -> dict[str, Any]:
    """One ``pwm-bench bench-wm --json`` in a fresh process (this interpreter)."""
    cmd = [sys.executable, "-m", "pwm_bench", "bench-wm", "--algo", algo, "--env", env, "--preset", preset]
    cmd += ["--threads", str(threads), "--repeats", str(repeats), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    (result,) = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(out: Path, cases: list[tuple[str, str, str]], threads: list[int], repeats: int) -> None:
    rows = []
    for algo, env, preset in cases:
        for t in threads:
            row = measure(algo, env, preset, t, repeats)
            rows.append(row)
            print("\n".join(markdown_rows(row)), flush=True)
    et = _env_table()
    data = {"machine": et.machine(), "commit": et.commit(), "command": " ".join(sys.argv), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=1)
    os.replace(f.name, out)


def markdown_rows(row: dict[str, Any]) -> list[str]:
    """One line per stage of a ``bench-wm`` result; the setting is written on its first line."""
    algo = {"pwm": "PWM", "tdmpc2": "TD-MPC2"}[row["algo"]]
    setting = (
        f"| {algo} `{row['preset']}` ({row['parameters'] / 1e3:,.0f}k, batch {row['batch']}) | `{row['env']}` |"
        f" {row['threads']} | {row['matmul_gflops']:.1f} |"
    )
    lines = []
    for i, s in enumerate(row["stages"]):
        lead = setting if i == 0 else "| | | | |"
        lines.append(
            f"{lead} {s['stage']} | {s['ms']:.1f} | {s['gflop']:.3f} | {s['gflops']:.1f} |"
            f" {100 * s['roofline_share']:.0f} % |"
        )
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The docs' table of a ``run`` file."""
    lines = [
        "| model (parameters, batch) | env | threads | matmul GFLOP/s | stage | ms per call | GFLOP per call |"
        " GFLOP/s | of the matmul |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        lines += markdown_rows(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure and write the JSON file")
    r.add_argument("out", type=Path)
    r.add_argument("--threads", default=",".join(map(str, THREADS)))
    r.add_argument("--repeats", type=int, default=7)
    m = sub.add_parser("markdown", help="print the table of a JSON file")
    m.add_argument("file", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.out, list(CASES), [int(t) for t in a.threads.split(",")], a.repeats)
    else:
        print(markdown(json.loads(a.file.read_text())))


if __name__ == "__main__":
    main()
