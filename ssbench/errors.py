"""Errors a user can fix. The CLI prints their message as one line and exits with code 2."""
from __future__ import annotations


class SsbenchError(Exception):
    """Base class: the message is the whole story, shown to the user without a traceback."""


class UnknownNameError(SsbenchError, KeyError):
    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; choose from: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class DataNotFoundError(SsbenchError):
    """A data set is not on disk and cannot be downloaded."""


class CheckpointError(SsbenchError):
    """A checkpoint is missing, corrupt, or belongs to another architecture / rule / task."""


class SpecError(SsbenchError):
    """A recipe or command-line configuration does not validate."""


class RunNotFoundError(SsbenchError):
    """No run with that id in the results store."""


class StoreError(SsbenchError):
    """The results store cannot be opened or used: bad URL, missing driver, unreachable server,
    refused credentials, a file system SQLite is not safe on."""


class ArtifactError(CheckpointError):
    """An artifact file (checkpoint, retrieval split) is missing or is not the file the store recorded."""


class StorageError(SsbenchError):
    """A write was refused by the file system or the database: no space left, read-only, permission
    denied. The message names what was being written and where."""


class Terminated(SystemExit):
    """SIGTERM as an exception (exit status 128 + 15), so the running job's store context marks its
    run failed, saying why, instead of leaving it 'running' or recording a bare exit code."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return ("ended by SIGTERM: a scheduler or `kill`, or a launcher (torchrun, ssbench --gpus) ending a "
                "data-parallel job after another of its processes failed")


def raise_terminated(signum: int, _frame: object) -> None:
    """A SIGTERM handler: `signal.signal(signal.SIGTERM, raise_terminated)`."""
    raise Terminated(signum)
