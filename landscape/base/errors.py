"""The project's error types. A user's mistake (a bad flag, a missing or foreign file, a refused resume) is a
`UserError`, raised on purpose where the input enters, and the CLIs print it as one line; any other exception is
a bug of ours and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or files; the message names the problem and the fix."""

    def __str__(self) -> str:
        return error_message(self)


class ConfigError(UserError, ValueError):
    """A bad argument value (a ValueError too, for library callers that catch those)."""


class UnknownNameError(UserError, KeyError):
    """A name no registry holds: a model, a dataset, a loss (a KeyError too)."""


def error_message(exc: BaseException) -> str:
    """The one-line text of an exception: its message with line breaks folded, or the file an OSError names."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return " ".join(text.split())
