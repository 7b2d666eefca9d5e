"""Where a command's errors end: one line ``error: ...`` on stderr and a non-zero exit code.

Never a traceback for an error the user can act on (every ``EventwireError``, the security
package's errors, a file that cannot be read, Ctrl-C), and never a password: credentials in
URLs are shown as ``***`` wherever they occur in the message. ``--debug`` (or
``EVENTWIRE_DEBUG=1``) prints the traceback too, credentials still masked.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any, NoReturn

import nats.errors
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from eventwire import EventwireError
from eventwire_security import SecurityError

from ._connect import describe

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
_CREDENTIALS = re.compile(r"(?<=://)[^\s/@]+@")
_WHITESPACE = re.compile(r"\s+")
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def one_line(error: str | BaseException) -> str:
    """The message of ``error`` on one line, with any URL credentials replaced by ``***``."""
    text = str(error) if isinstance(error, str) else (str(error) or type(error).__name__)
    return _CREDENTIALS.sub("***@", _WHITESPACE.sub(" ", text).strip())


def debugging() -> bool:
    """Whether ``--debug`` (or ``EVENTWIRE_DEBUG=1``) asks for tracebacks."""
    return os.environ.get("EVENTWIRE_DEBUG", "") not in ("", "0")


def fail(error: str | BaseException, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and end the command with exit code ``code``
    (after the traceback, credentials masked, with ``--debug``)."""
    if isinstance(error, BaseException) and debugging():
        text = "".join(traceback.format_exception(error))
        stderr.print(escape(_CREDENTIALS.sub("***@", text)), end="")
    stderr.print(f"[red]error:[/red] {escape(one_line(error))}")
    raise typer.Exit(code)


def command_group(help_text: str) -> typer.Typer:
    """A group of commands behind the boundary, also when it is run on its own."""
    return typer.Typer(help=help_text, no_args_is_help=True, cls=Boundary)


class Boundary(TyperGroup):
    """A command group whose commands run inside :meth:`invoke`'s handler (the root
    group is one, so every command is behind it)."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors click)
        try:
            return super().invoke(ctx)
        except (EventwireError, SecurityError, OSError) as exc:
            fail(exc)
        except nats.errors.Error as exc:  # one the SDK did not map: still one line
            if debugging():
                fail(exc)
            fail(describe(exc))
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
