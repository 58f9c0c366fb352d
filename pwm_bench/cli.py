"""The ``pwm-bench`` command line: run, compare, sweep, plot, collect, datasets, pretrain-wm, wm-check,
list, results, show, render, view, bench-env, bench-wm.

Bad input (unknown names, bad ``--set`` values, missing CUDA) prints one line naming the valid
choices and exits with code 2. ``run`` exits 0 when the run completed, 1 when it failed (NaN/inf)
and 130 when it was interrupted (it can then be resumed with ``--resume``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pwm_bench.errors import RunInterrupted, UsageError, unknown_choice
from pwm_bench.store import check_name, one_line

if TYPE_CHECKING:
    from pwm_bench.analysis.experiments import Selection

app = typer.Typer(
    name="pwm-bench",
    help="Benchmark suite for policy learning with differentiable simulation and world models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _console():
    from rich.console import Console

    # Off a terminal rich assumes 80 columns; tables of runs need more to stay readable in logs.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


STORE_FOLDERS = ("runs", "datasets", "world_models", "figures")
"""Folders of a results root that must be folders when they exist."""


def _check_out(out: Path) -> None:
    """``--out`` must be a folder (or not exist yet) whose store folders are folders, not files."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder (it is created if missing)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is a file, not a folder")
            break
    for sub in STORE_FOLDERS:
        if (out / sub).exists() and not (out / sub).is_dir():
            raise UsageError(f"{out / sub} is a file where the results store keeps a folder; move it away")


def _check_file_target(path: Path | None, flag: str) -> None:
    """A file to write (``--csv``): not a folder, inside an existing folder."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name such as {path / 'table.csv'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: {path.parent} is not a folder")


def _setup_logging(fancy: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if fancy:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("pwm_bench").setLevel(logging.INFO)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pwm-bench run --algo ppo --env gym:Pendulum-v1\n\n"
        "  pwm-bench run --algo ppo --env pointmass --preset smoke --seed 3\n\n"
        "  pwm-bench run --algo ppo --env gym:Pendulum-v1 --set lr=1e-3 --set hidden=[128,128]\n\n"
        "  pwm-bench run --algo shac --env hopper --logger csv,tensorboard\n\n"
        "  pwm-bench run --resume results/runs/gym-Pendulum-v1/ppo/20261121-101500-s0-ab12"
    )
)
def run(
    algo: Annotated[str | None, typer.Option(help="Algorithm name (see `pwm-bench list`).")] = None,
    env: Annotated[str | None, typer.Option(help="Environment name, or gym:<id> for a gymnasium env.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [default: 0].")] = None,
    preset: Annotated[str | None, typer.Option(help="smoke | cpu | paper [default: cpu].")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config field, key=value (repeatable). Keys starting with 'env.' go to the env.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root; runs go to OUT/runs/<env>/<algo>/<run-id>.")] = Path(
        "results"
    ),
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its latest checkpoint.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a progress bar.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for torch [default: torch's]; use 1 when several runs share a machine."),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="Name of the run folder [default: <date>-<time>-s<seed>-<random>].")
    ] = None,
    logger: Annotated[
        str | None,
        typer.Option(help="Loggers, comma-separated: csv (always), tensorboard, wandb (offline) [default: csv]."),
    ] = None,
) -> None:
    """Train one algorithm on one environment and record the run in the results store."""
    from pwm_bench.config import parse_set_options
    from pwm_bench.progress import LogReporter, RichReporter
    from pwm_bench.runner import RunRequest, execute

    fancy = sys.stdout.isatty() and not quiet
    _check_out(out)
    _setup_logging(fancy)
    reporter = RichReporter() if fancy else LogReporter()
    try:
        request = RunRequest(
            algo=algo,
            env=env,
            seed=seed,
            preset=preset,
            device=device,
            overrides=parse_set_options(set_ or []),
            out=out,
            resume=resume,
            reporter=reporter,
            threads=threads,
            run_id=run_id,
            loggers=logger,
        )
        result = execute(request)
    except UsageError as exc:
        reporter.stop()
        raise _fail(str(exc)) from None
    if result.status == "interrupted" and not result.run_dir.exists():
        typer.echo(f"interrupted before training started: {result.error}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    s = result.summary

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    typer.echo(
        f"{result.status}: eval return {fmt(s.get('final_eval_return'))} (best {fmt(s.get('best_eval_return'))}, "
        f"random actions {fmt(s.get('random_eval_return'))}) "
        f"after {s.get('env_steps', 0):,} env steps in {s.get('wall_time', 0.0):.0f} s -> {result.run_dir}"
    )
    if s.get("tasks"):
        # task sets: per-task returns and normalized scores (0 = random actions, 1 = the data's collector)
        for name, t in s["tasks"].items():
            score = "—" if t.get("score") is None else f"{t['score']:.3f}"
            typer.echo(f"  {name:<28} return {t['return']:10.1f}   score {score}")
        score_mean, score_iqm = s.get("score_mean"), s.get("score_iqm")
        if score_mean is not None:
            typer.echo(f"  normalized score: mean {score_mean:.3f}, IQM {score_iqm:.3f} over {len(s['tasks'])} tasks")
    if result.status == "failed":
        typer.echo(f"error: {result.error}", err=True)
        raise typer.Exit(EXIT_FAILED)
    if result.status == "interrupted":
        typer.echo(f"resume with: pwm-bench run --resume {result.run_dir}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)


MAX_SEEDS = 1000
"""Most seeds one command line may ask for."""


def _split_names(text: str | None, what: str = "--algos") -> list[str] | None:
    """Comma-separated names; an empty item (``ppo,,sac``) or a repeated one is a UsageError."""
    if not text:
        return None
    names = [a.strip() for a in text.split(",")]
    if any(not n for n in names):
        raise UsageError(f"{what} {text!r} has an empty name; give comma-separated names like ppo,shac")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"{what} names {', '.join(dup)} more than once")
    return names


MAX_JOBS = 256
"""Most cells one machine may run at once."""


def _check_jobs(jobs: int) -> None:
    if not 0 < jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be in [1, {MAX_JOBS}], got {jobs}")


def _check_seeds(seeds: int | None) -> None:
    if seeds is not None and not 0 < seeds <= MAX_SEEDS:
        raise UsageError(f"--seeds must be in [1, {MAX_SEEDS}], got {seeds}")


def _select(
    experiment: str, scale: str, algos: str | None, envs: str | None, seeds: int | None, set_: list[str] | None
) -> Selection:
    """The experiment's cells at ``scale`` as the command line narrows them (raises UsageError)."""
    from pwm_bench.analysis.experiments import get_experiment, select
    from pwm_bench.config import parse_set_options

    _check_seeds(seeds)
    return select(
        get_experiment(experiment),
        scale,
        algos=_split_names(algos),
        envs=_split_names(envs, "--envs"),
        seeds=seeds,
        overrides=parse_set_options(set_ or []),
    )


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pwm-bench sweep single-task --scale smoke\n\n"
        "  pwm-bench sweep single-task --scale cpu --envs hopper,ant --jobs 2\n\n"
        "  pwm-bench sweep single-task --scale smoke --algos myalgo,shac,pwm --envs hopper\n\n"
        "  pwm-bench sweep single-task --scale cpu --launcher ray --ray-address auto --out /shared/results"
    )
)
def sweep(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `pwm-bench list`).")],
    scale: Annotated[str, typer.Option(help="smoke | cpu | paper (those the experiment defines).")] = "cpu",
    algos: Annotated[
        str | None, typer.Option(help="Comma-separated algorithms instead of the experiment's (any registered one).")
    ] = None,
    envs: Annotated[str | None, typer.Option(help="Comma-separated env columns instead of the scale's.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 instead of the scale's count.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override for every run, key=value (repeatable).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root (for Ray: a path every node sees).")] = Path("results"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    launcher: Annotated[str, typer.Option(help="local | ray.")] = "local",
    jobs: Annotated[int, typer.Option(help="Local launcher: cells at once (subprocesses); 1 runs them here.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads per cell [default: local cpu_count // jobs, ray 1].")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (auto, ray://host:10001) [default: a local instance].")
    ] = None,
    gpus_per_cell: Annotated[float, typer.Option(help="Ray launcher: GPUs each cell asks for.")] = 0.0,
    retry_failed: Annotated[bool, typer.Option(help="Also rerun cells whose run failed earlier.")] = False,
    dry_run: Annotated[bool, typer.Option(help="List the cells and their state; run nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of progress bars.")] = False,
) -> None:
    """Run every missing cell of an experiment into the results store.

    Completed cells are reused, interrupted or dead ones resumed from their latest checkpoint,
    missing ones started; a failed cell is reported and the sweep goes on (and is left alone by
    later sweeps unless --retry-failed). Ctrl-C stops the whole sweep: running cells save a
    checkpoint, and the same command continues it. Then `pwm-bench plot EXPERIMENT --scale S`.
    """
    from pwm_bench.analysis.sweep import GridInterrupted, SweepMonitor, cell_status, run_cells
    from pwm_bench.progress import LogReporter, RichReporter
    from pwm_bench.runner import check_threads, resolve_device

    fancy = sys.stdout.isatty() and not quiet
    _check_out(out)
    _setup_logging(fancy)
    try:
        from pwm_bench.analysis.studies import studies

        if experiment in studies():
            raise UsageError(f"'{experiment}' has nothing to sweep; `pwm-bench plot {experiment}` computes it")
        if launcher not in ("local", "ray"):
            raise UsageError(f"unknown launcher '{launcher}'; valid choices: local, ray")
        _check_jobs(jobs)
        check_threads(threads)
        if launcher == "local":
            resolve_device(device)
        from pwm_bench.analysis.aggregate import selection_cells

        sel = _select(experiment, scale, algos, envs, seeds, set_)
        cells = selection_cells(sel, out)
    except UsageError as exc:
        raise _fail(str(exc)) from None
    states = [cell_status(c) for c in cells]
    typer.echo(
        f"{experiment} at scale {scale} (preset {sel.preset}): {len(cells)} cells = {len(sel.algos)} algos x "
        f"{len(sel.envs)} envs x {len(sel.seeds)} seeds; "
        + ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    )
    if dry_run:
        wa = max([8, *(len(c.algo_label) for c in cells)])
        we = max([16, *(len(c.env_label) for c in cells)])
        for c, st in zip(cells, states, strict=True):
            typer.echo(f"  {st:<11} {c.algo_label:<{wa}} {c.env_label:<{we}} seed {c.seed}  {c.run_dir}")
        return
    parallel = jobs if launcher == "local" else max(1, len(cells))
    display = "bar" if fancy and (launcher == "ray" or jobs > 1) else "log"
    monitor = SweepMonitor(len(cells), states.count("completed"), parallel, display)
    try:
        if launcher == "local":
            run_cells(
                cells,
                device=device,
                out=out,
                jobs=jobs,
                threads=threads,
                reporter_factory=RichReporter if fancy else LogReporter,
                monitor=monitor,
                retry_failed=retry_failed,
            )
        else:
            from pwm_bench.analysis.ray_launcher import run_cells_ray

            run_cells_ray(
                cells,
                device=device,
                out=out,
                threads=threads or 1,
                gpus_per_cell=gpus_per_cell,
                address=ray_address,
                monitor=monitor,
                retry_failed=retry_failed,
            )
    except UsageError as exc:
        raise _fail(str(exc)) from None
    except GridInterrupted:
        typer.echo("sweep interrupted; the same command continues it", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    states = [cell_status(c) for c in cells]
    typer.echo(
        f"{experiment} ({scale}): "
        + ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
        + f"; next: pwm-bench plot {experiment} --scale {scale} --out {out}"
    )
    if states.count("failed") or states.count("damaged") or monitor.failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pwm-bench plot single-task --scale smoke\n\n"
        "  pwm-bench plot single-task --scale cpu --envs hopper,ant\n\n"
        "  pwm-bench plot single-task --scale smoke --algos myalgo,shac,pwm --envs hopper\n\n"
        "  pwm-bench plot optimality-gap --protocol reference\n\n"
        "  pwm-bench plot wall-toy\n\n"
        "  pwm-bench plot esnr"
    )
)
def plot(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `pwm-bench list`).")],
    scale: Annotated[str, typer.Option(help="smoke | cpu | paper.")] = "cpu",
    algos: Annotated[str | None, typer.Option(help="Comma-separated algorithms instead of the experiment's.")] = None,
    envs: Annotated[str | None, typer.Option(help="Comma-separated env columns instead of the scale's.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 instead of the scale's count.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="The sweep's overrides, key=value (repeatable).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root; figures go to OUT/figures/<experiment>.")] = Path("results"),
    reps: Annotated[int, typer.Option(help="Bootstrap replications of the CIs.")] = 2000,
    protocol: Annotated[
        str | None,
        typer.Option(help="Studies only: optimality-gap fair (default) | reference; esnr full (default) | reference."),
    ] = None,
) -> None:
    """Figures (PNG and PDF), a table (CSV and Markdown) and a manifest of an experiment, from the store.

    Reads only completed runs; warns about missing cells, unfinished runs, fewer seeds than asked
    and runs with identical evaluation series. A study that needs no sweep (optimality-gap,
    wall-toy, esnr) is computed here.
    """
    from pwm_bench.analysis.figures import plot_experiment
    from pwm_bench.analysis.studies import run_study, studies

    _check_out(out)

    _setup_logging(False)
    if experiment in studies():
        try:
            res = run_study(experiment, out, scale, protocol)
        except UsageError as exc:
            raise _fail(str(exc)) from None
        typer.echo(res.text)
        typer.echo(f"wrote {len(res.files)} files to {res.folder}")
        return
    try:
        if protocol is not None:
            raise UsageError("--protocol is for studies (optimality-gap); experiments have none")
        if reps <= 0:
            raise UsageError(f"--reps must be positive, got {reps}")
        sel = _select(experiment, scale, algos, envs, seeds, set_)
        result = plot_experiment(sel, out, reps)
    except UsageError as exc:
        raise _fail(str(exc)) from None
    if result.table is not None:
        cols = ["env", "algo", "seeds", "final_iqm", "best_iqm", "best_norm_sweep", "best_norm_published"]
        typer.echo(result.table[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    typer.echo(f"{len(result.warnings)} warning(s); wrote {len(result.files)} files to {result.folder}")
    if result.table is None:
        raise typer.Exit(EXIT_FAILED)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pwm-bench compare --env hopper --algos ppo,sac,shac --seeds 3 --preset cpu\n\n"
        "  pwm-bench compare --env pointmass --algos ppo,shac --seeds 2 --preset smoke --jobs 2"
    )
)
def compare(
    env: Annotated[str, typer.Option(help="Environment name.")],
    algos: Annotated[str, typer.Option(help="Comma-separated algorithms, e.g. ppo,sac,shac.")] = "ppo,sac,shac",
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 per algorithm.")] = 3,
    preset: Annotated[str, typer.Option(help="smoke | cpu | paper.")] = "cpu",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override for every run, key=value (repeatable).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root.")] = Path("results"),
    jobs: Annotated[int, typer.Option(help="Runs at once (subprocesses); 1 runs them one after another.")] = 1,
    csv: Annotated[Path | None, typer.Option(help="Also write the summary table to this CSV file.")] = None,
    at_steps: Annotated[
        int | None,
        typer.Option(help="Also compare the evaluations up to this many env steps (default: the smallest budget)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of progress bars.")] = False,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads per run [default: CPUs / jobs with --jobs, else torch's].")
    ] = None,
) -> None:
    """Run algorithms x seeds on one env into the results store and print a comparison table.

    Giving the same command again finishes an interrupted grid: completed runs are reused,
    interrupted ones resumed. When the algorithms' budgets differ, the table also shows the last
    and the best evaluation up to the smallest budget (or --at-steps), and "data steps" counts the
    env steps spent collecting a world model's pretraining data (PWM's SHAC run).
    """
    from rich.table import Table

    from pwm_bench.compare import GridInterrupted, run_grid, summarize
    from pwm_bench.config import parse_set_options
    from pwm_bench.progress import LogReporter, RichReporter
    from pwm_bench.runner import check_threads, resolve_device
    from pwm_bench.store import atomic_write_text

    fancy = sys.stdout.isatty() and not quiet
    _check_out(out)
    _check_file_target(csv, "--csv")
    _setup_logging(fancy)
    try:
        names = _split_names(algos) or []
        if not names:
            raise UsageError("--algos needs at least one algorithm")
        _check_seeds(seeds)
        _check_jobs(jobs)
        check_threads(threads)
        if at_steps is not None and at_steps <= 0:
            raise UsageError(f"--at-steps must be positive, got {at_steps}")
        resolve_device(device)
        cells = run_grid(
            env,
            names,
            list(range(seeds)),
            preset=preset,
            device=device,
            overrides=parse_set_options(set_ or []),
            out=out,
            jobs=jobs,
            threads=threads,
            reporter_factory=RichReporter if fancy else LogReporter,
        )
        interrupted = False
    except UsageError as exc:
        raise _fail(str(exc)) from None
    except GridInterrupted as exc:
        cells, interrupted = exc.cells, True
        logging.getLogger("pwm_bench.compare").warning(
            "compare interrupted; the same command finishes it (completed runs are reused, interrupted ones resumed)"
        )
    df = summarize(cells, at_steps)
    if csv is not None:
        atomic_write_text(csv, df.to_csv(index=False))
    at = df["at_steps"].iloc[0] if len(df) else None
    show_at = at is not None and at == at and (df["env_steps"] != at).any()
    table = Table(title=f"{env}, preset {preset}, seeds 0-{seeds - 1}  (eval return: mean ± std over seeds)")
    cols = ["algo", "runs", "final eval return", "best eval return"]
    if show_at:
        cols += [f"final at {at:,.0f} steps", f"best at {at:,.0f} steps"]
    cols += ["random actions", "env steps", "data steps", "wall time"]
    for col in cols:
        table.add_column(col, justify="left" if col == "algo" else "right")

    def pm(m: float, s: float) -> str:
        return "—" if m != m else f"{m:.1f} ± {0.0 if s != s else s:.1f}"

    for _, r in df.iterrows():
        steps = "—" if r["env_steps"] != r["env_steps"] else f"{r['env_steps']:,.0f}"
        data = "—" if r["data_steps"] != r["data_steps"] else f"{r['data_steps']:,.0f}"
        wall = "—" if r["wall_time"] != r["wall_time"] else f"{r['wall_time']:.0f} s"
        at_cells = (
            [pm(r["at_final_mean"], r["at_final_std"]), pm(r["at_best_mean"], r["at_best_std"])] if show_at else []
        )
        table.add_row(
            r["algo"],
            r["runs"],
            pm(r["final_mean"], r["final_std"]),
            pm(r["best_mean"], r["best_std"]),
            *at_cells,
            "—" if r["random_mean"] != r["random_mean"] else f"{r['random_mean']:.1f}",
            steps,
            data,
            wall,
        )
    _console().print(table)
    if csv is not None:
        typer.echo(f"wrote {csv}")
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  pwm-bench collect --env hopper\n\n"
        "  pwm-bench collect --env hopper --algo ppo --steps 200000 --name hopper-ppo"
    )
)
def collect(
    env: Annotated[str, typer.Option(help="Environment name.")],
    algo: Annotated[str, typer.Option(help="Algorithm whose training rollouts are stored.")] = "shac",
    steps: Annotated[int | None, typer.Option(help="Env steps to train and store [default: the preset's].")] = None,
    preset: Annotated[str, typer.Option(help="smoke | cpu | paper.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    name: Annotated[str | None, typer.Option(help="Dataset name [default: <env>-<algo>-s<seed>].")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")] = None,
    out: Annotated[Path, typer.Option(help="Results root (datasets go to OUT/datasets/<name>).")] = Path("results"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a progress bar.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch [default: torch's].")] = None,
) -> None:
    """Train an algorithm and store every rollout it generated as an episode dataset.

    Giving the same dataset name again appends to it.
    """
    from pwm_bench.config import parse_set_options
    from pwm_bench.datasets import RecordingEnv, datasets_root
    from pwm_bench.envs import env_spec
    from pwm_bench.progress import LogReporter, RichReporter
    from pwm_bench.runner import RunRequest, execute

    fancy = sys.stdout.isatty() and not quiet
    _check_out(out)
    _setup_logging(fancy)
    reporter = RichReporter() if fancy else LogReporter()
    try:
        dataset = datasets_root(out) / (
            check_name(name, "--name") if name is not None else f"{env.replace(':', '-')}-{algo}-s{seed}"
        )
        env_spec(env)
        overrides = parse_set_options(set_ or [])
        if steps is not None:
            if steps <= 0:
                raise UsageError(f"--steps must be positive, got {steps}")
            overrides["total_steps"] = steps

        def wrap(train_env, run_dir: Path):
            source = {"algo": algo, "preset": preset, "seed": seed, "run": str(run_dir)}
            return RecordingEnv.into(dataset, train_env, env, source)

        result = execute(
            RunRequest(
                algo=algo,
                env=env,
                seed=seed,
                preset=preset,
                device=device,
                overrides=overrides,
                out=out,
                reporter=reporter,
                wrap_env=wrap,
                threads=threads,
            )
        )
    except UsageError as exc:
        reporter.stop()
        raise _fail(str(exc)) from None
    from pwm_bench.datasets import read_manifest

    m = read_manifest(dataset)
    typer.echo(
        f"{result.status}: {dataset} now holds {m['episodes']:,} episodes, {m['transitions']:,} transitions "
        f"({len(m['shards'])} shard(s)); training run {result.run_dir}"
    )
    if result.status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command(epilog="Examples:\n\n  pwm-bench datasets --out results\n\n  pwm-bench datasets --verify")
def datasets(
    out: Annotated[Path, typer.Option(help="Results root.")] = Path("results"),
    verify: Annotated[
        bool, typer.Option("--verify", help="Also check every shard's SHA-256 (reads all data); exit 1 if damaged.")
    ] = False,
) -> None:
    """List the episode datasets under OUT/datasets with their sizes, sources and health.

    Health compares every shard's size with the manifest (always) and its SHA-256 (with --verify).
    """
    from rich.table import Table
    from rich.text import Text

    from pwm_bench.datasets import datasets_root, scan_datasets

    _check_out(out)
    rows = list(scan_datasets(out, verify=verify))
    if not rows:
        typer.echo(f"no datasets under {datasets_root(out)}")
        return
    table = Table(title=f"{len(rows)} dataset(s) under {datasets_root(out)}")
    for col in ("name", "env", "episodes", "transitions", "shards", "size", "health", "source"):
        table.add_column(col, justify="right" if col in ("episodes", "transitions", "shards", "size") else "left")
    damaged = 0
    for folder, m, problems in rows:
        damaged += bool(problems)
        health = Text("; ".join(problems) if problems else ("verified" if verify else "ok (sizes)"))
        if m is None:
            table.add_row(folder.name, "?", "—", "—", "—", "—", health, "")
            continue
        size = sum(s["bytes"] for s in m["shards"]) / 2**20
        src = "; ".join(f"{s.get('algo')} {s.get('preset')} seed {s.get('seed')}" for s in m.get("sources", []))
        table.add_row(
            folder.name,
            m["env"],
            f"{m['episodes']:,}",
            f"{m['transitions']:,}",
            str(len(m["shards"])),
            f"{size:.1f} MiB",
            health,
            Text(src),
        )
    _console().print(table)
    if damaged:
        typer.echo(f"{damaged} dataset(s) damaged", err=True)
        if verify:
            raise typer.Exit(EXIT_FAILED)


@app.command(
    "pretrain-wm",
    epilog=(
        "Examples:\n\n"
        "  pwm-bench pretrain-wm --dataset hopper-shac-s0 --steps 20000\n\n"
        "  pwm-bench pretrain-wm --dataset hopper-shac-s0 --size 5M --set wm.variant=mish --name hopper-mish\n\n"
        "  pwm-bench pretrain-wm --name hopper-shac-s0-pwm --resume --steps 40000"
    ),
)
def pretrain_wm(
    dataset: Annotated[str | None, typer.Option(help="Dataset name (under OUT/datasets) or folder.")] = None,
    steps: Annotated[int | None, typer.Option(help="Gradient steps [default: 100000].")] = None,
    size: Annotated[str, typer.Option(help="World-model size: pwm, 1M, 5M, 19M, 48M.")] = "pwm",
    name: Annotated[str | None, typer.Option(help="Output name [default: <dataset>-<size>].")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override key=value: pretraining fields, or wm.<field> for the model."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root (models go to OUT/world_models/<name>).")] = Path("results"),
    resume: Annotated[bool, typer.Option(help="Continue an existing pretraining folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a progress bar.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch [default: torch's].")] = None,
) -> None:
    """Pretrain a world model on an episode dataset; reports train and held-out losses."""
    from pwm_bench.config import apply_overrides, parse_set_options
    from pwm_bench.datasets import datasets_root, read_manifest
    from pwm_bench.pretrain import PretrainConfig, pretrain_world_model, world_models_root
    from pwm_bench.progress import LogReporter, RichReporter
    from pwm_bench.runner import resolve_device, set_threads
    from pwm_bench.world_model import model_config

    fancy = sys.stdout.isatty() and not quiet
    _check_out(out)
    _setup_logging(fancy)
    reporter = RichReporter() if fancy else LogReporter()
    folder = Path(name or "<name>")
    try:
        dev = resolve_device(device)
        set_threads(threads)
        overrides = parse_set_options(set_ or [])
        wm_ov = {k.removeprefix("wm."): v for k, v in overrides.items() if k.startswith("wm.")}
        pre_ov = {k: v for k, v in overrides.items() if not k.startswith("wm.")}
        if steps is not None:
            pre_ov["steps"] = steps
        cfg = apply_overrides(PretrainConfig(), pre_ov, what="pretraining key")
        if resume and "steps" not in pre_ov:
            cfg.steps = 1  # the stored budget wins (a resumed budget only grows): --resume alone finishes it
        wm_cfg = apply_overrides(model_config(size), wm_ov, what="world-model key")
        wm_cfg.validate()
        if dataset is None and not (resume and name):
            raise UsageError("--dataset is required (or --resume --name NAME)")
        folder = world_models_root(out) / (
            check_name(name, "--name") if name is not None else f"{Path(str(dataset)).name}-{size}"
        )
        if dataset is None:
            import yaml

            if not (folder / "config.yaml").is_file():
                raise UsageError(f"--resume --name {name}: no world model to resume at {folder}")
            dataset = yaml.safe_load((folder / "config.yaml").read_text())["dataset"]
        ds_path = Path(dataset) if Path(dataset).is_dir() else datasets_root(out) / dataset
        read_manifest(ds_path)  # a dataset that is not there is named before anything is written
        summary = pretrain_world_model(ds_path, folder, cfg, wm_cfg, device=dev, resume=resume, reporter=reporter)
    except UsageError as exc:
        reporter.stop()
        raise _fail(str(exc)) from None
    except (KeyboardInterrupt, RunInterrupted) as exc:
        reporter.stop()
        typer.echo(
            f"interrupted{f' ({exc})' if str(exc) else ''}; continue with: pwm-bench pretrain-wm --name {folder.name} "
            f"--resume --out {out}",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    reporter.stop()
    typer.echo(
        f"{summary['status']}: {summary['step']:,} steps in {summary['wall_time']:.0f} s, "
        f"held-out consistency {summary.get('heldout/consistency', float('nan')):.4g}, "
        f"reward {summary.get('heldout/reward', float('nan')):.4g} -> {folder}"
    )


WM_CHECK_MAX_HORIZON = 1000
"""Longest window of ``wm-check`` (a differentiable rollout of 1000 steps already takes minutes)."""


@app.command(
    "wm-check",
    epilog="Example:\n\n  pwm-bench wm-check results/runs/hopper/pwm/20261121-101500-s0-ab12",
)
def wm_check(
    run_dir: Annotated[Path, typer.Argument(help="A PWM run folder on a differentiable env.")],
    worlds: Annotated[int, typer.Option(help="Start states (parallel worlds).")] = 32,
    horizon: Annotated[int, typer.Option(help="Window length in control steps.")] = 16,
    seed: Annotated[int, typer.Option(help="Reset seed of the start states and random actions.")] = 0,
    checkpoint: Annotated[str, typer.Option(help="latest | best.")] = "latest",
    warmup: Annotated[
        int, typer.Option(help="Steps of the deterministic policy before the window (start where it goes).")
    ] = 0,
    ends: Annotated[
        bool, typer.Option("--ends", help="Also: how well the model predicts episode ends, per rollout depth.")
    ] = False,
) -> None:
    """World-model error vs policy error: compare a PWM run's model gradients with the simulator's.

    For the policy's own closed-loop actions and for uniform random actions, prints the median cosine
    between the model's and the simulator's gradients of the discounted window return w.r.t. the
    actions (1 = same direction), for the first action alone, and the returns each predicts; then
    the cosine between the actor updates that the model and the simulator would give (the actor
    loss's gradient w.r.t. the actor's parameters), with and without the critics' bootstrap; then,
    per lookahead k, how the reward k steps later responds to the first action (model vs simulator,
    over the worlds still alive) and the mean rewards each predicts there. With --ends, per depth d,
    the model's reward error (model units, squared) and termination probability for the terminal
    transition of the held-out episodes of its pretraining data, rolled d steps from d steps before,
    against a transition 24 steps before the end.
    """
    from rich.table import Table

    from pwm_bench.diagnostics import check_pwm_run

    _setup_logging(False)
    try:
        if not 1 <= horizon <= WM_CHECK_MAX_HORIZON:
            raise UsageError(f"--horizon must be in [1, {WM_CHECK_MAX_HORIZON}], got {horizon}")
        if not 1 <= worlds <= 4096:
            raise UsageError(f"--worlds must be in [1, 4096], got {worlds}")
        if warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {warmup}")
        rows = check_pwm_run(
            run_dir, worlds=worlds, horizon=horizon, seed=seed, checkpoint=checkpoint, warmup=warmup, ends=ends
        )
    except UsageError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"model vs simulator gradients, {horizon}-step windows, {worlds} worlds")
    for col in ("actions", "alive", "cosine", "first-action cosine", "|g_model|/|g_env|", "env return", "model return"):
        table.add_column(col, justify="right" if col != "actions" else "left")
    actor = rows.pop("actor")
    look = rows.pop("lookahead")
    end_rows = rows.pop("ends", None)
    for name, r in rows.items():
        if r.get("alive", 0.0) == 0.0:
            table.add_row(name, "0%", *["—"] * 5)
            continue
        table.add_row(
            name,
            f"{100 * r['alive']:.0f}%",
            f"{r['cosine']:.3f}",
            f"{r['cosine_first']:.3f}",
            f"{r['grad_norm_ratio']:.2f}",
            f"{r['env_return']:.2f}",
            f"{r['model_return']:.2f}",
        )
    _console().print(table)
    typer.echo(
        f"actor-parameter gradient of the actor loss, model vs simulator (same critics and noise): cosine "
        f"{actor['cosine']:.3f} with the critics' bootstrap, {actor['cosine_rewards']:.3f} from the rewards alone"
    )
    table = Table(title="reward k steps later vs the first action (stochastic policy), model vs simulator")
    for col in ("k", "alive", "cosine (median)", "cosine of sums", "env reward", "model reward"):
        table.add_column(col, justify="right")
    fields = ("worlds", "cosine", "cosine_sum", "env_reward", "model_reward")
    for k, (n, *vals) in enumerate(zip(*(look[f] for f in fields), strict=True)):
        table.add_row(str(k), str(int(n)), *("—" if v != v else f"{v:.3f}" for v in vals))
    _console().print(table)
    if end_rows is not None:
        table = Table(title="episode ends of the held-out data, per rollout depth (rewards in model units)")
        cols = ("episodes", "end_reward_error", "ref_reward_error", "end_termination", "ref_termination")
        heads = ("depth", "episodes", "reward error at the end", "24 steps before", "p(end) at the end", "24 before")
        for col in heads:
            table.add_column(col, justify="right")
        for d, (n, *vals) in enumerate(zip(*(end_rows[c] for c in cols), strict=True)):
            table.add_row(str(d), str(int(n)), *("—" if v != v else f"{v:.3f}" for v in vals))
        _console().print(table)


@app.command("list", epilog="Examples:\n\n  pwm-bench list\n\n  pwm-bench list --algo ppo --preset cpu")
def list_(
    algo: Annotated[
        str | None, typer.Option(help="Show this algorithm's config fields with their values and help.")
    ] = None,
    preset: Annotated[str, typer.Option(help="Preset whose values --algo shows.")] = "cpu",
    env: Annotated[str, typer.Option(help="Env whose preset values --algo shows.")] = "gym:Pendulum-v1",
) -> None:
    """List environments, algorithms, presets and experiments (or one algorithm's config with --algo)."""
    from rich.table import Table

    from pwm_bench.algos import algorithm_names, get_algorithm
    from pwm_bench.config import PRESET_HELP, field_docs, to_dict
    from pwm_bench.envs import list_envs

    console = _console()
    try:
        if algo is None and (preset != "cpu" or env != "gym:Pendulum-v1"):
            raise UsageError("--preset and --env only apply with --algo (they choose the values it shows)")
        if algo is not None:
            from pwm_bench.config import PRESETS
            from pwm_bench.envs import env_spec as _env_spec

            _env_spec(env)
            if preset not in PRESETS:
                raise unknown_choice("preset", preset, PRESETS)
            spec = get_algorithm(algo)
            cfg = spec.config.from_preset(preset, env)
            docs = field_docs(spec.config)
            table = Table(title=f"{spec.name} config, preset '{preset}' on {env}  (override with --set key=value)")
            for col in ("key", "value", "description"):
                table.add_column(col)
            for key, value in to_dict(cfg).items():
                table.add_row(key, str(value), docs.get(key, ""))
            console.print(table)
            return
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("kind", style="bold")
        table.add_column("name", style="cyan")
        table.add_column("description")
        for name, env_spec in sorted(list_envs().items()):
            grads = " [differentiable]" if env_spec.differentiable else ""
            table.add_row("env", name, env_spec.description + grads)
        table.add_row("env", "gym:<id>", "any gymnasium continuous-control env, e.g. gym:Pendulum-v1 (no gradients)")
        from pwm_bench.envs.multitask import TASK_SETS

        for name, tasks in TASK_SETS.items():
            table.add_row("env", f"mt:{name}", "task set: " + ", ".join(t.name for t in tasks))
        table.add_row("env", "mt:<env>,<env>,...", "ad-hoc task set of registered or gym: envs (multi-task PWM)")
        for name in algorithm_names():
            spec = get_algorithm(name)
            needs = " [needs simulator gradients]" if spec.requires_gradients else ""
            table.add_row("algo", name, spec.description + needs)
        for name, text in PRESET_HELP.items():
            table.add_row("preset", name, text)
        from pwm_bench.analysis.experiments import experiments

        for name, exp in sorted(experiments().items()):
            scales = ", ".join(f"{k} ({v.seeds} seeds)" for k, v in exp.scales.items())
            table.add_row("experiment", name, f"{exp.description}; scales: {scales}")
        from pwm_bench.analysis.studies import studies

        for name, st in sorted(studies().items()):
            protocols = f"; --protocol {' | '.join(st.protocols)}" if st.protocols else ""
            table.add_row("study", name, f"{st.description} (pwm-bench plot {name}){protocols}")
        console.print(table)
    except UsageError as exc:
        raise _fail(str(exc)) from None


@app.command(
    epilog="Examples:\n\n  pwm-bench results\n\n  pwm-bench results --out results --csv runs.csv",
)
def results(
    out: Annotated[Path, typer.Option(help="Results root to index.")] = Path("results"),
    csv: Annotated[Path | None, typer.Option(help="Also write the table to this CSV file.")] = None,
) -> None:
    """Table of all runs: env, algo, seed, preset, status, env steps, wall time, final/best eval return."""
    from rich.table import Table

    from pwm_bench.store import TABLE_COLUMNS, atomic_write_text, runs_table

    _check_out(out)
    _check_file_target(csv, "--csv")
    df = runs_table(out)
    if csv is not None:
        atomic_write_text(csv, df.to_csv(index=False))
    if df.empty:
        typer.echo(f"no runs under {out / 'runs'}")
        return
    df = df.sort_values(["env", "algo", "seed", "run_id"])
    table = Table(title=f"{len(df)} run(s) under {out / 'runs'}")
    cols = list(TABLE_COLUMNS)
    for c in cols:
        table.add_column(
            c.replace("_", " "), justify="right" if c not in ("env", "algo", "preset", "status") else "left"
        )
    table.add_column("run id")

    def cell(c: str, v: object) -> str:
        if v is None or v != v:  # None or NaN
            return "—"
        if c == "wall_time":
            return f"{float(v):.0f} s"
        if c.endswith("return"):
            return f"{float(v):.1f}"
        if c in ("env_steps", "seed"):
            return f"{int(v):,}" if c == "env_steps" else str(int(v))
        return str(v)

    for _, row in df.iterrows():
        table.add_row(*[cell(c, row[c]) for c in cols], str(row["run_id"]))
    _console().print(table)
    if csv is not None:
        typer.echo(f"wrote {csv}")


def _check_checkpoint_and_seed(checkpoint: str, seed: int) -> None:
    """The ``--checkpoint`` and ``--seed`` of ``render`` and ``view`` (a one-line error otherwise)."""
    if checkpoint not in ("best", "latest"):
        raise _fail(f"--checkpoint must be best or latest, got {checkpoint!r}")
    if not 0 <= seed < 2**31:
        raise _fail(f"--seed must be in [0, 2^31 - 1], got {seed}")


@app.command(
    epilog="Examples:\n\n  pwm-bench render results/runs/hopper/shac/<run-id>\n\n"
    "  pwm-bench render results/runs/hopper/pwm/<run-id> --checkpoint latest --episodes 3 --max-steps 1000"
)
def render(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    checkpoint: Annotated[str, typer.Option(help="best | latest.")] = "best",
    episodes: Annotated[int, typer.Option(help="Episodes, from reset seeds SEED, SEED+1, ...")] = 1,
    seed: Annotated[int, typer.Option(help="Reset seed of the first episode.")] = 0,
    max_steps: Annotated[int, typer.Option(help="Control steps per episode at most (60 a second).")] = 300,
    width: Annotated[int, typer.Option(help="Frame width [px].")] = 640,
    height: Annotated[int, typer.Option(help="Frame height [px].")] = 360,
) -> None:
    """Render deterministic episodes of a run's policy to MP4 and GIF in RUN_DIR/videos (no display needed)."""
    from pwm_bench.render import render_run

    _setup_logging(False)
    _check_checkpoint_and_seed(checkpoint, seed)
    if not (0 < episodes <= 100 and 0 < max_steps <= 100_000 and 16 <= width <= 4096 and 16 <= height <= 4096):
        raise _fail("--episodes must be in [1, 100], --max-steps in [1, 100000], --width and --height in [16, 4096]")
    try:
        result = render_run(
            run_dir,
            checkpoint=checkpoint,  # type: ignore[arg-type]
            episodes=episodes,
            seed=seed,
            max_steps=max_steps,
            width=width,
            height=height,
        )
    except UsageError as exc:
        raise _fail(str(exc)) from None
    for k, ep in enumerate(result):
        typer.echo(
            f"episode {k} (seed {seed + k}): return {ep.episode_return:.1f} over {ep.length} steps -> "
            + ", ".join(str(f) for f in ep.files)
        )


@app.command(
    epilog="Examples:\n\n  pwm-bench view results/runs/hopper/shac/<run-id>   # then open http://127.0.0.1:8080\n\n"
    "  pwm-bench view results/runs/ant/pwm/<run-id> --port 8090 --checkpoint latest"
)
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    checkpoint: Annotated[str, typer.Option(help="best | latest.")] = "best",
    host: Annotated[str, typer.Option(help="Address to serve on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page.")] = 8080,
    seed: Annotated[int, typer.Option(help="Reset seed of the first episode.")] = 0,
    episodes: Annotated[int | None, typer.Option(help="Stop after this many episodes [default: until Ctrl-C].")] = None,
) -> None:
    """A live 3D view of a run's policy in a web browser (Warp envs; Ctrl-C stops)."""
    from pwm_bench.view import view_run

    _setup_logging(False)
    _check_checkpoint_and_seed(checkpoint, seed)
    if not 0 < port < 65536:
        raise _fail(f"--port must be in [1, 65535], got {port}")
    if episodes is not None and not 0 < episodes <= 100_000:
        raise _fail(f"--episodes must be in [1, 100000], got {episodes}")
    try:
        view_run(run_dir, checkpoint=checkpoint, host=host, port=port, seed=seed, episodes=episodes)  # type: ignore[arg-type]
    except UsageError as exc:
        raise _fail(str(exc)) from None


@app.command(epilog="Example:\n\n  pwm-bench show results/runs/gym-Pendulum-v1/ppo/20261121-101500-s0-ab12")
def show(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """One run's config and summary."""
    from rich.table import Table
    from rich.text import Text

    from pwm_bench.store import read_config, read_summary

    cfg = read_config(run_dir)
    if not cfg:
        raise _fail(f"{run_dir} is not a run folder (no config.yaml)")
    summary = read_summary(run_dir)
    console = _console()
    head = Table(title=str(run_dir), show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    for key in ("algo", "env", "seed", "preset", "created_at", "git_commit"):
        head.add_row(key, Text(str(cfg.get(key))))
    head.add_row("device", Text(f"{summary.get('device', '?')} (requested {cfg.get('device')})"))
    for key in (
        "status",
        "env_steps",
        "total_steps",
        "wall_time",
        "final_eval_return",
        "best_eval_return",
        "random_eval_return",
        "resumes",
    ):
        if key in summary:
            head.add_row(key, Text(str(summary[key])))
    if summary.get("error"):
        head.add_row("error", Text(str(summary["error"])))  # stored text, not markup
    console.print(head)
    for section in ("algo_config", "env_config"):
        values = cfg.get(section) or {}
        if values:
            t = Table(title=section.replace("_", " "), show_header=False)
            t.add_column("key", style="cyan")
            t.add_column("value")
            for k, v in values.items():
                t.add_row(k, Text(str(v)))
            console.print(t)
    versions = summary.get("versions") or {}
    if versions:
        console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))


@app.command(
    "bench-env",
    epilog="Examples:\n\n  pwm-bench bench-env --env hopper --num-envs 256\n\n"
    "  pwm-bench bench-env --env ant --num-envs 256 --differentiable\n\n"
    "  pwm-bench bench-env --env humanoid --num-envs 4096 --device cuda --differentiable\n\n"
    "  pwm-bench bench-env --env humanoid --num-envs 256 --differentiable --profile",
)
def bench_env_cmd(
    env: Annotated[str, typer.Option(help="Env name (see `pwm-bench list`).")] = "hopper",
    num_envs: Annotated[int, typer.Option(help="Parallel worlds.")] = 256,
    differentiable: Annotated[bool, typer.Option(help="Also time forward+backward windows.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    steps: Annotated[int, typer.Option(help="Timed forward control steps.")] = 50,
    window: Annotated[int, typer.Option(help="Control steps per backward pass.")] = 8,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Env option key=value (e.g. contact_ke=1e5); repeatable.")
    ] = None,
    profile: Annotated[
        bool, typer.Option(help="Also split a step into its stages (each Warp kernel timed), per phase.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for torch and for the humanoid-class Warp envs' worlds [default: torch's]."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Measure an env's control steps per second (summed over worlds), forward and forward+backward."""
    import json

    from pwm_bench.bench import bench_env, profile_env
    from pwm_bench.envs import env_spec
    from pwm_bench.runner import resolve_device, set_threads

    _setup_logging(sys.stderr.isatty())
    try:
        set_threads(threads)
        env_spec(env)
        if env.startswith("mt:"):
            raise UsageError(
                f"bench-env times one env; '{env}' is a task set (its worlds are fixed per task): time one task"
            )
        dev = resolve_device(device)
        from pwm_bench.config import MAX_NUM_ENVS

        if not 0 < num_envs <= MAX_NUM_ENVS:
            raise UsageError(f"--num-envs must be in [1, {MAX_NUM_ENVS:,}], got {num_envs}")
        if not (0 < steps <= 100_000 and 0 < window <= 10_000):
            raise UsageError("--steps must be in [1, 100000] and --window in [1, 10000]")
        overrides: dict[str, str] = {}
        for item in set_ or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--set expects key=value, got {item!r}")
            overrides[key.removeprefix("env.")] = value
        if differentiable and not env_spec(env).differentiable:
            raise UsageError(f"env '{env}' has no simulator gradients; drop --differentiable")
        result = bench_env(
            env, num_envs, str(dev), differentiable=differentiable, steps=steps, window=window, **overrides
        )
        prof = (
            profile_env(env, num_envs, str(dev), differentiable=differentiable, steps=steps, window=window, **overrides)
            if profile
            else None
        )
    except UsageError as e:
        raise _fail(str(e)) from None
    if json_out:
        typer.echo(json.dumps({**result.as_dict(), **({"profile": prof.as_dict()} if prof else {})}))
        return
    line = f"{env} x{num_envs} on {result.device}"
    if result.device == "cpu":
        line += f" ({result.threads} torch threads, worlds on {result.sim_threads})"
    line += f": forward {result.forward_sps:,.0f} steps/s"
    if result.forward_backward_sps is not None:
        ratio = result.forward_backward_sps / result.forward_sps
        line += f"; forward+backward {result.forward_backward_sps:,.0f} steps/s ({ratio:.2f} of forward)"
    if result.muscle_share is not None:
        line += f"; muscle forces {100 * result.muscle_share:.0f} % of a forward step"
    typer.echo(line)
    if prof is not None:
        _print_profile(prof)


def _print_profile(prof: Any) -> None:
    """One table per phase: each stage's milliseconds per control step, share and launches."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for phase, ms in prof.step_ms.items():
        t = Table(
            title=f"{prof.env} x{prof.num_envs} on {prof.device}, {phase}: {ms:.2f} ms per control step"
            " (kernels timed one by one)"
        )
        for col, justify in (
            ("part", "left"),
            ("stage", "left"),
            ("ms/step", "right"),
            ("share", "right"),
            ("launches/step", "right"),
        ):
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for row in (r for r in prof.stages if r.phase == phase):
            t.add_row(
                row.part,
                row.stage,
                f"{row.ms_per_step:.3f}",
                f"{100 * row.share:.1f} %",
                f"{row.launches_per_step:.0f}",
            )
        console.print(t)


@app.command(
    "bench-wm",
    epilog=(
        "Examples:\n\n  pwm-bench bench-wm\n\n  pwm-bench bench-wm --preset cpu,paper --threads 2 --json\n\n"
        "  pwm-bench bench-wm --algo tdmpc2 --env gym:InvertedPendulum-v5 --preset cpu"
    ),
)
def bench_wm_cmd(
    algo: Annotated[str, typer.Option(help="pwm | tdmpc2: whose learning steps are timed.")] = "pwm",
    preset: Annotated[str, typer.Option(help="Comma-separated presets whose networks are timed.")] = "cpu,paper",
    env: Annotated[str, typer.Option(help="Env whose observation and action sizes the model gets.")] = "hopper",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    repeats: Annotated[int, typer.Option(help="Timed calls per stage (the median is shown).")] = 10,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch [default: torch's].")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config field of --algo, key=value (e.g. wm_batch_size=256, num_samples=128)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Time PWM's model step, imagined actor update and critic passes (or TD-MPC2's planning and update)
    against a same-run matmul."""
    import json

    from rich.table import Table

    from pwm_bench.bench_models import bench_models, bench_tdmpc2
    from pwm_bench.config import PRESETS, parse_set_options
    from pwm_bench.envs import env_spec
    from pwm_bench.runner import resolve_device, set_threads

    _setup_logging(False)
    benches = {"pwm": bench_models, "tdmpc2": bench_tdmpc2}
    if algo not in benches:
        raise unknown_choice("bench-wm algorithm", algo, benches)
    presets = _split_names(preset, "--preset") or []
    for p in presets:
        if p not in PRESETS:
            raise unknown_choice("preset", p, PRESETS)
    env_spec(env)
    if env.startswith("mt:"):
        raise UsageError(f"bench-wm takes one env's sizes; '{env}' is a task set")
    dev = resolve_device(device)
    set_threads(threads)
    if not 1 <= repeats <= 1000:
        raise UsageError(f"--repeats must be in [1, 1000], got {repeats}")
    overrides = parse_set_options(set_ or [])
    results = [benches[algo](p, env, str(dev), repeats=repeats, overrides=overrides) for p in presets]
    if json_out:
        typer.echo(json.dumps([r.as_dict() for r in results]))
        return
    for r in results:
        table = Table(
            title=(
                f"{'PWM' if r.algo == 'pwm' else 'TD-MPC2'} '{r.preset}' on {r.env} sizes, {r.device}, "
                f"{r.threads} thread(s): model {r.parameters:,} "
                f"parameters, batch {r.batch}, H {r.horizon}, {r.worlds} worlds; "
                f"reference {r.matmul_n}² fp32 matmul {r.matmul_gflops:.1f} GFLOP/s"
            )
        )
        for col in ("stage", "ms per call", "GFLOP per call", "GFLOP/s", "of the matmul"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for s in r.stages:
            table.add_row(
                s.stage, f"{s.ms:.1f}", f"{s.gflop:.3f}", f"{s.gflops:.1f}", f"{100 * s.roofline_share:.0f} %"
            )
        _console().print(table)


def _io_error_message(exc: OSError) -> str:
    """``cannot use PATH: reason`` for a file-system error (permission, full disk, a file where a
    folder should be, ...)."""
    reason = exc.strerror or type(exc).__name__
    target = exc.filename2 if exc.filename2 is not None else exc.filename
    return f"cannot use {target}: {reason}" if target is not None else f"{reason} ({exc})"


def run_cli(argv: list[str] | None = None) -> int:
    """Run ``pwm-bench ARGV`` in this process and return its exit code; every expected error is one line.

    Exit codes: 0 done, 1 a run failed (NaN/inf, or a write failed mid-run), 2 bad input (a parser
    error, an unknown name, a damaged or unwritable file: one ``error:`` line on stderr), 130
    interrupted. Signal handlers are left as they are (see :func:`main`).
    """
    from pwm_bench.errors import PwmBenchError

    cx = _click_exceptions()
    no_args = getattr(cx, "NoArgsIsHelpError", ())
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="pwm-bench")
        return rv if isinstance(rv, int) else 0
    except no_args as exc:
        _console().print(exc.ctx.get_help() if exc.ctx is not None else "")
        return EXIT_USAGE
    except cx.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx is not None else "pwm-bench"
        typer.echo(f"error: {one_line(exc.format_message())} (see {cmd} --help)", err=True)
        return EXIT_USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt, RunInterrupted) as exc:
        typer.echo(f"interrupted{f' ({exc})' if str(exc) else ''}; the same command continues", err=True)
        return EXIT_INTERRUPTED
    except (UsageError, PwmBenchError) as exc:
        typer.echo(f"error: {one_line(str(exc))}", err=True)
        return EXIT_USAGE
    except OSError as exc:
        typer.echo(f"error: {_io_error_message(exc)}", err=True)
        return EXIT_USAGE


def main() -> None:
    """Console-script entry point: :func:`run_cli` on ``sys.argv``, then exit with its code.

    SIGTERM (``kill``) is made to mean what Ctrl-C means from the start, so a command stopped before
    any run has its own handler also exits 130; once the command is done, both are ignored, so a
    late Ctrl-C cannot turn into a traceback at interpreter exit.
    """
    import signal

    in_main = threading_main()
    if in_main:
        signal.signal(signal.SIGINT, _interrupt_outside_imports)
        signal.signal(signal.SIGTERM, _interrupt_outside_imports)
    try:
        code = run_cli()
    except KeyboardInterrupt:  # between the command's end and here
        code = EXIT_INTERRUPTED
    finally:
        if in_main:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.flush()
    raise SystemExit(code)


def _interrupt_outside_imports(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM before a command installs its own handler: ``KeyboardInterrupt``, but never in
    the middle of an import (a library that catches it there, as torch's import can, would swallow
    it and the command would go on): then the signal is sent again 0.1 s later."""
    import os
    import threading

    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib"):  # type: ignore[attr-defined]
            timer = threading.Timer(0.1, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        f = f.f_back  # type: ignore[attr-defined]
    raise KeyboardInterrupt


def _click_exceptions():
    """The exception module of the click that typer runs on (typer >= 0.22 vendors its own)."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer that uses the click package
        from click import exceptions
    return exceptions


def threading_main() -> bool:
    """Whether this is the main thread (the only one that may install signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
