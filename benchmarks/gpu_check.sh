#!/usr/bin/env bash
# The whole CUDA path on a GPU machine in under 10 minutes:
#   1. the tests marked `gpu` (CUDA envs against CPU, CUDA-graph capture, gradients, smoke runs);
#   2. env throughput (forward, forward+backward) and world-model / policy latency benchmarks on CUDA;
#   3. a few minutes of the `paper` PWM hopper pipeline (shortened budgets), with steps/s and s/iteration.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (results, JSON and logs go to OUT_DIR, default gpu-check/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
step() { echo "== $1 ($(date +%T))"; }

step "gpu tests"
timeout 240 python -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.txt" || status=1

step "env throughput (4096 worlds)"
PWM_BENCH_DEVICE=cuda PWM_BENCH_NUM_ENVS=4096 timeout 150 python -m pytest benchmarks/test_bench_envs.py -q \
    -k "hopper or ant" --benchmark-json "$OUT/bench_envs.json" -p no:cacheprovider 2>&1 | tail -3 || status=1

step "world model and policy latency"
PWM_BENCH_DEVICE=cuda timeout 90 python -m pytest benchmarks/test_bench_agents.py -q -k "pwm or update" \
    --benchmark-json "$OUT/bench_agents.json" -p no:cacheprovider 2>&1 | tail -3 || status=1

step "PWM learning stages against a same-run matmul"
timeout 60 pwm-bench bench-wm --device cuda --repeats 20 --json > "$OUT/bench_wm.json" || status=1
timeout 60 pwm-bench bench-wm --device cuda --repeats 20 2>&1 | tail -16 || status=1

step "paper-preset PWM pipeline on the hopper (shortened)"
timeout 200 pwm-bench run --algo pwm --env hopper --preset paper --device cuda --out "$OUT/results" --quiet \
    --set collect_steps=262144 --set pretrain_steps=2000 --set total_steps=1024000 --set eval_every=204800 \
    2>&1 | tail -5 || status=1

step "summary"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
for name in ("bench_envs.json", "bench_agents.json"):
    f = out / name
    if f.exists():
        for b in json.loads(f.read_text())["benchmarks"]:
            extra = {k: round(v, 1) if isinstance(v, float) else v for k, v in b.get("extra_info", {}).items()}
            print(f"{b['name']}: median {b['stats']['median'] * 1e3:.2f} ms {extra}")
for run in sorted((out / "results" / "runs").glob("*/*/*")):
    m = run / "metrics.csv"
    if not m.exists():
        continue
    df = pd.read_csv(m)
    dt = df["wall_time"].diff().median()
    sps = df["time/sps"].median() if "time/sps" in df else float("nan")
    print(f"{run.relative_to(out / 'results' / 'runs')}: {len(df)} iterations, {dt:.3f} s/iteration, {sps:.0f} env steps/s")
for wm in sorted((out / "results" / "world_models").glob("*/summary.json")):
    s = json.loads(wm.read_text())
    print(f"world model {wm.parent.name}: {s['step']} steps in {s['wall_time']:.0f} s ({s['step'] / s['wall_time']:.1f} steps/s)")
PY
exit $status
