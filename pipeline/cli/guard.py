"""The one place where an exception escaping a command becomes a one-line error and an exit code.

`GuardedGroup` is the class of the root `peerscale` command, and every subcommand runs inside its
`invoke`: a storage outage, a planner or solver failure, a corrupt file or a bug prints
`error: …` saying what to do, never a traceback (`--debug` / PEERSCALE_DEBUG=1 print the
traceback too), and usage errors (a bad option value) print on one line as well.

Exit codes: 2 when the user can fix the input or the usage (a bad value, a missing file, a bucket
that does not exist), 1 when the operation failed (an outage, the solver, a bug).
"""

from __future__ import annotations

from typing import Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # Typer's own copy of click
from typer.core import TyperGroup

from pipeline.cli.options import EXIT_FAILED, EXIT_USAGE, fail

EXIT_CODES_EPILOG = (
    "Exit codes: 0 done; 1 the operation failed (storage outage, planner or solver failure, a bug); "
    "2 the input or usage is wrong (fix it and re-run). Errors print as one line on stderr; "
    "--debug (or PEERSCALE_DEBUG=1) adds the traceback."
)
DEBUG_HINT = "re-run with --debug (or PEERSCALE_DEBUG=1) for the traceback"


class GuardedGroup(TyperGroup):
    """A Typer group that turns every exception of its commands into `describe`'s one-line error."""

    def invoke(self, ctx: Any) -> Any:  # ctx: a Typer (vendored click) Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, NoArgsIsHelpError):
            raise
        except UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "peerscale"
            fail(f"{exc.format_message()} (see `{where} --help`)", EXIT_USAGE)
        except ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except Exception as exc:  # every other failure: one line, a code, the traceback only under --debug
            code, message = describe(exc)
            fail(message, code)


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message saying what to do) for an exception a command did not handle."""
    from pipeline.common.storage import StoragePermanentError, StorageTransientError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, StorageTransientError):
        return EXIT_FAILED, (f"{text}; the store is unreachable or throttling: run the same command again when it is back "
                             "(writes are atomic, so a re-run replaces whatever this one left)")
    if isinstance(exc, StoragePermanentError):
        return EXIT_USAGE, text  # its message already says: check the bucket name, region and credentials
    if isinstance(exc, MemoryError):
        return EXIT_FAILED, ("out of memory: ask for less (fewer series, a shorter horizon or time range) "
                             "or run on a machine with more memory")
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_USAGE, f"a file is not UTF-8 text ({text}): re-save it as UTF-8"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_USAGE, f"{text}: check the path and its permissions"
    if isinstance(exc, ValueError):
        return EXIT_USAGE, text
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{text} ({DEBUG_HINT})"
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {text} ({DEBUG_HINT}, and report it)"
