"""pwm-bench: policy learning with differentiable simulation and large world models.

``pwm_bench.train``, ``pwm_bench.load_policy`` and ``pwm_bench.make_env`` are the Python API (see
:mod:`pwm_bench.api`). The harness (CLI, registries, configs, runs, results store) lives in this package; environments,
baselines and analysis are installed as :mod:`pwm_bench.envs`, :mod:`pwm_bench.baselines` and
:mod:`pwm_bench.analysis`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pwm-bench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__", "load_policy", "make_env", "train"]

_API = {
    "train": "pwm_bench.api",
    "load_policy": "pwm_bench.api",
    "make_env": "pwm_bench.envs",
    "Result": "pwm_bench.api",
}


def __getattr__(name: str) -> object:
    """``pwm_bench.train``, ``load_policy``, ``make_env`` and ``Result``, imported on first use (so
    ``import pwm_bench`` stays light for the command line)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pwm_bench' has no attribute {name!r}")
