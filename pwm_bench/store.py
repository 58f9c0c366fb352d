"""The results store: atomic file writes, the run-folder layout and the index over all runs.

Layout::

    <root>/runs/<env>/<algo>/<run-id>/
        config.yaml     resolved configuration (algorithm, env, seed, preset, device, all fields)
        metrics.csv     one row per training iteration, the design's metric names as columns
        summary.json    status (running, completed, interrupted, failed), final/best eval return,
                        env steps, wall time, versions, commit
        checkpoints/    latest.pt and best.pt

Every file is written to a temporary file in the same folder, flushed to disk and renamed over the
target, so a reader (or a run killed with SIGKILL) never sees a truncated file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

DEFAULT_ROOT = Path("results")
"""Default results root, relative to the working directory."""

_TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_yaml(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as block-style YAML to ``path`` atomically."""
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def atomic_save(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write a binary file whose content ``writer(fh)`` produces (e.g. ``torch.save``)."""
    with atomic_open(path, "wb") as fh:
        writer(fh)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files that a killed writer left in ``folder`` (recursively).

    Returns the number of files removed.
    """
    removed = 0
    for tmp in Path(folder).rglob(f".*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


NAME_MAX = 128
"""Longest run id, dataset or world-model name."""
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is one plain folder name inside the store, else :class:`UsageError`.

    Allowed: letters, digits and ``. _ + = -``, starting with a letter or digit, at most
    :data:`NAME_MAX` characters; so no path separator, no ``..`` and no absolute path can lead a
    write out of the results store.
    """
    from pwm_bench.errors import UsageError

    if not _NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
        raise UsageError(
            f"{what} {name[:60]!r}{'...' if len(name) > 60 else ''} is not a plain name: use letters, digits and "
            f"'._+=-', starting with a letter or digit, at most {NAME_MAX} characters"
        )
    return name


def env_dirname(env: str) -> str:
    """Folder name of an environment: ``gym:Pendulum-v1`` -> ``gym-Pendulum-v1``."""
    return env.replace(":", "-").replace("/", "-")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())


def damaged_file(path: str | os.PathLike[str], exc: BaseException | str) -> Exception:
    """The :class:`DamagedFileError` that names ``path`` and why it cannot be read (``exc``)."""
    from pwm_bench.errors import DamagedFileError

    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return DamagedFileError(f"{path} is damaged ({one_line(str(reason))[:200]})")


def read_torch(path: str | os.PathLike[str], keys: tuple[str, ...], kind: str) -> dict[str, Any]:
    """A ``torch.save``d dict holding ``keys`` (a checkpoint of ``kind``), or :class:`DamagedFileError`
    naming the file when it is empty, truncated, foreign or lacks a key."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file (EOFError, RuntimeError, UnpicklingError)
        raise damaged_file(path, exc) from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise damaged_file(path, f"not a {kind}: no {', '.join(missing)}")
    return data


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.json`` of a run (empty dict if missing), with a ``running`` status whose process
    is gone on this host reported as ``died``.

    A summary that cannot be parsed gives ``{"status": "damaged", "error": <which file, why>}``:
    the run's checkpoint may still be sound, and ``--resume`` rewrites the summary.
    """
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"expected a JSON object, found {type(summary).__name__}")
    except (ValueError, UnicodeDecodeError) as exc:
        return {"status": "damaged", "error": str(damaged_file(path, exc))}
    if summary.get("status") == "running" and not _process_alive(summary):
        summary["status"] = "died"
    return summary


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.yaml`` of a run as a dict (empty dict if missing).

    Raises:
        DamagedFileError: the file is not YAML, or not a mapping with ``algo``, ``env`` and ``seed``
            (the message names the file).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise damaged_file(path, exc) from None
    if not isinstance(cfg, dict) or not {"algo", "env", "seed"} <= set(cfg):
        raise damaged_file(path, "not a run config: expected a mapping with algo, env and seed")
    return cfg


def _process_alive(summary: dict[str, Any]) -> bool:
    pid, host = summary.get("pid"), summary.get("host")
    if pid is None or host != socket.gethostname():
        return True  # cannot tell from here; trust the file
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_FILE = ".lock"
"""A run folder's lock: JSON ``{"pid", "host", "since"}`` of the process that trains the run."""


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) and "pid" in owner else None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while the body trains the run; a second process gets :class:`LockedError`.

    The lock file is created with ``O_EXCL`` and names the owner's pid and host. A lock whose
    process is gone on this host is stale and taken over (so is an unreadable one older than
    10 s: a writer killed between creating and filling it). A lock from another host cannot be
    checked from here: the error says which file to delete if that process is gone.
    """
    from pwm_bench.errors import LockedError

    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            if owner is None:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - path.stat().st_mtime < 10.0:
                        raise LockedError(f"{run_dir} is being locked by another process; try again") from None
            elif _process_alive(owner):
                where = "" if owner.get("host") == me["host"] else f" on host {owner.get('host')}"
                raise LockedError(
                    f"{run_dir} is in use by process {owner['pid']}{where} (lock file {path}); "
                    "wait for it, stop it, or delete the lock file if that process is gone"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise LockedError(f"{run_dir}: could not take the lock file {path}; try again")
    try:
        yield
    finally:
        owner = _read_lock(path)
        if owner is not None and owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def iter_run_dirs(root: str | os.PathLike[str] = DEFAULT_ROOT) -> Iterator[Path]:
    """Every run folder under ``<root>/runs`` (those holding a ``config.yaml``), sorted."""
    runs = Path(root) / "runs"
    if not runs.is_dir():
        return
    yield from sorted(p.parent for p in runs.glob("*/*/*/config.yaml"))


TABLE_COLUMNS = (
    "env",
    "algo",
    "seed",
    "preset",
    "status",
    "env_steps",
    "wall_time",
    "final_eval_return",
    "best_eval_return",
)
"""Columns of the index that ``pwm-bench results`` shows."""

INDEX_COLUMNS = (*TABLE_COLUMNS, "device", "run_id", "path")
"""All columns of :func:`runs_table`."""


def runs_table(root: str | os.PathLike[str] = DEFAULT_ROOT) -> Any:
    """Index of all runs under ``root`` as a pandas DataFrame, one row per run.

    Columns: :data:`INDEX_COLUMNS` (``wall_time`` in seconds; returns are undiscounted episode
    returns of the deterministic policy). A run whose ``config.yaml`` or ``summary.json`` cannot be
    read has status ``damaged`` (its env and algorithm then come from its folder's place).
    """
    import pandas as pd

    from pwm_bench.errors import DamagedFileError

    rows = []
    for run_dir in iter_run_dirs(root):
        summary = read_summary(run_dir)
        try:
            cfg = read_config(run_dir)
        except DamagedFileError as exc:  # listed as damaged; the rest of the store still shows
            cfg, summary = {}, {**summary, "status": "damaged", "error": str(exc)}
        rows.append(
            {
                "env": cfg.get("env", summary.get("env", run_dir.parent.parent.name)),
                "algo": cfg.get("algo", summary.get("algo", run_dir.parent.name)),
                "seed": cfg.get("seed", summary.get("seed")),
                "preset": cfg.get("preset", summary.get("preset")),
                "status": summary.get("status", "unknown"),
                "env_steps": summary.get("env_steps"),
                "wall_time": summary.get("wall_time"),
                "final_eval_return": summary.get("final_eval_return"),
                "best_eval_return": summary.get("best_eval_return"),
                "device": summary.get("device", cfg.get("device")),
                "run_id": run_dir.name,
                "path": str(run_dir),
            }
        )
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def load_metrics(run_dir: str | os.PathLike[str]) -> Any:
    """``metrics.csv`` of one run as a pandas DataFrame (empty if the run logged nothing yet).

    Raises:
        DamagedFileError: the file is not a metrics table (the message names it).
    """
    import pandas as pd

    path = Path(run_dir) / "metrics.csv"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise damaged_file(path, exc) from None
    if "env_steps" not in df.columns:
        raise damaged_file(path, "no env_steps column")
    return df
