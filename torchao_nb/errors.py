"""The error a user can fix, and how any exception reads in a row: no torch needed to import this."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: shown as one clear line, never as a traceback."""


class Crashed(Exception):
    """Work run in a child process died (a signal, an exit) or outlived its time: `how`, and `phase`, the last step
    it reported, which names what killed it."""

    def __init__(self, how: str, phase: str):
        super().__init__(f"{how} while {phase}")
        self.how, self.phase = how, phase


def error_text(e: BaseException, limit: int = 500) -> str:
    """'Type: first line of the message', cut to `limit` characters: what a row or a table shows."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:limit]


class Notice(UserWarning):
    """Something a user should know that is not an error (a resumed folder's summary, a setting that does nothing
    here): raised with warnings.warn, so the API shows it once and the command line prints it as one line."""
