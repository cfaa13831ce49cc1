"""Options shared by several commands (one definition each, so help texts agree)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssbench.errors import SpecError

Db = Annotated[
    str | None,
    typer.Option("--db", envvar="SSBENCH_DB", help="SQLAlchemy URL of the results store [default: sqlite:///./ssbench-results/results.db]"),
]
Artifacts = Annotated[
    Path | None,
    typer.Option("--artifacts", envvar="SSBENCH_ARTIFACTS", file_okay=False,
                 help="folder holding the store's checkpoints and retrieval splits (recorded relative to it) "
                      "[default: the SQLite file's folder, else SSBENCH_HOME or ./ssbench-results]"),
]
Device = Annotated[str, typer.Option(help="auto (cuda when present), cpu, cuda, cuda:N")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
# the fixed example set of the curvature analyses (analyze hessian, analyze trajectory)
ExampleSplit = Annotated[str, typer.Option("--split", help="train or test")]
ExampleSeed = Annotated[int, typer.Option("--seed", help="example selection and random probes")]


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'0-4' -> (0,1,2,3,4); '5,7,9' -> (5,7,9); combinations like '0-2,7' work too. Not given: None;
    given empty: () (an empty subset, which the spec refuses, never "all classes")."""
    if text is None:
        return None
    if not text.strip():
        return ()
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise SpecError(f"--classes {text!r}: use a range like 0-4 or a list like 5,6,7") from None
    if len(set(out)) != len(out):
        raise SpecError(f"--classes {text!r} repeats a class")
    return tuple(out)


def parse_ints(text: str | None, option: str, example: str = "0,1,2") -> tuple[int, ...] | None:
    """'0,1,2' -> (0, 1, 2); not given -> None; given empty ('' or ',') -> (), which the spec judges
    (an option given empty is not "unset"); anything else is one line naming the option."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecError(f"{option} {text!r}: expected whole numbers separated by commas, e.g. {example}") from None


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecError(f"{text!r} is not a comma-separated list of numbers") from None


def check_filters(*, rule: str | None = None, model: str | None = None,
                  dataset: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(rule, model, dataset) filters as the store spells them (lower case). Each must name a
    registered thing: a typo (--rule xfa) would match no run and read as an empty store, so an
    unknown name is its registry's one line listing the choices."""
    if rule is not None:
        from ssbench.rules import RULES

        RULES.get(rule)
        rule = rule.lower()
    if model is not None:
        from ssbench.models import known_model

        model = known_model(model)
    if dataset is not None:
        from ssbench.data import DATASETS

        DATASETS.get(dataset)
        dataset = dataset.lower()
    return rule, model, dataset
