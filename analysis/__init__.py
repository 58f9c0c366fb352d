"""Analysis over the results store (reads only stored runs, never a live one).

For now the run index and per-run metrics; aggregate metrics (IQM, optimality gap, bootstrap CIs)
and the paper's figures build on these.
"""

from pwm_bench.store import load_metrics, runs_table

__all__ = ["load_metrics", "runs_table"]
