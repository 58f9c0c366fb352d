"""Analysis over the results store (reads only stored runs, never a live one).

- :mod:`~pwm_bench.analysis.experiments`: experiments as data (named grids and their scales).
- :mod:`~pwm_bench.analysis.sweep`: cells, their run folders, the local launcher (``pwm-bench sweep``,
  and ``pwm-bench compare`` as its one-env case); :mod:`~pwm_bench.analysis.ray_launcher`: Ray.
- :mod:`~pwm_bench.analysis.aggregate`: IQM curves, final and best-step scores, normalisation and
  the aggregates over envs (rliable).
- :mod:`~pwm_bench.analysis.figures`: ``pwm-bench plot``: figures, table and manifest.
"""

from pwm_bench.store import load_metrics, runs_table

__all__ = ["load_metrics", "runs_table"]
