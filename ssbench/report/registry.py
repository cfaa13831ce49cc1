"""The report's tables: one definition each, and the only list of their names.

Adding a table touches this file only (plus its builder and display functions, wherever they
live): one `Table(...)` in `_DEFINITIONS`. The `--table` choices, the build order, titles, the
terminal's fitting, LaTeX floats and JSON keys all read the registry.

    from ssbench.report.registry import Frames, build_tables, table, REGISTRY
    built = build_tables(store, ReportFilter(recipe="quickstart"))    # {name: long DataFrame}, registry order
    for name, long in built.items():
        t = table(name)
        t.title                              # one line: terminal title, Markdown heading, LaTeX caption
        shown = t.show(long)                 # strings ('0.912 ± 0.004'), pivoted; percent=True: accuracies in %

A `Table` (frozen dataclass):

  name      the --table name, the file stem (<out>/<name>.md, .tex, .csv, .json), the LaTeX label tab:<name>
  title     what the table shows and how to read its marks
  build     build(frames: Frames) -> the LONG frame: numbers, snake_case columns; CSV and JSON print it
            as is. `Frames` holds the store, the filter and ε, and loads what several tables share
            (run labels, the robust sweeps) once.
  display   display(long, *, std=True, compact=False, percent=False) -> a frame of strings for humans;
            std=False: means only (narrow terminals); compact: the terminal's form (no run lists,
            no free text); percent: accuracies in % with one decimal (LaTeX). `Table.show` calls it
            (an empty long frame shows as itself).
  part_of   the table this one is built and asked for with (hashing_attacks with hashing): not a --table choice
  percent   whether its accuracies are proportions that LaTeX prints in % (mAP and curvature are not)
  marks     {mark ending a number cell: its meaning}; LaTeX explains those present under the table
  terminal  TerminalHints: note (appended to the title), spare (columns left out when even means
            only do not fit), splits (how a too-wide table is split, in order), narrow (whether the
            means-only forms apply at all)
  latex     LatexHints: floats (columns whose values each get their own table float), sections
            (columns whose values head a block of rows instead of filling a column), drop (columns
            papers leave out)

Every table renders in every format (`ssbench.report.render.FORMATS`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from ssbench.report import display as d
from ssbench.report import tables as t
from ssbench.report.leaderboard import leaderboard, leaderboard_wide
from ssbench.report.tables import ReportFilter


class Frames:
    """What the tables are built from: the store, the filter, the leaderboard's ε, and the frames
    several tables share, each loaded at most once."""

    def __init__(self, store: Any, f: ReportFilter = ReportFilter(), eps: float | None = None) -> None:
        self.store, self.filter, self.eps = store, f, eps

    def of(self, builder: Callable[..., pd.DataFrame]) -> pd.DataFrame:
        """What a `tables` builder (store, filter, labels) gives for this report."""
        return builder(self.store, self.filter, self.labels)

    @cached_property
    def labels(self) -> pd.DataFrame:
        """`tables.labels_of` the store: every run's variant labels."""
        return t.labels_of(self.store)

    @cached_property
    def robust(self) -> pd.DataFrame:
        """`tables.robust_table`, accuracy and retrieval (mAP) rows together."""
        return t.robust_table(self.store, self.filter, labels=self.labels)


@dataclass(frozen=True)
class TerminalHints:
    note: str = ""
    spare: tuple[str, ...] = ()
    splits: tuple[tuple[str, ...], ...] = (("model", "dataset"),)
    narrow: bool = True


@dataclass(frozen=True)
class LatexHints:
    floats: tuple[str, ...] = ()
    sections: tuple[str, ...] = ("model", "dataset")
    drop: tuple[str, ...] = ("runs",)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    build: Callable[[Frames], pd.DataFrame]
    display: Callable[..., pd.DataFrame]
    part_of: str | None = None
    percent: bool = False
    marks: dict[str, str] = field(default_factory=dict)
    terminal: TerminalHints = TerminalHints()
    latex: LatexHints = LatexHints()

    def show(self, long: pd.DataFrame, *, std: bool = True, compact: bool = False, percent: bool = False) -> pd.DataFrame:
        """The display frame of `long` (see the module docstring); `percent` only where `self.percent`."""
        if long.empty:
            return long
        return self.display(long, std=std, compact=compact, percent=percent and self.percent)


def _robust_rows(frames: Frames, retrieval: bool) -> pd.DataFrame:
    r = frames.robust
    return r[r["metric"].map(t._retrieval_metric) == retrieval].reset_index(drop=True) if not r.empty else r


def _robust_display(df: pd.DataFrame, *, std: bool = True, compact: bool = False, percent: bool = False) -> pd.DataFrame:
    return d.robust_wide(df, std=std, runs=not compact, percent=percent)


def _leaderboard_display(df: pd.DataFrame, *, std: bool = True, compact: bool = False, percent: bool = False) -> pd.DataFrame:
    return leaderboard_wide(df, std=std, runs=not compact, percent=percent)


SANITY_MARK = {"!": "rests on failed sanity checks (listed by ssbench report --table sanity)"}
# the two sweep tables (accuracy, mAP) are shown alike
ROBUST_TERMINAL = TerminalHints(splits=(("model", "dataset"), ("attack",)))
ROBUST_LATEX = LatexHints(floats=("model", "dataset", "attack"), sections=())

_DEFINITIONS = (
    Table("clean", "Clean test accuracy (mean ± std over seeds; n = runs; labels carry each variant's options, e.g. ifa(θ=30), "
          "mlp[256x3], dataset[classes, train=N])",
          lambda fr: fr.of(t.clean_table), d.clean_display, percent=True,
          terminal=TerminalHints(spare=("seeds",))),
    Table("robust", "Robust accuracy per attack x setting x gradient mode x ε: mean ± std over seeds [Wilson 95% interval of the "
          "pooled examples; none for mAP]; worst = per-example worst case over the attack's modes; worst of all / all = "
          "per-example worst case over every attack and mode run on the same examples (n/a where they differ); setting = what "
          "differs between sweeps of one attack; runs = the attack runs behind a row; '!' = failed sanity checks",
          lambda fr: _robust_rows(fr, retrieval=False), _robust_display, percent=True, marks=SANITY_MARK,
          terminal=ROBUST_TERMINAL, latex=ROBUST_LATEX),
    Table("leaderboard", "Leaderboard at one ε per rule x model x data: clean = accuracy on the attacked examples; Auto Attack = "
          "AutoAttack in exact mode; papers = PGD with the rule's feedback gradient (what the papers measured); transfer, black "
          "box = worst over their sweeps; worst = per-example worst case over every attack and mode; mean ± std over seeds "
          "[Wilson 95% interval of the pooled examples]; '-' = not run; flags = failed sanity checks behind the row ('!' on the "
          "cells they concern)",
          lambda fr: leaderboard(fr.store, fr.filter, fr.labels, fr.eps), _leaderboard_display, percent=True,
          marks={**SANITY_MARK, "-": "not run"},
          terminal=TerminalHints(spare=("flags", "n"), splits=(("model", "dataset"), ("epsilon",)))),
    Table("alignment", "Alignment per layer (mean ± std over seeds): angle(W, B) in degrees and |B|/|W| before training (init) and "
          "at the last epoch (final); grad angle = angle(rule's, true weight gradient) at the last epoch, when tracked",
          lambda fr: fr.of(t.alignment_table), d.alignment_display,
          terminal=TerminalHints(spare=("n", "init epoch", "final epoch"))),
    Table("hashing", "Hashing: clean retrieval mAP@K and precision@K per rule x bits (mean ± std over seeds)",
          lambda fr: fr.of(t.hashing_table), d.hashing_wide, terminal=TerminalHints(spare=("n",))),
    Table("hashing_attacks", "Hashing: mAP under attack per bits x gradient mode x ε",
          lambda fr: _robust_rows(fr, retrieval=True), _robust_display, part_of="hashing", marks=SANITY_MARK,
          terminal=ROBUST_TERMINAL, latex=ROBUST_LATEX),
    Table("hessian", "Hessian of the loss (ssbench analyze hessian): Hutchinson trace, top eigenvalue (Lanczos), loss; mean ± std "
          "over seeds",
          lambda fr: fr.of(t.hessian_table), d.long_display,
          terminal=TerminalHints(spare=("seeds", "split"))),
    Table("trajectory", "Over training (ssbench analyze trajectory): loss, Hessian trace (Hutchinson) and top eigenvalue (Lanczos) "
          "at each analysed epoch's kept weights (epoch 0 = before training); mean ± std over seeds",
          lambda fr: fr.of(t.trajectory_table), d.long_display,
          terminal=TerminalHints(spare=("seeds", "split", "n"))),
    Table("corruptions", "Accuracy under corruptions per severity (mean ± std over seeds); mean = over severities; 'all' = over "
          "corruptions (its mean is the mCA); clean = same examples uncorrupted",
          lambda fr: fr.of(t.corruption_table), d.corruption_wide, percent=True,
          terminal=TerminalHints(spare=("n",))),
    Table("trainability", "Trainability map (ssbench analyze trainability): final training accuracy of rules trained from scratch "
          "with W ~ N(0, weight var / fan_in) and feedback ~ N(0, feedback var / fan_in) (1 = LeCun, 2 = He); mean ± std over "
          "seeds; x = non-finite loss (chance)",
          lambda fr: fr.of(t.trainability_table), d.trainability_wide, percent=True,
          marks={" x": "a seed's loss turned non-finite (scored at chance)"}),
    Table("sanity", "FAILED sanity checks (robustness claims above that depend on these are not supported)",
          lambda fr: fr.of(t.sanity_table), d.sanity_display,
          terminal=TerminalHints(note=" (details per check: --format markdown or csv)", narrow=False)),
)

REGISTRY: dict[str, Table] = {d.name: d for d in _DEFINITIONS}
# what --table takes (besides 'all'): tables built with another are asked for through it
TABLES: tuple[str, ...] = tuple(n for n, d in REGISTRY.items() if d.part_of is None)


def table(name: str) -> Table:
    return REGISTRY[name]


def select(which: str = "all") -> list[str]:
    """The tables `which` names, in registry order: all of them, or one with the tables built with it.
    An unknown name is one line listing the choices."""
    if which == "all":
        return list(REGISTRY)
    if which not in TABLES:
        from ssbench.errors import SpecError

        raise SpecError(f"unknown table {which!r}; choose from: {', '.join(('all', *TABLES))}")
    return [n for n, d in REGISTRY.items() if n == which or d.part_of == which]


def build_tables(store: Any, f: ReportFilter = ReportFilter(), which: str = "all", eps: float | None = None,
                 frames: Frames | None = None) -> dict[str, pd.DataFrame]:
    """The long frames of the named tables ('all' = every one that has data; a named one is returned
    even when empty, with the tables built with it). `eps`: the leaderboard's ε (default: the largest
    every row has). `frames`: reuse what another caller loaded (its store / filter / ε win)."""
    frames = frames or Frames(store, f, eps)
    out = {name: REGISTRY[name].build(frames) for name in select(which)}
    return {k: v for k, v in out.items() if not v.empty} if which == "all" else out


def display_frame(name: str, df: pd.DataFrame, *, std: bool = True, compact: bool = False, percent: bool = False) -> pd.DataFrame:
    """`table(name).show(df, ...)`: the strings humans read (see the module docstring)."""
    return REGISTRY[name].show(df, std=std, compact=compact, percent=percent)


__all__ = ["REGISTRY", "TABLES", "Frames", "LatexHints", "Table", "TerminalHints", "build_tables", "display_frame", "select", "table"]
