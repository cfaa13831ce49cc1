"""Print docs/cli.md: every command's --help, from the live typer app (so the doc cannot drift)."""
from __future__ import annotations

import os

from typer.testing import CliRunner

from ssbench.cli import app
from ssbench.cli.app import INTERNAL_ERROR, USER_ERROR

os.environ["COLUMNS"] = "100"
COMMANDS = [[], ["pretrain"], ["finetune"], ["train"], ["attack"], ["analyze", "hessian"], ["analyze", "corruptions"], ["analyze", "trajectory"],
            ["analyze", "trainability"],
            ["report"], ["runs"], ["show"], ["run"], ["rules"]]


def main() -> None:
    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    print("# CLI reference\n")
    print("Generated from the live app: `python scripts/cli_reference.py > docs/cli.md`.\n")
    for cmd in COMMANDS:
        out = runner.invoke(app, [*cmd, "--help"]).output
        print(f"## `ssbench {' '.join(cmd)}`\n" if cmd else "## `ssbench`\n")
        print("```text")
        print(out.rstrip())
        print("```\n")
    print(ERRORS.format(user=USER_ERROR, internal=INTERNAL_ERROR))


ERRORS = """## Errors and exit codes

Every failure is one line on stderr, `error: ...`, saying what is wrong and what to do.

| code | meaning |
|---|---|
| 0 | done |
| {user} | bad input, or an environment you can fix: an unknown name or option value (the line lists the choices), a number out of range or not finite, a missing or invalid file (data folder, recipe, checkpoint), an `--out` that is a file, a store that cannot be opened (bad URL, missing driver, unreachable server; the password is never shown), a store written by a newer ssbench, a full disk, a read-only file system or database, permission denied, out of memory. A refused input leaves nothing in the store: it is checked before a run is created. A fault during a run (disk full) marks that run failed and removes its temporary files. |
| {internal} | an unexpected error (a bug or an unforeseen fault): its one-line summary and "rerun with --debug for the traceback"; also `ssbench run` when some of its jobs failed (the rest ran; rerun to retry them) |
| 130 | interrupted (Ctrl-C); SIGTERM exits with 143. The running run is marked failed. |

`ssbench --debug COMMAND ...` (or `SSBENCH_DEBUG=1`) shows the Python traceback of an unexpected error.
Text that comes from users or files (tags, run names, errors, paths) is printed with its control
characters written out as `\\xNN`: an escape sequence in a tag cannot retitle or clear your terminal.
"""


if __name__ == "__main__":
    main()
