"""Configuration dataclasses, presets and type-checked ``key=value`` overrides.

Every algorithm has a config dataclass deriving from :class:`TrainConfig`. Presets are named sets of
overrides that may depend on the environment:

- ``smoke``: finishes in about a minute on 2 CPU cores (wiring checks, not learning);
- ``cpu``: learns something meaningful in at most 30 minutes on 2 CPU cores;
- ``paper``: the published settings.

Overrides use dotted keys into nested dataclasses (``net.hidden=[64,64]``); each value is parsed
and checked against the field's annotated type, and bad keys or values raise :class:`UsageError`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self, get_args, get_origin

from pwm_bench.errors import UsageError, unknown_choice

PRESETS: tuple[str, ...] = ("smoke", "cpu", "paper")
MAX_NUM_ENVS = 2**20
"""Most parallel worlds a config may ask for (more would only fail allocating memory)."""
"""Names of the presets every algorithm config provides."""

PRESET_HELP: dict[str, str] = {
    "smoke": "about a minute on 2 CPU cores; checks the wiring, does not learn",
    "cpu": "at most 30 minutes on 2 CPU cores; learns",
    "paper": "published settings (GPU-scale budgets)",
}


@dataclasses.dataclass
class TrainConfig:
    """Settings the harness reads from every algorithm's config.

    Budgets are in environment steps counted over all parallel worlds (one ``env.step`` of
    ``num_envs`` worlds is ``num_envs`` steps), so algorithms compare at equal sample counts.
    """

    total_steps: int = 100_000
    """Environment-step budget of the run (all worlds together)."""
    num_envs: int = 8
    """Number of parallel worlds used for training."""
    eval_every: int = 10_000
    """Evaluate the deterministic policy (and checkpoint) every this many env steps."""
    eval_episodes: int = 10
    """Episodes per evaluation, run as that many parallel worlds."""

    def preset_overrides(self, preset: str, env: str) -> dict[str, Any]:
        """Overrides (dotted key -> value) that turn the defaults into ``preset`` for ``env``.

        Subclasses override this; the base class knows no presets beyond its defaults.
        """
        return {}

    @classmethod
    def from_preset(cls, preset: str, env: str) -> Self:
        """Config for ``preset`` on environment ``env`` (raises :class:`UsageError` if unknown)."""
        if preset not in PRESETS:
            raise unknown_choice("preset", preset, PRESETS)
        cfg = cls()
        return apply_overrides(cfg, cfg.preset_overrides(preset, env))

    def budget(self) -> tuple[str, int]:
        """``(unit, total)`` of the run's budget: ``("env_steps", total_steps)``.

        Algorithms that do not interact with the env (offline training) return
        ``("iterations", n)``; ``eval_every`` is then counted in iterations too.
        """
        return "env_steps", self.total_steps

    def validate(self) -> None:
        """Check cross-field constraints; raise :class:`UsageError` naming the bad field."""
        for name in ("total_steps", "num_envs", "eval_every", "eval_episodes"):
            if getattr(self, name) <= 0:
                raise UsageError(f"config '{name}' must be positive, got {getattr(self, name)}")
        if self.num_envs > MAX_NUM_ENVS:
            raise UsageError(f"config 'num_envs' must be at most {MAX_NUM_ENVS:,}, got {self.num_envs:,}")
        # layer widths (actor_hidden, critic_hidden, hidden, ...): every layer needs a unit
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            widths = value if f.name.endswith("hidden") and isinstance(value, tuple | list) else ()
            if any(not isinstance(w, int) or w <= 0 for w in widths):
                raise UsageError(f"config '{f.name}' needs positive layer widths, got {list(value)}")


# --------------------------------------------------------------------------------------------------
# typed parsing of override values


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a YAML-loaded object) to type ``tp``.

    Supported annotations: bool, int, float, str, ``Literal[...]``, ``X | None`` and
    ``tuple[T, ...]`` / ``list[T]``. Raises ``ValueError`` when the value does not fit.
    """
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        members = get_args(tp)
        if type(None) in members and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))
        ):
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return coerce(value, member)
            except ValueError:
                pass
        raise ValueError
    if origin is Literal:
        for choice in get_args(tp):
            if value == choice or str(value) == str(choice):
                return choice
        raise ValueError
    if origin in (tuple, list):
        (elem,) = [a for a in get_args(tp) if a is not Ellipsis][:1] or [Any]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(("[", "(")) and text.endswith(("]", ")")):
                text = text[1:-1]
            items: Sequence[Any] = [s.strip() for s in text.split(",") if s.strip()]
        elif isinstance(value, list | tuple):
            items = value
        else:
            raise ValueError
        out = [coerce(v, elem) for v in items]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                f = float(value)  # accept 1e6 and 2.0 for integer fields, not 2.5
                if f.is_integer():
                    return int(f)
                raise
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        f = float(value)
        if not math.isfinite(f):  # no config value means nan or inf (a clamp "off" is None or 0)
            raise ValueError
        return f
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if tp is Any:
        return value
    raise ValueError


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """All dotted keys of a (nested) config dataclass instance."""
    keys: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(config_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], *, what: str = "config key") -> Any:
    """Return a copy of ``cfg`` with dotted-key overrides applied and type-checked.

    Args:
        cfg: a config dataclass instance (may nest other dataclasses).
        overrides: mapping ``"a.b" -> value``; string values are parsed against the field type.
        what: noun used in error messages.

    Raises:
        UsageError: unknown key (closest match suggested) or a value of the wrong type.
    """
    for key, value in overrides.items():
        cfg = _set_one(cfg, key, key.split("."), value, what)
    return cfg


def _set_one(obj: Any, full_key: str, path: list[str], value: Any, what: str) -> Any:
    name = path[0]
    fields = _field_types(type(obj))
    if name not in fields:
        prefix = full_key[: len(full_key) - len(".".join(path))]
        raise unknown_choice(what, full_key, [prefix + k for k in config_keys(obj)])
    current = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise UsageError(f"{what} '{full_key}': '{name}' has no sub-keys")
        return dataclasses.replace(obj, **{name: _set_one(current, full_key, path[1:], value, what)})
    if dataclasses.is_dataclass(current):
        if not isinstance(value, Mapping):
            raise UsageError(f"{what} '{full_key}' is a group; set its fields, e.g. '{full_key}.<field>=...'")
        return dataclasses.replace(obj, **{name: apply_overrides(current, dict(value), what=what)})
    tp = fields[name]
    try:
        parsed = coerce(value, tp)
    except (ValueError, TypeError):
        raise UsageError(f"{what} '{full_key}': expected {_type_name(tp)}, got {value!r}") from None
    return dataclasses.replace(obj, **{name: parsed})


def parse_set_options(items: Sequence[str]) -> dict[str, str]:
    """Parse ``["a.b=1", "c=x"]`` from the command line into ``{"a.b": "1", "c": "x"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data (YAML-safe) dict of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


NEUTRAL = "neutral"
"""Field metadata key: the value at which a field added after runs were stored leaves behaviour as it
was. :func:`identity_dict` leaves such a field out at that value, so run ids stay the same."""


def neutral(default: Any) -> Any:
    """A config field added later whose ``default`` reproduces the behaviour before it existed."""
    return dataclasses.field(default=default, metadata={NEUTRAL: default})


def identity_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` without the fields that sit at their neutral value (see :func:`neutral`): what
    a run's identity (its id's config hash) is computed from."""
    d = to_dict(cfg)
    for f in dataclasses.fields(cfg):
        if NEUTRAL in f.metadata and getattr(cfg, f.name) == f.metadata[NEUTRAL]:
            d.pop(f.name, None)
    return d


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a config dataclass of type ``cls`` from :func:`to_dict` output (type-checked)."""
    return apply_overrides(cls(), _flatten(data))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a config dataclass.

    They are the help text of each field in ``pwm-bench list --algo``; read from the source so the
    text lives in one place, next to the field.
    """
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for prev, node in itertools.pairwise(body):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


__all__ = [
    "PRESETS",
    "PRESET_HELP",
    "TrainConfig",
    "apply_overrides",
    "coerce",
    "config_keys",
    "field_docs",
    "from_dict",
    "parse_set_options",
    "to_dict",
]
