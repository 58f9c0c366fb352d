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
        normalize_with: env label → the label of the column whose normaliser it uses (the
            stiffness ablation divides every stiffness by the default-stiffness PPO); columns not
            listed use their own.
        variants: algorithm rows that run a registered algorithm with extra overrides: label →
            ``(algo, overrides)`` (``"pwm-mish": ("pwm", {"wm_variant": "mish"})``); a label in
            ``algos`` that is not a variant is an algorithm name.
        extra_metrics: logged training metrics (``metrics.csv`` columns) that the table also
            reports per algorithm and column: each run's median over training, IQM over the seeds
            (blank for algorithms that do not log it).
        series: algorithm rows that are points of a line against a numeric setting: label →
            ``(line, x)`` (``"pwm-wm5k": ("pwm", 5000)``); ``plot`` then draws ``series.png|pdf``,
            each line's final and best-step IQM with 95 % CIs against ``x``.
        series_axis: the x axis of that figure, with its unit.
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
    normalize_with: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_metrics: tuple[str, ...] = ()
    variants: Mapping[str, tuple[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    series: Mapping[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    series_axis: str = ""

    def algo_name(self, label: str) -> str:
        """The registered algorithm of an algorithm row (a variant's algorithm, or the label itself)."""
        return self.variants[label][0] if label in self.variants else label

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

    def algo_name(self, label: str) -> str:
        """The registered algorithm of the algorithm row ``label``."""
        return self.experiment.algo_name(label)

    def cell_overrides(self, algo: str, case: EnvCase) -> dict[str, Any]:
        """All ``--set`` overrides of the cell of algorithm row ``algo`` (``env.`` prefixed for the env's
        options): the selection's, the algorithm's, the variant's, then the env's."""
        exp = self.experiment
        ov = dict(self.overrides)
        ov.update(exp.algo_overrides.get(exp.algo_name(algo), {}))
        if algo in exp.variants:
            ov.update(exp.variants[algo][1])
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
        get_algorithm(exp.algo_name(a))
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


def standard_scales(smoke: Scale, cpu: Scale | None = None, paper: Scale | None = None) -> dict[str, Scale]:
    """The usual three scales: ``smoke`` as given, ``cpu`` 3 seeds and ``paper`` 5 seeds unless given."""
    return {
        "smoke": smoke,
        "cpu": cpu or Scale(preset="cpu", seeds=3),
        "paper": paper or Scale(preset="paper", seeds=5),
    }


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
        # smoke: every algorithm's wiring on the hopper in minutes (runs do not learn); CI runs it
        scales=standard_scales(Scale(preset="smoke", seeds=2, envs=("hopper",))),
        normalizer="ppo",
        reference="pwm_single_task",
        focus="pwm",
    )


register_experiment(_single_task())

STIFFNESS_KE = (2.0e4, 5.0e4, 1.0e5, 2.0e5)
"""Hopper contact stiffnesses of the ``stiffness`` experiment [N/m]; the paper's stiff one is 1e5."""


def _stiffness() -> Experiment:
    # the env's default contact (ke 2e4, kd 1e3: DiffRL's hopper) is the first column; the stiffer
    # ones take kd = ke / 10, as the paper's stiff hopper (ke 1e5, kd 1e4) does
    envs = [EnvCase("hopper")] + [
        EnvCase("hopper", {"contact_ke": ke, "contact_kd": ke / 10}, f"hopper ke {ke:.0e}".replace("+0", ""))
        for ke in STIFFNESS_KE[1:]
    ]
    return Experiment(
        name="stiffness",
        description=(
            "the contact-stiffness ablation: PPO, SHAC, PWM on the hopper at ke 2e4 (default), 5e4, 1e5 (the "
            "paper's stiff one), 2e5, all normalised by the default-stiffness PPO"
        ),
        algos=("ppo", "shac", "pwm"),
        envs=tuple(envs),
        # PWM's model is pretrained on data of each column's own stiffness; `--algos pwm --set
        # collect_default_env=true` starts every column from the default stiffness's model instead
        scales=standard_scales(Scale(preset="smoke", seeds=2, envs=("hopper", "hopper ke 1e5"))),
        normalizer="ppo",
        reference="pwm_stiffness",
        focus="pwm",
        normalize_with={c.name: "hopper" for c in envs[1:]},
        # SHAC's actor gradient through the stiffer contact: its norm before clipping
        extra_metrics=("grad_norm/actor",),
    )


register_experiment(_stiffness())


def _wm_type() -> Experiment:
    return Experiment(
        name="wm-type",
        description=(
            "the world-model-type ablation: PWM with SimNorm (default), Mish (no SimNorm) and ReLU world models "
            "on the hopper and the ant; the models' error on new data and gradient alignment beside the returns"
        ),
        algos=("pwm", "pwm-mish", "pwm-relu"),
        envs=(EnvCase("hopper"), EnvCase("ant")),
        variants={"pwm-mish": ("pwm", {"wm_variant": "mish"}), "pwm-relu": ("pwm", {"wm_variant": "relu"})},
        scales=standard_scales(Scale(preset="smoke", seeds=2, envs=("hopper",))),
        # no PPO in the grid: scores are normalised by the published PPO returns only
        normalizer="ppo",
        reference="pwm_wm_type",
        focus="pwm",
        # the model's loss on the newest data (before it trains on them) and the cosine between the
        # gradients of the imagined and the simulated return (see `pwm-bench wm-check`)
        extra_metrics=("wm/newest_consistency", "wm/newest_reward", "pwm/grad_cosine"),
    )


register_experiment(_wm_type())

WM_BUDGETS = (2_000, 5_000, 20_000, 50_000, 100_000, 250_000)
"""World-model pretraining budgets [gradient steps] of ``wm-budget``: 2k-50k at cpu, 50k-250k at paper."""


def _budget_label(algo: str, steps: int) -> str:
    return f"{algo}-wm{steps // 1000}k"


def _wm_budget() -> Experiment:
    pwm = {b: _budget_label("pwm", b) for b in WM_BUDGETS}
    td = {b: _budget_label("tdmpc2", b) for b in WM_BUDGETS}

    def at(*budgets: int) -> tuple[str, ...]:
        return tuple(pwm[b] for b in budgets) + tuple(td[b] for b in budgets)

    return Experiment(
        name="wm-budget",
        description=(
            "the world-model-budget ablation: PWM policies and TD-MPC2's policy-only training on the same frozen "
            "world models, pretrained for 2k-50k (cpu) or 50k-250k (paper) steps, on the hopper"
        ),
        algos=at(*WM_BUDGETS),
        envs=(EnvCase("hopper"),),
        # every policy gets its preset's budget on a model that is never trained again: PWM with
        # online fine-tuning off, TD-MPC2 training only its Qs and policy prior (the paper's baseline);
        # both take PWM's pipeline model of the cell's seed, pretrained for the row's steps
        variants={
            **{lab: ("pwm", {"pretrain_steps": b, "finetune_wm": False}) for b, lab in pwm.items()},
            **{lab: ("tdmpc2", {"policy_only": True, "pwm_pretrain_steps": b}) for b, lab in td.items()},
        },
        series={
            **{lab: ("pwm", b) for b, lab in pwm.items()},
            **{lab: ("tdmpc2 (policy only)", b) for b, lab in td.items()},
        },
        series_axis="world-model pretraining [gradient steps]",
        scales=standard_scales(
            Scale(preset="smoke", seeds=2, algos=at(2_000, 5_000)),
            Scale(preset="cpu", seeds=3, algos=at(2_000, 5_000, 20_000, 50_000)),
            Scale(preset="paper", seeds=5, algos=at(50_000, 100_000, 250_000)),
        ),
        # the paper's numbers are on DMC tasks (and its PWM points were typed in by hand): nothing to
        # normalise by or compare with on the hopper; raw returns
        normalizer=None,
        reference=None,
        focus=None,
        extra_metrics=("wm/newest_consistency", "wm/newest_reward", "pwm/grad_cosine"),
    )


register_experiment(_wm_budget())

_SCALE: dict[str, Any] = {"wm_reward_norm": "scale"}
"""The earlier defaults' reward units (``r / σ``, not centred), on which most rows were measured."""

PWM_ABLATIONS: dict[str, dict[str, Any]] = {
    # the defaults (the reference's reward units) and, against them, the control and one option
    "pwm": {},
    # the control: PWM's actor-critic on the simulator's dynamics and gradients (optimiser error alone)
    "pwm-sim": {"dynamics": "simulator"},
    "pwm-no-value-grad": {"value_gradient": False},
    # the earlier defaults (reward units r / σ) and, against them, the reference's choices (and this
    # project's earlier ones) one at a time; the reference's reward units won here and became the defaults
    "pwm-scale": _SCALE,
    "pwm-scale-sim": {**_SCALE, "dynamics": "simulator"},
    "pwm-scale-reward-sum": {**_SCALE, "wm_reward_coef": 1.0},
    "pwm-scale-frozen-encoder": {**_SCALE, "finetune_encoder": False},
    "pwm-scale-lr-decay": {**_SCALE, "wm_lr_schedule": "linear"},
    "pwm-scale-new-data-only": {**_SCALE, "finetune_offline_fraction": 0.0},
    "pwm-scale-wm-iters-8": {**_SCALE, "wm_iterations": 8},
    "pwm-scale-more-data": {**_SCALE, "collect_steps": 1_024_000, "pretrain_steps": 10_000},
    # the window's whole return gradient, through the policy's response to the imagined latents
    "pwm-scale-attached": {**_SCALE, "detach_actor_input": False},
    # options beyond the reference
    "pwm-scale-partial-term": {**_SCALE, "wm_windows": "partial", "wm_termination": True},
    "pwm-scale-action-bound": {**_SCALE, "action_bound_coef": 1.0},
    "pwm-scale-no-value-grad": {**_SCALE, "value_gradient": False},
}
"""Rows of ``pwm-ablations``: label -> PWM overrides (see docs/pwm.md for what each one changes)."""


def _pwm_ablations() -> Experiment:
    labels = tuple(PWM_ABLATIONS)
    return Experiment(
        name="pwm-ablations",
        description=(
            "why PWM does or does not beat SHAC on the hopper: PWM's defaults, its actor-critic on the simulator "
            "(the control), each of the reference's world-model choices and a few options, one at a time (against "
            "the earlier defaults' reward units), beside SHAC"
        ),
        algos=(*labels, "shac"),
        envs=(EnvCase("hopper"),),
        variants={lab: ("pwm", ov) for lab, ov in PWM_ABLATIONS.items() if lab != "pwm"},
        # smoke: the wiring of a few rows (the control, a re-pretrained model, an option) in minutes
        scales=standard_scales(
            Scale(
                preset="smoke",
                seeds=2,
                algos=("pwm", "pwm-sim", "pwm-scale", "pwm-scale-reward-sum", "pwm-scale-partial-term", "shac"),
            )
        ),
        # raw returns: no PPO in the grid; probability of improvement of the defaults over each row
        normalizer=None,
        reference=None,
        focus="pwm",
        # pwm/grad_cosine: the H-step reward gradient, model against simulator; pwm/actor_grad_cosine: the
        # actor's whole update (bootstrap included), model window against simulator window
        extra_metrics=("pwm/saturated", "wm/newest_reward", "pwm/grad_cosine", "pwm/actor_grad_cosine"),
    )


register_experiment(_pwm_ablations())


REFERENCE_DIR = Path(__file__).resolve().parents[1] / "results" / "reference"
"""Where the committed tables of published numbers live (``results/reference/`` of the source tree)."""
