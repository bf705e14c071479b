"""How the ``recorder`` command reports a failure: one ``error:`` line, never a traceback.

A :class:`~recorder.errors.RecorderError` becomes ``error: ...`` plus one
``  caused by: ...`` line per distinct cause, with database passwords masked,
and exit status 1. Click's usage errors get the same one-line form and exit
status 2. :class:`RecorderContext` installs the handler on the root context
(click's ``with_resource`` sees every exception the command raises), so no
command and no ``main``/``invoke`` override has to catch anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from recorder.engine import database_url
from recorder.errors import RecorderError, StorageUnavailable
from recorder.masking import mask_secrets
from recorder.settings import Settings

EXIT_ERROR = 1
EXIT_USAGE = 2

# scheme://user:password@host -> scheme://user:***@host, in any message text.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)[^@\s/]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


# SQLAlchemy prefixes the driver's message with its class: "(psycopg.OperationalError) ..."
_WRAPPED_PREFIX = re.compile(r"^\([\w.]+\) ")


def error_lines(exc: BaseException, settings: Settings | None = None) -> list[str]:
    """``error: ...`` then one ``  caused by: ...`` line per exception in the chain.

    A cause whose text was already shown (SQLAlchemy repeats its driver's
    message) is left out. Passwords are masked, and a storage failure names the
    database it could not use.
    """
    headline = _first_line(str(exc)) or type(exc).__name__
    if settings is not None and isinstance(exc, StorageUnavailable):
        headline += f" (database {settings.masked_database_url})"
    lines = [f"error: {headline}"]
    shown = [headline]
    cause = _cause_of(exc)
    while cause is not None:
        message = _WRAPPED_PREFIX.sub("", _first_line(str(cause)))
        if message and not any(message in text for text in shown):
            lines.append(f"  caused by: {type(cause).__name__}: {message}")
            shown.append(message)
        cause = _cause_of(cause)
    return [_mask(line, settings) for line in lines]


def _cause_of(exc: BaseException) -> BaseException | None:
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _mask(text: str, settings: Settings | None) -> str:
    text = mask_secrets(redact(text))
    # The engine's parse: the password runs to the last "@" of the authority.
    password = database_url(settings.database_url).password if settings is not None else None
    if password and len(str(password)) >= 4:
        text = text.replace(str(password), "***")
    return text


class Failed(click.ClickException):
    """A runtime failure already rendered as lines; click prints them and exits with 1."""

    exit_code = EXIT_ERROR

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines[0])
        self.lines = lines

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.lines:
            click.echo(line, file=file, err=file is None)


class FailedUsage(Failed):
    """A usage mistake already rendered as one line; exit status 2."""

    exit_code = EXIT_USAGE


@contextmanager
def one_line_errors(ctx: click.Context) -> Iterator[None]:
    """Turn whatever the command raises into a :class:`Failed` (one ``error:`` line)."""
    try:
        yield
    except Failed:
        raise
    except RecorderError as exc:
        settings = ctx.obj if isinstance(ctx.obj, Settings) else None
        raise Failed(error_lines(exc, settings)) from exc
    except click.ClickException as exc:
        kind = FailedUsage if exc.exit_code == EXIT_USAGE else Failed
        raise kind([f"error: {redact(exc.format_message())}"]) from exc
    except (click.Abort, KeyboardInterrupt) as exc:
        raise Failed(["error: aborted"]) from exc
    except BrokenPipeError:
        raise  # `recorder query | head`: click quiets stdout and exits
    except OSError as exc:
        # The file system's answer (no such folder, permission denied, disk full).
        where = f": {exc.filename}" if exc.filename else ""
        raise Failed([f"error: {exc.strerror or exc}{where}"]) from exc


class RecorderContext(click.Context):
    """The root context installs :func:`one_line_errors` around the whole command."""

    def __init__(self, command: click.Command, parent: click.Context | None = None, **extra: Any):
        super().__init__(command, parent, **extra)
        if parent is None:
            self.with_resource(one_line_errors(self))
