"""The typer application object and the one place exceptions become one line and an exit code.

Every message the CLI prints for a failure goes through :func:`error_line`: user-fixable errors
(``SsbenchError``, pydantic validation, click usage errors) and the known families of environment
errors (a full or read-only disk, a refused database write, an unknown schema) are one line saying
what is wrong and what to do, exit code 2. Anything else is a bug or an unforeseen fault: its
one-line summary, "rerun with --debug", exit code 1. ``--debug`` (or ``SSBENCH_DEBUG=1``) re-raises
so the traceback shows.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from typing import Any

import typer
from pydantic import ValidationError
from typer import Abort, Exit
from typer.core import TyperGroup

try:  # typer >= 0.22 ships its own copy of click; its exceptions are what commands raise
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import ClickException, UsageError

from ssbench.errors import SsbenchError
from ssbench.printing import plain

USER_ERROR = 2  # bad input or an environment the user can fix
INTERNAL_ERROR = 1  # anything unforeseen

_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "not a folder",
    errno.EEXIST: "already exists",
}


def validation_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    value = first.get("input")
    got = f", got {value!r}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    msg = str(first.get("msg", err)).removeprefix("Value error, ")  # a validator's own sentence
    return f"invalid {where}: {msg}{got}{more}"


def _first_line(text: object) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " ".join(lines[0].split()) if lines else ""


def _os_line(err: OSError) -> str:
    what = _OS_ERRORS.get(err.errno or -1, _first_line(err.strerror or err) or type(err).__name__)
    where = f" ({err.filename})" if err.filename else ""
    hint = {errno.ENOSPC: "; free space or write elsewhere (--artifacts, --db, --out)",
            errno.EDQUOT: "; free space or write elsewhere (--artifacts, --db, --out)",
            errno.EROFS: "; write elsewhere (--artifacts, --db, --out)"}.get(err.errno or -1, "")
    return f"{what}{where}{hint}"


def _database_line(err: Exception) -> str | None:
    """A SQLAlchemy error the user can act on (full disk, read-only file, locked), else None."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    if isinstance(err, ArgumentError):
        return f"results store: {_first_line(err)}"
    if not isinstance(err, OperationalError):
        return None
    msg = _first_line(getattr(err, "orig", None) or err)
    low = msg.lower()
    if "disk is full" in low or "no space" in low:
        return f"results store: {msg}; free space on its disk and rerun (finished work is kept)"
    if "readonly" in low or "read-only" in low:
        return f"results store: {msg}; it cannot be written here (read-only file or folder): use another --db"
    if "locked" in low:
        return f"results store: {msg}; another process holds a long write lock, retry"
    return f"results store: {msg}"


def _out_of_memory(err: BaseException) -> bool:
    # torch raises OutOfMemoryError (CUDA) or a RuntimeError from its CPU allocator, not MemoryError
    text = str(err).lower()
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def error_line(err: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception that ends a command."""
    if isinstance(err, SsbenchError):
        return _first_line(err) or type(err).__name__, USER_ERROR
    if isinstance(err, ValidationError):
        return validation_line(err), USER_ERROR
    if isinstance(err, ClickException):
        return _click_line(err), err.exit_code
    db = _database_line(err) if isinstance(err, Exception) else None
    if db is not None:
        return db, USER_ERROR
    if type(err).__name__ == "CommandError" and type(err).__module__.startswith("alembic"):
        return f"results store schema: {_first_line(err)}", USER_ERROR
    if isinstance(err, OSError) and err.errno in _OS_ERRORS:
        return _os_line(err), USER_ERROR
    if _out_of_memory(err):
        asked = re.search(r"allocate (\d+) bytes", str(err))
        what = f"asked for {int(asked.group(1)) / 2**30:.1f} GiB" if asked else _first_line(err)[:120]
        return (f"out of memory ({what}); use a smaller --batch-size, --image-size or --n, "
                "or a machine with more memory"), USER_ERROR
    summary = _first_line(err)
    return (f"{type(err).__name__}{': ' + summary if summary else ''} "
            "(an unexpected error; rerun with --debug for the traceback)"), INTERNAL_ERROR


def _click_line(err: ClickException) -> str:
    # typer passes pydantic-style messages through: "Value error, 'x' is not one of ..."
    msg = _first_line(err.format_message()).replace("Value error, ", "")
    ctx = getattr(err, "ctx", None)
    if isinstance(err, UsageError) and ctx is not None:
        msg += f" (see `{ctx.command_path} --help`)"
    return msg


def fail(message: str, code: int) -> None:
    # control characters in a message (a run name, a path) must not drive the terminal
    typer.secho(f"error: {plain(message)}", err=True, fg="red")
    sys.exit(code)


def debugging(ctx: Any | None = None) -> bool:
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return os.environ.get("SSBENCH_DEBUG", "").strip().lower() in ("1", "true", "yes")


class SsbenchGroup(TyperGroup):
    """Runs every command (sub-apps included) under :func:`error_line`."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except Abort:
            fail("aborted", 130)
        except ClickException as err:  # usage errors: one line instead of typer's box
            if not standalone_mode:
                raise
            fail(*error_line(err))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (Exit, Abort, ClickException):
            raise
        except Exception as err:  # noqa: BLE001  (the one place every failure becomes one line)
            if debugging(ctx) and not isinstance(err, (SsbenchError, ValidationError)):
                raise
            fail(*error_line(err))

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # pipeline order, as registered


app = typer.Typer(
    cls=SsbenchGroup,
    name="ssbench",
    help=(
        "Benchmark learning rules that avoid weight transport.\n\n"
        "Pipeline: pretrain (BP) -> finetune --rule R -> attack (feedback / exact / transfer "
        "gradients) -> report. Every number lands in one results database (SSBENCH_DB, default "
        "./ssbench-results/results.db), so report can rebuild any table later. "
        "`ssbench run recipes/quickstart.yaml` runs a whole grid."
    ),
    no_args_is_help=True,
    # markdown: docstrings wrapped at 100 columns reflow to the terminal instead of breaking mid-line
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion SHELL, and the _SSBENCH_COMPLETE protocol they install
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version() -> str:
    """The installed distribution's version (the package's own where it runs from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ssbench")
    except PackageNotFoundError:
        from ssbench import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:  # eager: before any command is looked up, so no argument is needed and nothing heavy loads
        typer.echo(f"ssbench {version()}")
        raise Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show the Python traceback of an unexpected error "
                               "(also SSBENCH_DEBUG=1)"),
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="print the version and exit"),
) -> None:
    # read where an error is handled (SsbenchGroup.invoke walks up to this context's params)
    del debug, show_version
