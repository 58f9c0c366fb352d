"""Experiments as data: named grids of algorithms × envs (with env options) × seeds × overrides.

An :class:`Experiment` says what to run; a :class:`Scale` says how big: which preset every run
uses, how many seeds, and optionally a subset of the grid or extra overrides. ``pwm-bench sweep
NAME --scale S`` turns the pair into :class:`~pwm_bench.compare.Cell` objects (one run each, with a
run id hashed from the cell's resolved configs, the same ids ``pwm-bench compare`` gives), and
``pwm-bench plot NAME`` reads the same cells back from the results store.

Built-in experiments are defined in this module (:data:`EXPERIMENTS`); a project can add its own
with :func:`register_experiment`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pwm_bench.errors import UsageError, unknown_choice

SCALES = ("smoke", "cpu", "paper")
"""Scale names; each experiment defines some of them."""


@dataclasses.dataclass(frozen=True)
class EnvCase:
    """One env column of an experiment: an env name plus env options (``--set env.KEY=VALUE``).

    ``label`` names the column in figures and tables (default: the env name); two cases of the
    same env with different options (a stiffness ablation) need different labels.
    """

    env: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.env


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big an experiment runs.

    Attributes:
        preset: the algorithms' preset (``smoke`` | ``cpu`` | ``paper``).
        seeds: seeds 0..seeds-1 per cell.
        envs: labels of the env cases run at this scale (None: all of them).
        algos: algorithms run at this scale (None: all of them).
        overrides: extra ``--set`` overrides for every run at this scale.
    """

    preset: str
    seeds: int
    envs: tuple[str, ...] | None = None
    algos: tuple[str, ...] | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named grid of runs.

    Attributes:
        name: registry name (``pwm-bench sweep NAME``).
        description: one line for ``pwm-bench list``.
        algos: algorithms, in the order figures and tables show them.
        envs: env cases (columns).
        scales: the scales this experiment defines, by name.
        overrides: ``--set`` overrides for every run.
        algo_overrides: per-algorithm overrides (applied after ``overrides``).
        normalizer: algorithm whose max-over-training IQM return normalises each env's scores
            (the PWM paper's PPO normalisation); None: raw returns only.
        reference: name of the published table in ``results/reference/`` drawn beside the
            measured scores (None: none).
        focus: the algorithm whose probability of improvement over each other one is plotted.
    """

    name: str
    description: str
    algos: tuple[str, ...]
    envs: tuple[EnvCase, ...]
    scales: Mapping[str, Scale]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    algo_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    normalizer: str | None = "ppo"
    reference: str | None = None
    focus: str | None = "pwm"

    def scale(self, name: str) -> Scale:
        """The scale called ``name``; raises :class:`UsageError` naming the valid ones."""
        if name not in self.scales:
            raise unknown_choice(f"scale of experiment '{self.name}'", name, list(self.scales))
        return self.scales[name]

    def env_case(self, label: str) -> EnvCase:
        for case in self.envs:
            if case.name == label:
                return case
        raise unknown_choice(f"env of experiment '{self.name}'", label, [c.name for c in self.envs])


@dataclasses.dataclass(frozen=True)
class Selection:
    """The cells of one experiment at one scale, after command-line narrowing."""

    experiment: Experiment
    scale: str
    preset: str
    algos: tuple[str, ...]
    envs: tuple[EnvCase, ...]
    seeds: tuple[int, ...]
    overrides: Mapping[str, Any]
    """Overrides common to every cell (experiment, scale and command line)."""

    def cell_overrides(self, algo: str, case: EnvCase) -> dict[str, Any]:
        """All ``--set`` overrides of the cell (``env.`` prefixed for the env's options)."""
        ov = dict(self.overrides)
        ov.update(self.experiment.algo_overrides.get(algo, {}))
        ov.update({f"env.{k}": v for k, v in case.options.items()})
        return ov


def select(
    exp: Experiment,
    scale: str,
    *,
    algos: Sequence[str] | None = None,
    envs: Sequence[str] | None = None,
    seeds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Selection:
    """Resolve ``exp`` at ``scale``, narrowed or widened by the command line.

    ``algos`` may name any registered algorithm (also ones the experiment does not list: that is
    how a new algorithm joins a study); ``envs`` are labels of the experiment's env cases or names
    of registered envs; ``seeds`` replaces the scale's seed count.

    Raises:
        UsageError: unknown scale, algorithm or env, or a non-positive seed count.
    """
    from pwm_bench.algos import get_algorithm
    from pwm_bench.envs import env_spec

    sc = exp.scale(scale)
    chosen_algos = tuple(algos) if algos else (sc.algos or exp.algos)
    if not chosen_algos:
        raise UsageError("--algos needs at least one algorithm")
    for a in chosen_algos:
        get_algorithm(a)
    if envs:
        labels = {c.name: c for c in exp.envs}
        cases = []
        for e in envs:
            if e in labels:
                cases.append(labels[e])
            else:
                env_spec(e)  # raises naming the registered envs
                cases.append(EnvCase(e))
        chosen_envs = tuple(cases)
    else:
        chosen_envs = tuple(c for c in exp.envs if sc.envs is None or c.name in sc.envs)
    if not chosen_envs:
        raise UsageError(f"experiment '{exp.name}' has no env at scale '{scale}'")
    n = sc.seeds if seeds is None else seeds
    if n <= 0:
        raise UsageError(f"--seeds must be positive, got {n}")
    ov = {**exp.overrides, **sc.overrides, **(overrides or {})}
    return Selection(exp, scale, sc.preset, chosen_algos, chosen_envs, tuple(range(n)), ov)


_EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(exp: Experiment) -> Experiment:
    """Add ``exp`` to the registry (replacing one of the same name) and return it."""
    for s in exp.scales.values():
        if s.preset not in SCALES:
            raise ValueError(f"experiment {exp.name}: unknown preset {s.preset!r}")
    _EXPERIMENTS[exp.name] = exp
    return exp


def experiments() -> dict[str, Experiment]:
    """Registered experiments by name."""
    return dict(_EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; raises :class:`UsageError` naming the valid ones."""
    if name not in _EXPERIMENTS:
        raise unknown_choice("experiment", name, sorted(_EXPERIMENTS))
    return _EXPERIMENTS[name]


def _snu_files_given() -> bool:
    from pwm_bench.envs.locomotion import mass_files

    try:
        mass_files()
    except UsageError:
        return False
    return True


def _single_task() -> Experiment:
    envs = [EnvCase("hopper"), EnvCase("ant"), EnvCase("humanoid"), EnvCase("muscle_humanoid")]
    if _snu_files_given():
        envs.append(EnvCase("snu_humanoid"))
    return Experiment(
        name="single-task",
        description=(
            "the PWM paper's main comparison: PPO, SAC, SHAC, TD-MPC2, PWM on hopper, ant, humanoid, "
            "muscle_humanoid (and snu_humanoid when $PWM_BENCH_MASS_DIR holds the MASS files)"
        ),
        algos=("ppo", "sac", "shac", "tdmpc2", "pwm"),
        envs=tuple(envs),
        scales={
            # smoke: every algorithm's wiring on the hopper in minutes (runs do not learn); CI runs it
            "smoke": Scale(preset="smoke", seeds=2, envs=("hopper",)),
            "cpu": Scale(preset="cpu", seeds=3),
            "paper": Scale(preset="paper", seeds=5),
        },
        normalizer="ppo",
        reference="pwm_single_task",
        focus="pwm",
    )


register_experiment(_single_task())


REFERENCE_DIR = Path(__file__).resolve().parents[1] / "results" / "reference"
"""Where the committed tables of published numbers live (``results/reference/`` of the source tree)."""
