"""Exceptions of the harness.

Every error a user can cause by bad input is a :class:`UsageError`: the CLI prints its one-line
message and exits with code 2, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PwmBenchError(Exception):
    """Base class of all pwm-bench errors."""


class UsageError(PwmBenchError):
    """Bad input from the user (unknown name, bad value, missing device). CLI exit code 2."""


class DamagedFileError(UsageError):
    """A file of the results store cannot be read (truncated, not the expected format); the message
    names it. CLI exit code 2."""


class LockedError(UsageError):
    """Another live process holds the run's lock; the message names its pid. CLI exit code 2."""


class NonFiniteError(PwmBenchError):
    """A NaN or inf appeared in a loss, metric or observation; the message says where."""


class RunInterrupted(PwmBenchError):
    """Raised inside a run after a stop request (SIGINT/SIGTERM) once its state is saved."""


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> UsageError:
    """Build the one-line error for an unknown name, suggesting the closest valid choice.

    Example: ``unknown algorithm 'ppp'; did you mean 'ppo'? (valid: ppo, sac)``.
    """
    choices = sorted(choices)
    if not choices:
        return UsageError(f"unknown {kind} '{value}' (there are none to choose from)")
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UsageError(f"unknown {kind} '{value}'{hint} (valid: {', '.join(choices)})")
