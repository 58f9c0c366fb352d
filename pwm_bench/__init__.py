"""pwm-bench: policy learning with differentiable simulation and large world models.

The harness (CLI, registries, configs, runs, results store) lives in this package; environments,
baselines and analysis are installed as :mod:`pwm_bench.envs`, :mod:`pwm_bench.baselines` and
:mod:`pwm_bench.analysis`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pwm-bench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
