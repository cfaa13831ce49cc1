"""Tables and plots rebuilt from the results store alone.

    from ssbench.report import build_report
    build_report(open_store(), recipe="quickstart", formats=("terminal", "markdown"), out="report/")

Library pieces: `variants` (labels that tell configurations apart, from each run's stored config),
`tables` (pandas frames), `render` (terminal / Markdown / LaTeX / CSV), `plots` (matplotlib figures,
PNG + SVG). Every file format renders from the full table; only the terminal gets narrow variants.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from ssbench.printing import SafeConsole
from ssbench.report.figures import build_plots
from ssbench.report.outdir import check_out_dir
from ssbench.report.render import FORMATS, SUFFIX, Format, render
from ssbench.report.tables import TABLES, ReportFilter, build_tables, display_frame

TITLES = {
    "clean": "Clean test accuracy (mean ± std over seeds; n = runs; labels carry each variant's options, e.g. ifa(θ=30), mlp[256x3], dataset[classes, train=N])",
    "robust": ("Robust accuracy per attack x setting x gradient mode x ε: mean ± std over seeds [Wilson 95% interval of the pooled examples; "
               "none for mAP]; worst = per-example worst case over the attack's modes; worst of all / all = per-example worst case over every "
               "attack and mode run on the same examples (n/a where they differ); setting = what differs between sweeps of one attack; "
               "runs = the attack runs behind a row; '!' = failed sanity checks"),
    "leaderboard": ("Leaderboard at one ε per rule x model x data: clean = accuracy on the attacked examples; Auto Attack = AutoAttack in "
                    "exact mode; papers = PGD with the rule's feedback gradient (what the papers measured); transfer, black box = worst over "
                    "their sweeps; worst = per-example worst case over every attack and mode; mean ± std over seeds [Wilson 95% interval "
                    "of the pooled examples]; '-' = not run; flags = failed sanity checks behind the row ('!' on the cells they concern)"),
    "alignment": "Alignment per layer (mean ± std over seeds): angle(W, B) in degrees and |B|/|W| before training (init) and at the last epoch (final); grad angle = angle(rule's, true weight gradient) at the last epoch, when tracked",
    "hashing": "Hashing: clean retrieval mAP@K and precision@K per rule x bits (mean ± std over seeds)",
    "hashing_attacks": "Hashing: mAP under attack per bits x gradient mode x ε",
    "hessian": "Hessian of the loss (ssbench analyze hessian): Hutchinson trace, top eigenvalue (Lanczos), loss; mean ± std over seeds",
    "trajectory": "Over training (ssbench analyze trajectory): loss, Hessian trace (Hutchinson) and top eigenvalue (Lanczos) at each analysed epoch's kept weights (epoch 0 = before training); mean ± std over seeds",
    "corruptions": "Accuracy under corruptions per severity (mean ± std over seeds); mean = over severities; 'all' = over corruptions (its mean is the mCA); clean = same examples uncorrupted",
    "trainability": "Trainability map (ssbench analyze trainability): final training accuracy of rules trained from scratch with W ~ N(0, weight var / fan_in) and feedback ~ N(0, feedback var / fan_in) (1 = LeCun, 2 = He); mean ± std over seeds; x = non-finite loss (chance)",
    "sanity": "FAILED sanity checks (robustness claims above that depend on these are not supported)",
}
TERMINAL_NOTES = {"sanity": " (details per check: --format markdown or csv)"}
NARROW_NOTE = " (means only at this terminal width; ± std: --format markdown or csv)"


@dataclass
class Report:
    tables: dict[str, pd.DataFrame]
    files: list[Path] = field(default_factory=list)


# columns a terminal leaves out when even means-only rows do not fit (the files keep them)
TERMINAL_SPARE = {"leaderboard": ("flags", "n"), "alignment": ("n", "init epoch", "final epoch"), "hessian": ("seeds", "split"), "trajectory": ("seeds", "split", "n"), "clean": ("seeds",),
                  "corruptions": ("n",), "hashing": ("n",)}


def _terminal_one(name: str, df: pd.DataFrame, title: str, width: int | None, in_title: tuple[str, ...] = ()) -> Any:
    """The first of: full cells, means only, means only without TERMINAL_SPARE columns, that fits."""
    from ssbench.report.render import fits, to_rich

    tries = [(True, ())]
    if width is not None and name != "sanity":
        tries += [(False, ()), (False, TERMINAL_SPARE.get(name, ()))]
    for std, spare in tries:
        shown = display_frame(name, df, std=std, compact=True)
        left_out = [c for c in spare if c in shown.columns]
        shown = _without(shown, (*in_title, *left_out))
        note = "" if std else NARROW_NOTE if not left_out else \
            f" (at this terminal width: means only, without {', '.join(left_out)}; all of it: --format markdown or csv)"
        table = to_rich(shown, title + note, width)
        if width is None or fits(table, width):
            break
    return table


# how a too-wide terminal table is split, in order: the split-off labels move into the sub-table titles
TERMINAL_SPLITS = {"robust": (("model", "dataset"), ("attack",)), "hashing_attacks": (("model", "dataset"), ("attack",)),
                   "leaderboard": (("model", "dataset"), ("epsilon",))}
SHOWN_AS = {"epsilon": "ε"}  # long-frame columns the display names otherwise


def _split_title(keys: tuple[str, ...], values: tuple[Any, ...]) -> str:
    if keys == ("model", "dataset"):
        return f"{values[0]} on {values[1]}"
    return ", ".join(f"{SHOWN_AS.get(k, k)} {v:g}" if isinstance(v, float) else f"{SHOWN_AS.get(k, k)} {v}" for k, v in zip(keys, values))


def _without(shown: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """`shown` without the display columns of `columns` (long-frame names; see SHOWN_AS)."""
    names = {SHOWN_AS.get(c, c) for c in columns} | set(columns)
    return shown.drop(columns=[c for c in shown.columns if c in names])


def _fit(name: str, df: pd.DataFrame, title: str, width: int | None, in_title: tuple[str, ...],
         splits: tuple[tuple[str, ...], ...]) -> list[Any]:
    from ssbench.report.render import fits, to_rich

    shown = display_frame(name, df, compact=True)
    natural = to_rich(_without(shown, in_title), title)  # nothing folded
    if width is None or fits(natural, width):
        return [natural]
    if splits and set(splits[0]) <= set(df.columns):
        keys = splits[0]
        # a part's title names all its split-off labels (the full title is printed once above the parts)
        return [t for values, sub in df.groupby(list(keys), sort=False)
                for t in _fit(name, sub, f"{title}, {_split_title(keys, values)}" if in_title else _split_title(keys, values),
                              width, (*in_title, *keys), splits[1:])]
    return [_terminal_one(name, df, title, width, in_title)]


def terminal_tables(name: str, df: pd.DataFrame, title: str, width: int | None) -> list[Any]:
    """What the terminal prints for one table: compact sanity columns; when the table would not fit
    `width`, one table per model x dataset (robust: also per attack) under the full title, and
    means without ± std (without n / epoch columns, text folded) where still too wide. Other
    formats never see these narrow variants."""
    from rich.text import Text

    title += TERMINAL_NOTES.get(name, "")
    parts = _fit(name, df, title, width, (), TERMINAL_SPLITS.get(name, (("model", "dataset"),)))
    if len(parts) == 1 and parts[0].title is not None and parts[0].title.startswith(title[:20]):
        return parts
    return [Text(title, style="italic"), *parts]  # the long title once, short ones per part


def build_report(
    store: Any,
    *,
    recipe: str | None = None,
    tag: str | None = None,
    dataset: str | None = None,
    model: str | None = None,
    rule: str | None = None,
    tables: str = "all",
    formats: Sequence[Format] = ("terminal",),
    out: str | Path | None = None,
    plots: bool = True,
    console: Console | None = None,
    notes: Console | None = None,
    eps: float | None = None,
) -> Report:
    """Build the tables (and, with `out`, table files + plots). Terminal tables go to `console`; other
    formats go to `<out>/<table>.<md|tex|csv>`, or to `console` as text when there is no `out`.
    Messages (no data, failed sanity checks, files written) go to `notes` (default: `console`), so a
    caller piping CSV to stdout can send them to stderr. `eps`: the leaderboard's ε (default: the
    largest ε every row has)."""
    console = console or SafeConsole()
    notes = notes or console
    if tables != "all" and tables not in TABLES:
        from ssbench.errors import SpecError

        raise SpecError(f"unknown table {tables!r}; choose from: {', '.join(('all', *TABLES))}")
    for fmt in formats:
        if fmt not in FORMATS:
            from ssbench.errors import SpecError

            raise SpecError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    out_dir = check_out_dir(out) if out is not None else None  # before any table is built
    f = ReportFilter(recipe=recipe, tag=tag, dataset=dataset, model=model, rule=rule)
    built = build_tables(store, f, tables, eps=eps)
    report = Report(built)
    if not any(not df.empty for df in built.values()):
        what = ", ".join(f"{k}={v}" for k, v in f.kwargs().items()) or "no filters"
        notes.print(f"[yellow]no finished runs with {tables if tables != 'all' else 'results'} match ({what}); "
                      "see `ssbench runs`[/]")
    for name, df in built.items():
        title = TITLES.get(name, name)
        for fmt in formats:
            if df.empty:
                if fmt == "terminal":
                    notes.print(f"[dim]{name}: no data[/]")
                continue
            if fmt == "terminal":
                for table in terminal_tables(name, df, title, console.width):
                    console.print(table)
                continue
            # every file format renders from the full frame: nothing a terminal chose carries over
            text = render(df if fmt == "csv" else display_frame(name, df), fmt, title=title)
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                path = out_dir / f"{name}{SUFFIX[fmt]}"
                path.write_text(text, encoding="utf-8")
                report.files.append(path)
            else:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
    failed = built.get("sanity")
    if failed is None:
        from ssbench.report.tables import sanity_table

        failed = sanity_table(store, f)
    if not failed.empty:
        notes.print(f"[bold red]{len(failed)} sanity check(s) failed[/] [red]in {failed['run'].nunique()} attack "
                      "run(s); see `ssbench report --table sanity`. Numbers marked '!' rest on them.[/]")
    if out_dir is not None and plots:
        report.files += build_plots(store, f, out_dir, built)
    if out_dir is not None and report.files:
        notes.print(f"wrote {len(report.files)} files to {out_dir}")
    return report


__all__ = ["build_report", "build_plots", "check_out_dir", "terminal_tables", "Report", "ReportFilter", "build_tables", "display_frame",
           "render", "FORMATS"]
