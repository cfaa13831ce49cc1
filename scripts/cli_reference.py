"""Print docs/cli.md: every command's --help, from the live typer app (so the doc cannot drift)."""
from __future__ import annotations

import os

from typer.testing import CliRunner

from ssbench.cli import app

os.environ["COLUMNS"] = "100"
COMMANDS = [[], ["pretrain"], ["finetune"], ["train"], ["attack"], ["analyze", "hessian"], ["analyze", "corruptions"], ["analyze", "trainability"],
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


if __name__ == "__main__":
    main()
