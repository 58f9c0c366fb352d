"""Reliability: bad arguments, damaged store files, locks, interrupts at awkward moments, failed writes.

The property-based test drives every subcommand with generated bad arguments in this process; the
signal tests run ``pwm-bench`` as a user would, in a subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pwm_bench.cli import run_cli
from pwm_bench.errors import DamagedFileError, LockedError
from pwm_bench.runner import RunRequest, execute
from pwm_bench.store import LOCK_FILE, read_summary, run_lock, runs_table

from .conftest import PPO_TINY, run_inprocess, wait_for
from .test_datasets import TINY_WM, _record_pointmass
from .test_run import SignalAt


def inproc(*args: str) -> tuple[int, str, str]:
    """``pwm-bench ARGS`` in this process: (exit code, stdout, stderr); logging is restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli(list(args))
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "╭" not in stderr
    for n in needles:
        assert n in lines[0], lines[0]


def pwm_bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "pwm_bench", *args]


def _metrics_ok(run_dir: Path) -> pd.DataFrame:
    """metrics.csv of a run: no row lost or repeated (iterations 1..N, env steps strictly rising)."""
    df = pd.read_csv(run_dir / "metrics.csv")
    assert df["env_steps"].is_unique and df["env_steps"].is_monotonic_increasing, df["env_steps"].tolist()
    if "iteration" in df:
        assert df["iteration"].tolist() == list(range(1, len(df) + 1)), df["iteration"].tolist()
    return df


# -- parser errors and generated bad arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--nope"], "No such option: --nope"),
        (["run", "--seed", "x"], "'--seed'"),
        (["nope"], "No such command 'nope'"),
        (["show"], "Missing argument"),
        (["compare", "--env"], "requires an argument"),
        (["datasets", "--verify", "yes"], "Got unexpected extra argument"),
    ],
)
def test_parser_errors_are_one_line(args: list[str], needle: str) -> None:
    code, _, err = inproc(*args)
    assert_one_line_error(code, err, needle, "--help")


COMMANDS_WITH_OUT = ("run", "compare", "sweep", "collect", "pretrain-wm", "results", "datasets", "plot")
_junk = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
_bad_name = st.one_of(
    st.sampled_from(["../x", "/abs", "a/b", ".hidden", "x" * 200, "-dash", ""]), _junk.map(lambda s: "zz" + s + "/")
)
_not_int = st.sampled_from(["x", "1.5", "nan", ""])
_bad_int = st.one_of(st.integers(max_value=0), st.integers(min_value=2**31), _not_int)  # counts
_bad_seed = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31), _not_int)


def _bad_argv() -> st.SearchStrategy[list[str]]:
    """Command lines that are wrong in one place, and that no command may run with."""
    unknown = _junk.map(lambda s: "zz" + s)
    return st.one_of(
        st.tuples(st.sampled_from(COMMANDS_WITH_OUT), unknown.map(lambda s: "--" + s)).map(list),
        st.tuples(unknown).map(list),  # unknown command
        st.tuples(unknown).map(lambda t: ["run", "--algo", t[0], "--env", "pointmass"]),
        st.tuples(unknown).map(lambda t: ["run", "--algo", "ppo", "--env", t[0]]),
        st.tuples(unknown).map(lambda t: ["run", "--algo", "ppo", "--env", "pointmass", "--preset", t[0]]),
        st.tuples(unknown).map(lambda t: ["run", "--algo", "ppo", "--env", "pointmass", "--set", f"{t[0]}=1"]),
        st.tuples(_bad_seed).map(lambda t: ["run", "--algo", "ppo", "--env", "pointmass", "--seed", str(t[0])]),
        st.tuples(_bad_int).map(lambda t: ["run", "--algo", "ppo", "--env", "pointmass", "--threads", str(t[0])]),
        st.tuples(st.sampled_from(["lr", "num_envs", "hidden", "total_steps"]), _junk).map(
            lambda t: ["run", "--algo", "ppo", "--env", "pointmass", "--set", f"{t[0]}=zz{t[1]}"]
        ),
        st.tuples(_bad_name).map(lambda t: ["run", "--algo", "ppo", "--env", "pointmass", "--run-id", t[0]]),
        st.tuples(_bad_name).map(lambda t: ["collect", "--env", "pointmass", "--name", t[0]]),
        st.tuples(_bad_name).map(lambda t: ["pretrain-wm", "--dataset", "d", "--name", t[0]]),
        st.tuples(unknown).map(lambda t: ["compare", "--env", "pointmass", "--algos", f"ppo,{t[0]}"]),
        st.tuples(_bad_int).map(lambda t: ["compare", "--env", "pointmass", "--seeds", str(t[0])]),
        st.tuples(_bad_int).map(lambda t: ["compare", "--env", "pointmass", "--jobs", str(t[0])]),
        st.tuples(_bad_int).map(lambda t: ["compare", "--env", "pointmass", "--threads", str(t[0])]),
        st.tuples(unknown).map(lambda t: ["sweep", t[0]]),
        st.tuples(unknown).map(lambda t: ["sweep", "single-task", "--scale", t[0]]),
        st.tuples(_bad_int).map(lambda t: ["sweep", "single-task", "--seeds", str(t[0])]),
        st.tuples(unknown).map(lambda t: ["plot", t[0]]),
        st.tuples(unknown).map(lambda t: ["plot", "optimality-gap", "--protocol", t[0]]),
        st.tuples(unknown).map(lambda t: ["pretrain-wm", "--dataset", t[0]]),
        st.tuples(unknown).map(lambda t: ["pretrain-wm", "--dataset", "d", "--size", t[0]]),
        st.tuples(unknown).map(lambda t: ["list", "--algo", t[0]]),
        st.tuples(unknown).map(lambda t: ["bench-env", "--env", t[0]]),
        st.tuples(_bad_int).map(lambda t: ["bench-env", "--env", "pointmass", "--num-envs", str(t[0])]),
        st.tuples(_bad_int).map(lambda t: ["wm-check", "nowhere", "--horizon", str(t[0])]),
        st.tuples(unknown).map(lambda t: ["show", t[0]]),
        st.tuples(unknown).map(lambda t: ["bench-wm", "--preset", t[0]]),
        st.tuples(_bad_int).map(lambda t: ["bench-wm", "--preset", "smoke", "--repeats", str(t[0])]),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=_bad_argv())
def test_generated_bad_arguments_are_one_line_exit_2_and_write_nothing(argv: list[str], tmp_path_factory) -> None:
    store = tmp_path_factory.mktemp("store")
    extra = ["--out", str(store / "results")] if argv[0] in COMMANDS_WITH_OUT and len(argv) > 1 else []
    cwd = os.getcwd()
    os.chdir(store)  # a command that ignored --out would write here

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{argv} got as far as training")

    try:
        # input that slips through fails here at once instead of training for minutes
        with (
            mock.patch("pwm_bench.runner._train", must_not_run),
            mock.patch("pwm_bench.pretrain.pretrain_world_model", must_not_run),
            mock.patch("pwm_bench.analysis.sweep.run_cells", must_not_run),
            mock.patch("pwm_bench.compare.run_cells", must_not_run),
        ):
            code, _, err = inproc(*argv, *extra)
    finally:
        os.chdir(cwd)
    assert_one_line_error(code, err)
    assert list(store.iterdir()) == [], f"{argv} wrote {list(store.rglob('*'))}"


# -- damaged run files, locks ----------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(max(64, len(data) // 4)))


def test_damaged_run_files_are_named_listed_and_resumed_around(out: Path) -> None:
    done = run_inprocess(out, overrides=PPO_TINY, run_id="done")
    part = run_inprocess(out, overrides=PPO_TINY, run_id="part", reporter=SignalAt(3000, signal.SIGINT))
    lost = run_inprocess(out, overrides=PPO_TINY, run_id="lost", reporter=SignalAt(3000, signal.SIGINT))
    assert done.status == "completed" and part.status == lost.status == "interrupted"
    assert (part.run_dir / "checkpoints" / "best.pt").exists()

    # a config that is not YAML: results lists the run as damaged and goes on; show and --resume name it
    (done.run_dir / "config.yaml").write_text("algo: [unclosed\n")
    table = runs_table(out).set_index("run_id")
    assert table.loc["done", "status"] == "damaged" and table.loc["done", "algo"] == "ppo"
    assert table.loc["part", "status"] == "interrupted"
    code, stdout, _ = inproc("results", "--out", str(out))
    assert code == 0 and "damaged" in stdout and "part" in stdout
    assert_one_line_error(*inproc("show", str(done.run_dir))[::2], "config.yaml is damaged")
    assert_one_line_error(*inproc("run", "--resume", str(done.run_dir))[::2], "config.yaml is damaged")

    # a live process's lock: the second trainer is refused, naming the pid; nothing changes
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = lost.run_dir / LOCK_FILE
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        code, _, err = inproc("run", "--resume", str(lost.run_dir))
        assert_one_line_error(code, err, f"in use by process {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()
    # every checkpoint damaged: one line naming both files
    _damage(lost.run_dir / "checkpoints" / "latest.pt", "random")
    _damage(lost.run_dir / "checkpoints" / "best.pt", "empty")
    code, _, err = inproc("run", "--resume", str(lost.run_dir))  # its lock is stale now: taken over
    assert_one_line_error(code, err, "latest.pt is damaged", "best.pt is damaged", "start a new run")
    assert not lock.exists() and read_summary(lost.run_dir)["status"] == "interrupted"

    # a truncated latest.pt: --resume falls back to best.pt, says so, and completes without gaps
    _damage(part.run_dir / "checkpoints" / "latest.pt", "truncate")
    resumed = execute(RunRequest(resume=part.run_dir))
    assert resumed.status == "completed" and resumed.summary["env_steps"] == done.summary["env_steps"]
    assert (
        _metrics_ok(part.run_dir)["env_steps"].tolist()
        == pd.read_csv(done.run_dir / "metrics.csv")["env_steps"].tolist()
    )
    assert not (part.run_dir / LOCK_FILE).exists()

    # a damaged summary of a completed run: listed as damaged; --resume rewrites it as completed
    (part.run_dir / "summary.json").write_text('{"status": "compl')
    assert runs_table(out).set_index("run_id").loc["part", "status"] == "damaged"
    again = execute(RunRequest(resume=part.run_dir))
    assert again.status == "completed" and read_summary(part.run_dir)["status"] == "completed"
    _metrics_ok(part.run_dir)
    # a damaged metrics file is named by whoever reads it
    (part.run_dir / "metrics.csv").write_bytes(b"\x00\xff garbage")
    from pwm_bench.store import load_metrics

    with pytest.raises(DamagedFileError, match=r"metrics\.csv"):
        load_metrics(part.run_dir)


def test_lock_refuses_a_second_holder_and_takes_over_stale_ones(tmp_path: Path) -> None:
    with run_lock(tmp_path), pytest.raises(LockedError, match=f"in use by process {os.getpid()}"):
        run_lock(tmp_path).__enter__()
    assert not (tmp_path / LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_failed_write_mid_run_marks_the_run_failed(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pwm_bench.run as run_mod

    def full_disk(path, writer):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_mod, "atomic_save", full_disk)
    result = run_inprocess(out, overrides=PPO_TINY, run_id="full")
    assert result.status == "failed" and "No space left on device" in result.error
    summary = read_summary(result.run_dir)
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert not (result.run_dir / LOCK_FILE).exists()


def test_out_that_is_a_file_and_csv_that_is_a_folder_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(*inproc("run", "--algo", "ppo", "--env", "pointmass", "--out", str(tmp_path / "afile"))[::2])
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "runs").write_text("x")
    assert_one_line_error(*inproc("results", "--out", str(tmp_path / "store"))[::2], "runs is a file")
    assert_one_line_error(*inproc("results", "--out", str(tmp_path), "--csv", str(tmp_path))[::2], "is a folder")


# -- datasets ---------------------------------------------------------------------------------------------


def test_datasets_reports_truncated_shards_and_verify_finds_flipped_bytes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for name in ("a", "b"):
        _record_pointmass(out / "datasets" / name, steps=200, num_envs=2, shard=150)
    code, stdout, _ = inproc("datasets", "--out", str(out), "--verify")
    assert code == 0 and stdout.count("verified") == 2
    shard_a = out / "datasets" / "a" / "shard-00000.npz"
    _damage(shard_a, "truncate")
    shard_b = out / "datasets" / "b" / "shard-00000.npz"
    data = bytearray(shard_b.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    shard_b.write_bytes(bytes(data))
    code, stdout, err = inproc("datasets", "--out", str(out))
    assert code == 0 and "shard-00000.npz is truncated" in stdout and "1 dataset(s) damaged" in err
    code, stdout, err = inproc("datasets", "--out", str(out), "--verify")
    assert code == 1 and "SHA-256 differs" in stdout and "2 dataset(s) damaged" in err
    # appending to a damaged dataset is refused before anything is trained
    code, _, err = inproc("collect", "--env", "pointmass", "--algo", "ppo", "--preset", "smoke", "--name", "a",
                          "--out", str(out), "--quiet")  # fmt: skip
    assert_one_line_error(code, err, "cannot append to", "shard-00000.npz is truncated")
    assert not (out / "runs").exists() or not list((out / "runs").rglob("config.yaml"))


# -- interrupts at awkward moments (subprocesses) ---------------------------------------------------------

_LONG = ["--set", "total_steps=400000", "--set", "eval_every=1024", "--set", "num_envs=8", "--quiet"]


def _start_run(out: Path, run_id: str) -> tuple[subprocess.Popen, Path]:
    cmd = pwm_bench("run", "--algo", "ppo", "--env", "pointmass", "--out", str(out), "--run-id", run_id, *_LONG)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = out / "runs" / "pointmass" / "ppo" / run_id
    wait_for((run_dir / "checkpoints" / "latest.pt").exists)
    assert proc.poll() is None, proc.communicate()
    return proc, run_dir


@pytest.mark.parametrize("gap", [0.0, 0.1, 0.15])
def test_a_second_ctrl_c_at_any_moment_leaves_status_interrupted(out: Path, gap: float) -> None:
    proc, run_dir = _start_run(out, f"gap{gap}")
    if gap == 0.0:
        # meanwhile a second process cannot train the same run
        res = subprocess.run(pwm_bench("run", "--resume", str(run_dir)), capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and f"in use by process {proc.pid}" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert read_summary(run_dir)["status"] == "interrupted"
    assert not (run_dir / LOCK_FILE).exists()
    _metrics_ok(run_dir)


def test_pretrain_wm_stops_on_sigterm_and_resumes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results"
    _record_pointmass(out / "datasets" / "d", steps=400, num_envs=4, shard=500)
    wm = [f"--set=wm.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY_WM.items()]
    args = ["pretrain-wm", "--dataset", "d", "--name", "m", "--out", str(out), "--device", "cpu", "--quiet"]
    args += ["--set", "batch_size=16", "--set", "horizon=4", "--set", "eval_every=5", "--set", "eval_batches=1"]
    proc = subprocess.Popen(pwm_bench(*args, *wm, "--steps", "300"), stderr=subprocess.PIPE, text=True)
    folder = out / "world_models" / "m"
    wait_for((folder / "metrics.csv").exists)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "continue with: pwm-bench pretrain-wm --name m --resume" in stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] < 300
    res = subprocess.run(
        pwm_bench("pretrain-wm", "--name", "m", "--resume", "--out", str(out), "-q"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    steps = pd.read_csv(folder / "metrics.csv")["step"].tolist()
    assert steps == [float(s) for s in range(5, 301, 5)]  # every evaluation row, none twice


def test_compare_ctrl_c_stops_the_grid_and_exits_130(out: Path) -> None:
    cmd = pwm_bench("compare", "--env", "pointmass", "--algos", "ppo", "--seeds", "2", "--preset", "smoke")
    cmd += ["--out", str(out), *_LONG]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(out.glob("runs/*/*/*/checkpoints/latest.pt")))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    runs = sorted((out / "runs" / "pointmass" / "ppo").iterdir())
    assert len(runs) == 1 and read_summary(runs[0])["status"] == "interrupted"  # the second cell never started


# -- fault injection --------------------------------------------------------------------------------------

_TINY_PPO = [f"--set={k}={v}" for k, v in {**PPO_TINY, "total_steps": "6144"}.items()]


def _kill_at_random(cmd: list[str], marker, rng: random.Random) -> str:
    """Start ``cmd``, wait until ``marker()`` is true (it is working), then after a random pause send a
    random one of SIGKILL, SIGTERM, SIGINT. Returns what happened."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: proc.poll() is not None or marker(), poll=0.02)
    time.sleep(rng.uniform(0.0, 1.5))
    sig = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
    if proc.poll() is not None:
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        return "finished before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130, -signal.SIGKILL), (proc.returncode, err)
    return f"{signal.Signals(sig).name} -> exit {proc.returncode}"


def _store_files(out: Path) -> list[Path]:
    keep = ("config.yaml", "summary.json", "metrics.csv", "latest.pt", "best.pt", "manifest.json", "model.pt")
    return sorted(p for p in out.rglob("*") if p.is_file() and (p.name in keep or p.suffix == ".npz"))


def test_fault_injection_kills_and_a_damaged_file_lose_no_row(tmp_path: Path) -> None:
    """Kill a run, a collect, a pretrain-wm and a sweep at random points, damage a random file of the
    store; `results` still lists every run, and the same command (or ``--resume``, or a rerun under a
    new name where the damaged file was essential) completes with every metric row once.
    ``PWM_BENCH_FAULT_SEED`` picks other points."""
    rng = random.Random(int(os.environ.get("PWM_BENCH_FAULT_SEED", "0")))
    out = tmp_path / "results"
    _record_pointmass(out / "datasets" / "base", steps=300, num_envs=4, shard=500)
    wm = [f"--set=wm.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY_WM.items()]
    common = ["--preset", "smoke", "--out", str(out), "--quiet", *_TINY_PPO]
    sweep = ["sweep", "single-task", "--scale", "smoke", "--algos", "ppo", "--envs", "pointmass", "--seeds", "2"]
    pretrain = ["pretrain-wm", "--dataset", "base", "--name", "m", "--out", str(out), "--device", "cpu", "-q"]
    pretrain += ["--steps", "150", "--set=batch_size=16", "--set=horizon=4", "--set=eval_every=10", *wm]
    cmds = {
        "run": ["run", "--algo", "ppo", "--env", "pointmass", "--run-id", "r", *common],
        "collect": ["collect", "--env", "pointmass", "--algo", "ppo", "--name", "ds", *common],
        "sweep": [*sweep, "--out", str(out), "--quiet", *_TINY_PPO],
        "pretrain": pretrain,
    }
    runs = out / "runs" / "pointmass" / "ppo"
    markers = {
        "run": lambda: (runs / "r" / "metrics.csv").exists(),
        "collect": lambda: (out / "datasets" / "ds" / "manifest.json").exists(),
        "sweep": lambda: any(runs.glob("cmp-*/metrics.csv")),
        "pretrain": lambda: (out / "world_models" / "m" / "metrics.csv").exists(),
    }
    happened = {name: _kill_at_random(pwm_bench(*args), markers[name], rng) for name, args in cmds.items()}
    # a completed run's metrics.csv is excluded: nothing rewrites it once training has ended
    candidates = [
        p
        for p in _store_files(out)
        if not (p.name == "metrics.csv" and read_summary(p.parent).get("status") == "completed")
    ]
    victim = rng.choice(candidates)
    _damage(victim, "truncate")
    print(f"killed: {happened}; damaged: {victim.relative_to(out)}")

    # the store is listed whole: every run folder is a row, the damaged or dead ones included
    code, _, _ = inproc("results", "--out", str(out))
    assert code == 0
    assert len(runs_table(out)) == len(list(out.glob("runs/*/*/*/config.yaml"))) >= 2

    def recover(args: list[str], first: list[str] | None, rename: tuple[str, str]) -> None:
        """``first`` (a resume), else ``args``; when that is refused (one line, exit 2: a damaged
        essential file, a completed run with a damaged checkpoint), ``args`` under a new name."""
        code, _, err = inproc(*(first or args))
        if code == 2:
            assert_one_line_error(code, err)
            flag, new = rename
            renamed = list(args)
            renamed[renamed.index(flag) + 1] = new
            code, _, err = inproc(*renamed)
        assert code == 0, err

    run_dir = runs / "r"
    if read_summary(run_dir).get("status") != "completed" or victim.parent in (run_dir, run_dir / "checkpoints"):
        resume = ["run", "--resume", str(run_dir)] if (run_dir / "config.yaml").exists() else None
        recover(cmds["run"], resume, ("--run-id", "r2"))
    recover(cmds["collect"], None, ("--name", "ds2"))
    code, _, err = inproc(*cmds["sweep"])
    if code != 0:  # a cell that cannot be continued is named, with what to do: move it away, sweep again
        stuck = [d for d in runs.glob("cmp-*") if read_summary(d).get("status") != "completed"]
        assert len(stuck) == 1 and victim.is_relative_to(stuck[0]), (stuck, victim, err)
        stuck[0].rename(tmp_path / stuck[0].name)
        code, _, err = inproc(*cmds["sweep"])
    assert code == 0, err
    model = out / "world_models" / "m"
    if victim.is_relative_to(out / "datasets" / "base"):  # its input is damaged: refused, naming the file
        code, _, err = inproc(*cmds["pretrain"], *(["--resume"] if model.exists() else []))
        assert_one_line_error(code, err, victim.name)
    else:
        recover(cmds["pretrain"], [*cmds["pretrain"], "--resume"] if model.exists() else None, ("--name", "m2"))
    assert inproc("datasets", "--out", str(out))[0] == 0

    # every completed run has all its rows once and the whole budget
    completed = runs_table(out).query("status == 'completed'")
    assert {"r", "r2"} & set(completed["run_id"])
    assert len(completed[completed["run_id"].str.startswith("cmp-")]) == 2
    for path in completed["path"]:
        df = _metrics_ok(Path(path))
        assert df["env_steps"].iloc[-1] == 6144
    for folder in (out / "world_models").iterdir():
        if json.loads((folder / "summary.json").read_text())["status"] == "completed":
            assert pd.read_csv(folder / "metrics.csv")["step"].tolist() == [float(s) for s in range(10, 151, 10)]


def test_sigterm_before_the_run_folder_exists_exits_130(out: Path) -> None:
    """``kill`` while the command is still starting (importing, building envs) means Ctrl-C: exit 130."""
    proc = subprocess.Popen(
        pwm_bench("run", "--algo", "ppo", "--env", "pointmass", "--out", str(out), *_LONG),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.8)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    for run_dir in out.glob("runs/*/*/*"):  # if it got that far, the run is resumable, not "running"
        assert read_summary(run_dir).get("status") in (None, "interrupted")


def test_sweep_names_a_cell_it_cannot_continue_and_reruns_it_once_moved(tmp_path: Path) -> None:
    out = tmp_path / "results"
    sweep = ["sweep", "single-task", "--scale", "smoke", "--algos", "ppo", "--envs", "pointmass", "--seeds", "2"]
    sweep += ["--out", str(out), "--quiet", *_TINY_PPO]
    assert inproc(*sweep)[0] == 0
    cells = sorted((out / "runs" / "pointmass" / "ppo").glob("cmp-*"))
    (cells[0] / "config.yaml").write_text("{")
    (cells[1] / "summary.json").write_text("")  # only the summary: the cell is resumed and rewritten
    code, _, err = inproc(*sweep)
    assert code == 1 and "config.yaml is damaged" in err and f"move {cells[0]} away" in err, err
    assert read_summary(cells[1])["status"] == "completed"
    cells[0].rename(tmp_path / "moved")
    code, _, err = inproc(*sweep)
    assert code == 0, err
    _metrics_ok(cells[0])
