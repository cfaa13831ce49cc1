"""Paper figures (matplotlib, Agg) from report frames. Each function returns the Figure, so callers
and tests can inspect it; `save_figure` writes PNG (200 dpi), SVG and PDF (text kept as text).

Encoding kept across every figure: one colour per rule (variants of one rule, e.g. ifa at several
θ, are shades of that rule's colour, dark to light in option order); gradient mode by line
style (exact solid, feedback dashed, transfer dotted, query dash-dot); the per-example worst case
across modes is its own line, opaque, wider and marked with triangles (drawn under the mode lines,
which it meets where one mode is the worst everywhere); the worst case over every attack and mode
has its own panel (solid lines, black for a single series). Shaded bands are intervals only: the
Wilson 95% interval of the pooled examples where the table has one (accuracy), ± std over seeds
otherwise; on robustness plots of several series only the worst-case lines carry them. Chance
level (1 / classes) is a grey dash-dot-dot line. Accuracy axes run from 0 to 1 on robustness and
corruption plots; a training curve's score axis ends at 1 and spans at least SCORE_SPAN. Legends
sit outside the axes, so they never cover data; panels fill their rows (a short last row is
centred, never padded with empty axes); titles wrap to the figure's width as measured.
Files are saved with a tight bounding box, so nothing drawn is ever cut off.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssbench.report.variants import RULE_ORDER, base_rule, sort_rules  # noqa: E402
from ssbench.report.words import SPLIT_WORDS  # noqa: E402

DPI = 200
FORMATS = ("png", "svg", "pdf")  # PDF for papers; SVG for the HTML report (inline) and editing
SAVE = {"bbox_inches": "tight", "pad_inches": 0.05}  # the saved canvas holds everything drawn
_PALETTE = plt.get_cmap("tab10").colors
MODE_STYLE = {
    "exact": {"linestyle": "-", "linewidth": 1.3},
    "feedback": {"linestyle": "--", "linewidth": 1.3},
    "transfer": {"linestyle": ":", "linewidth": 1.6},
    "query": {"linestyle": "-.", "linewidth": 1.3},
    # a line, not a band: opaque, wider than the modes, a triangle at every ε
    "worst": {"linestyle": "-", "linewidth": 2.8, "marker": "v", "markersize": 4.5},
    "all": {"linestyle": "-", "linewidth": 2.2},
}
MODE_LABEL = {"exact": "exact gradient", "feedback": "feedback (rule) gradient", "transfer": "transfer (BP surrogate)",
              "query": "black-box (queries)", "worst": "worst case over modes",
              "all": "worst of all attacks x modes"}
WORST_ALL_COLOR = "black"  # the headline curve, when the figure has a single series
CHANCE_STYLE = {"color": "0.4", "linestyle": (0, (6, 2, 1, 2, 1, 2)), "linewidth": 1.0}  # dash-dot-dot: no mode uses it
BAND_ALPHA = 0.12
SCORE_SPAN = 0.2  # a training curve's score axis spans at least this much: differences of 0.01 stay small
# svg.fonttype none: SVG text stays <text> (editable, searchable in a paper's figure files);
# pdf.fonttype 42: TrueType in the PDF, so its text stays text too
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "svg.fonttype": "none",
         "pdf.fonttype": 42, "figure.constrained_layout.use": True}  # constrained layout: nothing overlaps
PANEL = (3.2, 2.6)  # inches per panel
TITLE_WIDTH = 0.97  # of the figure's width: a title wraps to fit it


def rule_color(rule: str) -> tuple[float, float, float]:
    """The same colour for a rule in every figure (bp blue, fa orange, ...), by the rule in the label."""
    r = base_rule(str(rule))
    idx = RULE_ORDER.index(r) if r in RULE_ORDER else len(RULE_ORDER) + sum(map(ord, r)) % 3
    return tuple(_PALETTE[idx % len(_PALETTE)])  # type: ignore[return-value]


def _shade(c: Sequence[float], t: float) -> tuple[float, float, float]:
    """t < 0 towards black, t > 0 towards white."""
    a = np.asarray(c[:3], dtype=float)
    a = a * (1 + t) if t < 0 else a + (1 - a) * t
    return tuple(float(v) for v in np.clip(a, 0, 1))  # type: ignore[return-value]


def series_colors(labels: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Colour per series label: the rule's colour; several variants of one rule get shades of it
    (dark to light in option order), so a family reads as one hue in every panel of a figure."""
    out: dict[str, tuple[float, float, float]] = {}
    labels = sort_rules(labels)
    families: dict[str, list[str]] = {}
    for lab in labels:
        families.setdefault(base_rule(lab), []).append(lab)
    for members in families.values():
        k = len(members)
        for i, lab in enumerate(members):
            t = 0.0 if k == 1 else -0.45 + 0.6 * i / (k - 1)  # not lighter than +0.15: lines stay visible on white
            out[lab] = _shade(rule_color(lab), t)
    return out


def series_of(df: pd.DataFrame) -> pd.Series:
    """One legend entry per variant: the rule label, plus the other config differences and the
    trained run's kind when the frame mixes kinds (a BP pretrain next to BP fine-tunes)."""
    lab = df["rule"].astype(str)
    if "variant" in df.columns:
        var = df["variant"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else f" [{v}]")
        lab = lab + var
    if "kind" in df.columns and df["kind"].nunique() > 1:
        lab = lab + " (" + df["kind"].astype(str) + ")"
    return lab


def panel_rows(n: int, max_cols: int = 3) -> list[int]:
    """Panels per row for n panels: as few rows as `max_cols` allows, as even as possible (5 in
    rows of at most 4 -> [3, 2], 9 -> [3, 3, 3]); never an empty slot."""
    n = max(n, 1)
    rows = math.ceil(n / max_cols)
    cols = math.ceil(n / rows)
    return [cols] * (rows - 1) + [n - cols * (rows - 1)]


def _legend_width(labels: Iterable[str]) -> float:
    """Inches for a legend column: line handle + the longest label at legend.fontsize."""
    return max(1.0, 0.65 + 0.068 * max([len(str(v)) for v in labels] + [6]))


class Canvas:
    """A figure split into a panel area (with its own title, so a title never runs under the
    legends) and a legend column on the right (so legends never cover data). `rows` gives the
    panels per row; a row shorter than the widest is centred, so there are only as many axes as
    panels. `share`: "row" shares y along a row (tick labels on its first panel only), "all"
    shares both axes between every panel (x tick labels on the last row only)."""

    def __init__(self, rows: Sequence[int], legend_labels: Iterable[str] = (), *,
                 panel: tuple[float, float] = PANEL, share: str | None = None) -> None:
        labels = list(legend_labels)
        lw = _legend_width(labels) if labels else 0.0
        cols = max(rows)
        width = panel[0] * cols
        self.fig = plt.figure(figsize=(width + lw, panel[1] * len(rows) + 0.45))
        if labels:
            self.panels, self.side = self.fig.subfigures(1, 2, width_ratios=[width, lw], wspace=0.0)
        else:
            self.panels, self.side = self.fig, None
        grid = self.panels.add_gridspec(len(rows), 2 * cols)  # half columns: a short row sits centred
        self.axes: list[list[Any]] = []
        for r, m in enumerate(rows):
            start = cols - m
            self.axes.append([self.panels.add_subplot(grid[r, start + 2 * j:start + 2 * j + 2]) for j in range(m)])
        self.flat = [ax for row in self.axes for ax in row]
        for row in self.axes:
            for j, ax in enumerate(row):
                if share == "all" and ax is not self.flat[0]:
                    ax.sharex(self.flat[0])
                    ax.sharey(self.flat[0])
                elif share == "row" and j:
                    ax.sharey(row[0])
                if share and j:
                    ax.tick_params(labelleft=False)
                if share == "all" and row is not self.axes[-1]:
                    ax.tick_params(labelbottom=False)  # the last row's ticks read for every panel

    def title(self, text: str | None) -> None:
        """Over panels and legends: the whole width is there for it, wrapped (at word breaks) until
        its measured width fits."""
        if not text:
            return
        sup = self.fig.suptitle(text)
        renderer = self.fig.canvas.get_renderer()
        limit = self.fig.bbox.width * TITLE_WIDTH
        chars = len(text)
        while sup.get_window_extent(renderer).width > limit and chars > 10:
            chars = int(chars * 0.9)
            sup.set_text("\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)))

    def legend(self, handles: list[Line2D], title: str | None, where: str = "upper") -> None:
        assert self.side is not None, "Canvas built without legend labels"
        self.side.legend(handles=handles, loc=f"{where} left", bbox_to_anchor=(0.0, 1.0 if where == "upper" else 0.0),
                         frameon=False, title=title, alignment="left")


def _integer_axis(ax: Any, values: Iterable[float]) -> None:
    """Epochs / severities: integer ticks, also for a single value (the default locator would
    label 0.96 ... 1.04 around one epoch)."""
    ticks = sorted({int(v) for v in values if not pd.isna(v)})
    if not ticks:
        return
    if len(ticks) <= 12:
        ax.set_xticks(ticks)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] - 0.5, ticks[0] + 0.5)


def _xlabel(norm: str, metric: str) -> str:
    if norm == "l0":
        return "budget (pixels changed)"
    return "ε (L∞, inputs in [0, 1])" if norm == "linf" else f"ε ({norm})"


def metric_label(metric: str) -> str:
    return metric.replace("map@", "mAP@").replace("precision@", "precision@")


def _panels(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(attack, setting) per panel, in table order, the worst of all attacks last."""
    setting = table["setting"] if "setting" in table.columns else pd.Series("", index=table.index)
    keys = list(dict.fromkeys(zip(table["attack"], setting.fillna(""))))
    return sorted(keys, key=lambda k: k[0] == "worst of all")


def interval(line: pd.DataFrame, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The band of one line of a `robust_table` frame: the Wilson 95% interval of its pooled
    examples where the table has one (accuracy), else ± std over seeds (mAP of several seeds),
    else none."""
    if "robust_lo" in line.columns and line["robust_lo"].notna().any():
        return line["robust_lo"].to_numpy(float), line["robust_hi"].to_numpy(float)
    s = line["robust_std"].to_numpy(float) if "robust_std" in line.columns else np.array([np.nan])
    if not (~np.isnan(s)).any():
        return None
    s = np.nan_to_num(s)
    return y - s, y + s


def chance_line(ax: Any, chance: float | None) -> None:
    """The score of a guess (1 / classes), across the panel."""
    if chance is not None:
        ax.axhline(chance, label="chance", zorder=1.5, **CHANCE_STYLE)


def chance_handles(chance: float | None) -> list[Line2D]:
    """The chance line's legend entry ("chance level (1/5)"), or none."""
    if chance is None:
        return []
    k = 1 / chance
    shown = f"1/{round(k)}" if abs(k - round(k)) < 1e-6 else f"{chance:.3g}"
    return [Line2D([], [], label=f"chance level ({shown})", **CHANCE_STYLE)]


def plot_robustness(table: pd.DataFrame, *, title: str | None = None, chance: float | None = None) -> Figure:
    """Robust metric vs epsilon from a `robust_table` frame (one model x dataset x bits x metric):
    one panel per attack (x setting, when an attack was run several ways), one colour per rule
    variant, line style per gradient mode, the worst case over modes as its own wider line with
    triangles; a band where a line has an interval (see `interval`): every line of a single series,
    the worst-case lines only when several series share the panels. The last panel is the
    per-example worst case over every attack and mode: solid lines, black when the figure has one
    series. `chance`: the chance level (1 / classes), drawn in every panel when given."""
    with plt.rc_context(STYLE):
        table = table[table["robust_mean"].notna()]  # a worst case that cannot be formed (n/a): no line, no panel
        table = table.assign(series=series_of(table).to_numpy())
        if "setting" in table.columns:
            table["setting"] = table["setting"].fillna("")
        panels = _panels(table)
        colors = series_colors(table["series"])
        series = list(colors)
        modes = [m for m in MODE_STYLE if m in set(table["mode"])]
        extra = chance_handles(chance)
        canvas = Canvas(panel_rows(len(panels), 3), [*series, *(MODE_LABEL[m] for m in modes), *(h.get_label() for h in extra)])
        metric = str(table["metric"].iloc[0]) if len(table) else "accuracy"
        ylabel = "robust accuracy" if metric == "accuracy" else f"{metric_label(metric)} under attack"
        firsts = {id(row[0]) for row in canvas.axes}
        # a band for every line of one series; with several, for the worst cases only (12 bands are a fog)
        banded = set(modes) if len(series) == 1 else {"worst", "all"}
        for ax, (attack, setting) in zip(canvas.flat, panels):
            sub = table[table["attack"] == attack]
            if "setting" in sub.columns:
                sub = sub[sub["setting"] == setting]
            chance_line(ax, chance)
            for mode in ["worst", *[m for m in modes if m != "worst"]]:  # worst first: drawn underneath
                for s_name in series:
                    line = sub[(sub["series"] == s_name) & (sub["mode"] == mode)].sort_values("epsilon")
                    if line.empty:
                        continue
                    x, y = line["epsilon"].to_numpy(float), line["robust_mean"].to_numpy(float)
                    color = WORST_ALL_COLOR if mode == "all" and len(series) == 1 else colors[s_name]
                    style = {"marker": "o", "markersize": 3} if len(x) < 4 else {}
                    ax.plot(x, y, color=color, label=f"{s_name} {mode}", zorder=1 if mode == "worst" else 2,
                            **{**style, **MODE_STYLE[mode]})
                    band = interval(line, y) if mode in banded else None
                    if band is not None:
                        ax.fill_between(x, *band, color=color, alpha=BAND_ALPHA, linewidth=0, zorder=0.5,
                                        label=f"{s_name} {mode} interval")
            norm = str(sub["norm"].iloc[0]) if "norm" in sub.columns and len(sub) else "linf"
            ax.set_title(attack if attack != "worst of all" else "worst of all attacks x modes")
            if setting:
                ax.set_title(setting, fontsize=7, loc="right", pad=14)
            ax.set_xlabel(_xlabel(norm, metric))
            if id(ax) in firsts:
                ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlim(left=min(0.0, float(sub["epsilon"].min())) if len(sub) else 0.0)
        canvas.title(title)
        canvas.legend([Line2D([], [], color=colors[r], linewidth=2, label=r) for r in series], "rule", "upper")
        styles = [Line2D([], [], color=WORST_ALL_COLOR if m == "all" else "0.25", label=MODE_LABEL[m], **MODE_STYLE[m])
                  for m in modes]
        canvas.legend(styles + extra, "line style", "lower")
        return canvas.fig


ALIGNED_BY_DEFINITION = ("bp",)  # rules whose feedback is W itself: angle 0 at every epoch, nothing to plot


def has_alignment(curves: pd.DataFrame) -> bool:
    """Whether an `alignment_curves` frame has a rule to plot (one not aligned by definition)."""
    rules = series_of(curves).map(base_rule) if len(curves) else pd.Series(dtype=str)
    return bool((~rules.isin(ALIGNED_BY_DEFINITION)).any())


def plot_alignment(curves: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Alignment over epochs from an `alignment_curves` frame: one panel per rule variant, one line
    per layer; top block angle(W, B), and, when the runs tracked it, a second block with the angle
    between the rule's and the true weight gradient (panels only for the variants that have it).
    BP has no panel: its feedback is W, so both angles are 0 by definition."""
    with plt.rc_context(STYLE):
        curves = curves.assign(series=series_of(curves).to_numpy())
        curves = curves[~curves["series"].map(base_rule).isin(ALIGNED_BY_DEFINITION)]
        colors = series_colors(curves["series"])
        blocks = []
        for column, ylabel in (("angle_mean", "angle(W, B) (degrees)"), ("grad_angle_mean", "angle(rule grad, true grad) (°)")):
            has = curves[curves[column].notna()]["series"] if column in curves.columns else pd.Series(dtype=str)
            shown = [s_name for s_name in colors if s_name in set(has)]
            if shown:
                blocks.append((column, ylabel, shown))
        layers = list(dict.fromkeys(curves["layer"]))
        rows = [n for _, _, shown in blocks for n in panel_rows(len(shown), 4)]
        if not rows:
            raise ValueError("no alignment to plot: BP's is 0 by definition (see has_alignment)")
        canvas = Canvas(rows, layers, share="row")
        cmap = plt.get_cmap("viridis")
        colours = {layer: cmap(i / max(len(layers) - 1, 1) * 0.9) for i, layer in enumerate(layers)}
        firsts = {id(row[0]) for row in canvas.axes}
        panels = iter(canvas.flat)
        for b, (column, ylabel, shown) in enumerate(blocks):
            vals = curves[column].dropna()
            top = max(90.0, float(vals.max()) + 5)
            bottom = min(0.0, float(vals.min()) - 5)
            for s_name in shown:
                ax = next(panels)
                sub = curves[curves["series"] == s_name]
                for layer in layers:
                    line = sub[sub["layer"] == layer].dropna(subset=[column]).sort_values("epoch")
                    if line.empty:
                        continue
                    ax.plot(line["epoch"], line[column], color=colours[layer], label=layer, marker="o", markersize=3)
                ax.set_title(s_name if b == 0 else f"{s_name}: gradients", color=colors[s_name])
                ax.set_xlabel("epoch")
                if id(ax) in firsts:
                    ax.set_ylabel(ylabel)
                ax.set_ylim(bottom, top)
                _integer_axis(ax, sub.dropna(subset=[column])["epoch"])
        canvas.title(title)
        canvas.legend([Line2D([], [], color=colours[layer], marker="o", markersize=3, label=layer) for layer in layers],
                      "layer")
        return canvas.fig


def _val_metric(metrics: pd.DataFrame) -> str | None:
    """The validation score the runs logged: accuracy for classification, map@K for hashing."""
    val = metrics[(metrics["split"] == "val") & ~metrics["name"].isin(("loss", "lr"))]
    names = list(dict.fromkeys(val["name"]))
    if not names:
        return None
    return "accuracy" if "accuracy" in names else names[0]


def score_limits(values: Iterable[float]) -> tuple[float, float] | None:
    """y-limits for a score in [0, 1] (accuracy, mAP): up to 1, from a tenth below the lowest value
    (rounded down to a tenth), spanning at least SCORE_SPAN, so a 0.93-0.96 spread is not blown up to
    the full height; None for values outside [0, 1] (left to matplotlib)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v) or v.min() < 0 or v.max() > 1:
        return None
    bottom = min(max(0.0, math.floor(round((v.min() - 0.05) * 10, 9)) / 10), 1.0 - SCORE_SPAN)
    return bottom, 1.0 + 0.02 * (1.0 - bottom)  # a little headroom: a marker at 1 is not cut in half


LOSS_STYLE = (("val", "-", "o"), ("train", "--", "x"))


def plot_training(metrics: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Validation score (accuracy, or mAP@K for hashing runs) and loss per epoch, one line per run
    (colour = rule variant; training loss dashed, validation loss solid)."""
    with plt.rc_context(STYLE):
        metrics = metrics.assign(series=series_of(metrics).to_numpy())
        colors = series_colors(metrics["series"])
        canvas = Canvas([2], [*colors, "validation loss"])
        val_ax, loss_ax = canvas.axes[0]
        score = _val_metric(metrics)
        runs = metrics.drop_duplicates("run_id")[["run_id", "series", "seed"]].itertuples(index=False)
        for run_id, s_name, seed in runs:
            m = metrics[metrics["run_id"] == run_id]
            colour = colors[s_name]
            seed_txt = "" if pd.isna(seed) else f", seed {int(seed)}"
            label = f"run {run_id}: {s_name}{seed_txt}"
            val = m[(m["split"] == "val") & (m["name"] == score)].sort_values("epoch")
            if not val.empty:
                val_ax.plot(val["epoch"], val["value"], color=colour, marker="o", markersize=3, label=label)
            for split, style, marker in LOSS_STYLE:  # markers too: a one-epoch run has no line to dash
                loss = m[(m["split"] == split) & (m["name"] == "loss")].sort_values("epoch")
                if not loss.empty:
                    loss_ax.plot(loss["epoch"], loss["value"], color=colour, linestyle=style, marker=marker, markersize=4,
                                 label=f"{label} ({split} loss)")
        val_ax.set_xlabel("epoch")
        val_ax.set_ylabel(f"validation {metric_label(score)}" if score else "validation score")
        limits = score_limits(metrics.loc[(metrics["split"] == "val") & (metrics["name"] == score), "value"])
        if limits is not None:
            val_ax.set_ylim(*limits)
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")  # the task's own objective: cross-entropy, CSQ / DPSH for hashing
        for ax in (val_ax, loss_ax):
            _integer_axis(ax, metrics["epoch"])
        canvas.title(title)
        canvas.legend([Line2D([], [], color=c, linewidth=2, label=r) for r, c in colors.items()], "rule", "upper")
        splits = set(metrics.loc[metrics["name"] == "loss", "split"])
        canvas.legend([Line2D([], [], color="0.3", linestyle=style, marker=marker, label=f"{SPLIT_WORDS[split]} loss")
                       for split, style, marker in LOSS_STYLE if split in splits], None, "lower")
        return canvas.fig


def plot_hessian_density(runs: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Smoothed Hessian eigenvalue density (SLQ) from `hessian_runs` rows that stored one: one line
    per analysed run, colour per rule variant, log density axis (a bulk near 0 and a few outliers)."""
    with plt.rc_context(STYLE):
        runs = runs[runs["density"].map(lambda p: isinstance(p, dict) and bool(p.get("grid")))]
        runs = runs.assign(series=series_of(runs).to_numpy())
        colors = series_colors(runs["series"])
        canvas = Canvas([1], colors, panel=(4.6, 3.0))
        ax = canvas.axes[0][0]
        peak = 0.0
        for row in runs.itertuples(index=False):
            x, y = np.asarray(row.density["grid"], float), np.asarray(row.density["density"], float)
            ax.plot(x, y, color=colors[row.series], linewidth=1.3, alpha=0.85)
            peak = max(peak, float(np.nanmax(y)) if len(y) else 0.0)
        ax.set_yscale("log")
        if peak > 0:
            ax.set_ylim(peak * 1e-6, peak * 2)
        ax.set_xlabel("eigenvalue of the loss Hessian")
        ax.set_ylabel("density (SLQ, smoothed)")
        canvas.title(title)
        canvas.legend([Line2D([], [], color=c, linewidth=2, label=r) for r, c in colors.items()], "rule")
        return canvas.fig


def nice_log_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    """Colour-bar ticks on a log scale from lo to hi at round values: decades if there are at least
    three, else 1-2-5 steps, else 1..9 steps; a range too narrow for three of those gets round
    linear steps. At most `most` ticks (every k-th decade when the range is wide)."""
    if not (0 < lo < hi):
        return [lo] if lo > 0 else []
    span = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in span for m in mantissas if lo * (1 - 1e-9) <= m * 10.0 ** e <= hi * (1 + 1e-9)]
        if len(ticks) >= 3:
            return ticks[::math.ceil(len(ticks) / most)]
    ticks = [float(t) for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]
    return ticks or [lo, hi]


class LossPanels:
    """One contour panel per analysed run over a loss grid (`grid[i][j]` = L at alphas[i], betas[j]),
    runs ordered by rule, one shared log colour scale so sharper minima read as tighter contours."""

    def __init__(self, runs: pd.DataFrame, grids: list[np.ndarray], panel: tuple[float, float], share: str | None = None) -> None:
        self.runs = runs
        self.colors = series_colors(runs["series"])
        self.rows = panel_rows(len(runs), 4)
        self.canvas = Canvas(self.rows, panel=panel, share=share)
        self.grids = grids
        lo = max(min(float(np.nanmin(g)) for g in grids), 1e-6) if grids else 1e-6
        hi = max(max(float(np.nanmax(g)) for g in grids), lo * 1.01) if grids else 1.0
        self.lo, self.hi = lo, hi
        self.levels = np.geomspace(lo, hi, 16)
        self.mappable = None

    @staticmethod
    def ordered(runs: pd.DataFrame) -> pd.DataFrame:
        runs = runs.assign(series=series_of(runs).to_numpy())
        order = sort_rules(runs["series"])
        return runs.iloc[np.argsort([order.index(s) for s in runs["series"]], kind="stable")]

    def panels(self) -> Iterator[tuple[int, Any, Any, np.ndarray]]:
        """(k, axes, row, grid) per run; draws the filled contours and the run's title on each."""
        for k, (ax, row, grid) in enumerate(zip(self.canvas.flat, self.runs.itertuples(index=False), self.grids)):
            yield k, ax, row, grid
            seed = "" if pd.isna(row.seed) else f", seed {int(row.seed)}"
            ax.set_title(f"{row.series}{seed}", color=self.colors[row.series])
            ax.grid(False)

    def first_in_row(self, ax: Any) -> bool:
        return any(ax is row[0] for row in self.canvas.axes)

    def in_last_row(self, ax: Any) -> bool:
        return any(ax is a for a in self.canvas.axes[-1])

    def contour(self, ax: Any, a: np.ndarray, b: np.ndarray, grid: np.ndarray, lines: bool = False) -> None:
        z = np.clip(grid.T, self.lo, self.hi)  # grid[i][j] is at (alpha_i, beta_j): x = alpha needs the transpose
        self.mappable = ax.contourf(a, b, z, levels=self.levels, norm=LogNorm(vmin=self.lo, vmax=self.hi), cmap="viridis")
        if lines:
            ax.contour(a, b, z, levels=self.levels, colors="white", linewidths=0.3, alpha=0.6)

    def finish(self, title: str | None) -> Figure:
        if self.mappable is not None:
            bar = self.canvas.fig.colorbar(self.mappable, ax=self.canvas.flat, label="loss (log scale)", shrink=0.9)
            ticks = nice_log_ticks(self.lo, self.hi)
            bar.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
            bar.ax.minorticks_off()
        self.canvas.title(title)
        return self.canvas.fig


def plot_loss_surfaces(runs: pd.DataFrame, *, title: str | None = None) -> Figure:
    """2-D loss surfaces L(w + a v1 + b v2) along the top two Hessian eigenvectors from `hessian_runs`
    rows that stored one: one panel per analysed run, one shared (log) colour scale, so a sharper
    minimum shows as more tightly packed contours."""
    with plt.rc_context(STYLE):
        runs = LossPanels.ordered(runs[runs["surface"].map(lambda p: isinstance(p, dict) and bool(p.get("grid")))])
        lp = LossPanels(runs, [np.asarray(p["grid"], float) for p in runs["surface"]], (2.6, 2.4), share="all")
        for _, ax, row, grid in lp.panels():
            lp.contour(ax, np.asarray(row.surface["alphas"], float), np.asarray(row.surface["betas"], float), grid, lines=True)
            ax.plot([0], [0], marker="+", color="red", markersize=8)
            if lp.in_last_row(ax):
                ax.set_xlabel("α along v1 (top eigenvector)")
            if lp.first_in_row(ax):
                ax.set_ylabel("β along v2")
        return lp.finish(title)


def plot_curvature_over_training(points: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Hessian trace and top eigenvalue vs epoch from `trajectory_points` rows (the IFA paper's Fig.
    2f-k): one line per rule variant, mean over seeds, ± std band where there are several."""
    with plt.rc_context(STYLE):
        points = points.assign(series=series_of(points).to_numpy())
        colors = series_colors(points["series"])
        canvas = Canvas([2], colors, panel=(3.4, 2.8))
        for ax, (col, label) in zip(canvas.axes[0], (("trace", "Hessian trace (Hutchinson)"), ("top_eig", "top eigenvalue (Lanczos)"))):
            for s_name, colour in colors.items():
                g = points[points["series"] == s_name].groupby("epoch")[col]
                mean, std = g.mean(), g.std()
                x = mean.index.to_numpy(float)
                ax.plot(x, mean.to_numpy(float), color=colour, marker="o" if len(x) < 15 else None, markersize=3, linewidth=1.5)
                if std.notna().any():
                    sd = std.fillna(0).to_numpy(float)
                    ax.fill_between(x, mean.to_numpy(float) - sd, mean.to_numpy(float) + sd, color=colour, alpha=0.12, linewidth=0)
            ax.set_xlabel("epoch (0 = before training)")
            ax.set_ylabel(label)  # linear: a trace can be negative early on (non-convex start)
            _integer_axis(ax, points["epoch"])
        canvas.title(title)
        canvas.legend([Line2D([], [], color=c, linewidth=2, label=r) for r, c in colors.items()], "rule")
        return canvas.fig


def plot_trajectories(planes: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Each analysed run's weight trajectory on its own first two principal directions over the loss
    of that plane (the IFA paper's Fig. 2b-d): one panel per run, one shared log colour scale; the
    path starts at the circle (initial weights) and ends at the cross (final weights, the origin)."""
    with plt.rc_context(STYLE):
        planes = LossPanels.ordered(planes[planes["plane"].map(lambda p: isinstance(p, dict) and bool(p.get("grid")))])
        lp = LossPanels(planes, [np.asarray(p["grid"], float) for p in planes["plane"]], (2.8, 2.5))
        for _, ax, row, grid in lp.panels():
            p = row.plane
            lp.contour(ax, np.asarray(p["alphas"], float), np.asarray(p["betas"], float), grid)
            xy = np.asarray(p["coords"], float)
            ax.plot(xy[:, 0], xy[:, 1], color="white", linewidth=1.2, marker=".", markersize=3)
            # clip_on False: a path that starts at the plane's edge keeps its whole start marker
            ax.plot(xy[0, 0], xy[0, 1], marker="o", color="white", markeredgecolor="black", markersize=6, clip_on=False, zorder=3)
            ax.plot(0, 0, marker="x", color="red", markersize=7, markeredgewidth=1.8, clip_on=False, zorder=3)
            ex = p.get("explained") or [float("nan")] * 2
            ax.set_xlabel(f"PC1 ({100 * ex[0]:.1f}% of the path)")
            ax.set_ylabel(f"PC2 ({100 * ex[1]:.1f}%)")
        return lp.finish(title)


def plot_corruptions(table: pd.DataFrame, *, title: str | None = None, chance: float | None = None) -> Figure:
    """Accuracy averaged over corruptions vs severity (0 = clean) from a `corruption_table` frame:
    one line per rule variant, ± std over seeds; `chance` (1 / classes) drawn when given."""
    with plt.rc_context(STYLE):
        rows = table[((table["corruption"] == "all") & table["severity"].notna()) | (table["corruption"] == "none")]
        rows = rows.assign(series=series_of(rows).to_numpy())
        colors = series_colors(rows["series"])
        extra = chance_handles(chance)
        canvas = Canvas([1], [*colors, *(h.get_label() for h in extra)], panel=(4.2, 3.0))
        ax = canvas.axes[0][0]
        chance_line(ax, chance)
        for s_name, colour in colors.items():
            line = rows[rows["series"] == s_name].sort_values("severity")
            x, y = line["severity"].to_numpy(float), line["accuracy_mean"].to_numpy(float)
            s = line["accuracy_std"].fillna(0).to_numpy(float)
            ax.plot(x, y, color=colour, marker="o", markersize=3, linewidth=1.6, label=s_name)
            if line["accuracy_std"].notna().any():
                ax.fill_between(x, y - s, y + s, color=colour, alpha=0.12, linewidth=0)
        ax.set_xlabel("corruption severity (0 = clean)")
        ax.set_ylabel("accuracy (mean over corruptions)")
        ax.set_ylim(-0.02, 1.02)
        _integer_axis(ax, rows["severity"])
        canvas.title(title)
        canvas.legend([*(Line2D([], [], color=c, linewidth=2, label=r) for r, c in colors.items()), *extra], "rule")
        return canvas.fig


def _log_edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around sorted positive grid values on a log axis: geometric midpoints, half a step
    beyond the ends (a factor sqrt(2) either side of a single value)."""
    v = np.log(values)
    step = np.diff(v)
    pad = step[[0, -1]] / 2 if len(v) > 1 else np.array([np.log(2) / 2] * 2)
    return np.exp(np.concatenate([[v[0] - pad[0]], (v[:-1] + v[1:]) / 2, [v[-1] + pad[1]]]))


INIT_POINTS = (("LeCun (var = 1 / fan_in)", 1.0, "o"), ("He (var = 2 / fan_in)", 2.0, "s"))
INIT_MARK = {"markersize": 24, "markerfacecolor": "none", "markeredgecolor": "red", "markeredgewidth": 2.0,
             "linestyle": "none"}  # hollow rings around the cell's printed value, which stays readable


def plot_trainability(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The trainability map (IFA paper, Fig. 3a) from `trainability_table` rows of one configuration:
    x = forward (weight) variance, y = backward (feedback) variance, both x fan_in on log axes; colour
    = final training accuracy (mean over seeds) on a fixed 0..1 scale; each cell printed; LeCun's
    (1, 1) and He's (2, 2) initialisations marked; x = a seed's loss turned non-finite."""
    with plt.rc_context(STYLE):
        ws, bs = np.sort(table["weight_var"].unique()), np.sort(table["feedback_var"].unique())
        acc = np.full((len(bs), len(ws)), np.nan)
        bad = np.zeros_like(acc, dtype=bool)
        for row in table.itertuples(index=False):
            i, j = int(np.searchsorted(bs, row.feedback_var)), int(np.searchsorted(ws, row.weight_var))
            acc[i, j], bad[i, j] = row.accuracy_mean, bool(row.nonfinite)
        xe, ye = _log_edges(ws.astype(float)), _log_edges(bs.astype(float))
        marks = [(lab, v, m) for lab, v, m in INIT_POINTS if xe[0] <= v <= xe[-1] and ye[0] <= v <= ye[-1]]
        legend = [lab for lab, _, _ in marks] + (["non-finite loss (chance)"] if bad.any() else [])
        canvas = Canvas([1], legend, panel=(4.4, 3.6))
        ax = canvas.axes[0][0]
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(acc), cmap="viridis", vmin=0.0, vmax=1.0, shading="flat")
        for i, b in enumerate(bs):
            for j, w in enumerate(ws):
                if np.isnan(acc[i, j]):
                    continue
                x, y = math.sqrt(xe[j] * xe[j + 1]), math.sqrt(ye[i] * ye[i + 1])  # the cell's centre on log axes
                ax.text(x, y, f"{acc[i, j]:.2f}" + (" ×" if bad[i, j] else ""), ha="center", va="center", fontsize=7,
                        color="white" if acc[i, j] < 0.7 else "black")  # viridis turns light above ~0.7
        handles = []
        for lab, v, marker in marks:
            ax.plot([v], [v], marker=marker, **INIT_MARK)
            handles.append(Line2D([], [], marker=marker, **{**INIT_MARK, "markersize": 10}, label=lab))
        if bad.any():
            handles.append(Line2D([], [], marker="$×$", color="0.2", linestyle="none", label="non-finite loss (chance)"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        ax.set_xticks(ws, labels=[f"{v:g}" for v in ws])
        ax.set_yticks(bs, labels=[f"{v:g}" for v in bs])
        ax.minorticks_off()  # the grid's values are the ticks: log minor ticks would only clutter
        ax.grid(False)
        ax.set_xlabel("forward (weight) variance × fan_in")
        ax.set_ylabel("backward (feedback) variance × fan_in")
        canvas.panels.colorbar(mesh, ax=ax, label="final training accuracy")
        canvas.title(title)
        if handles:
            canvas.legend(handles, "initialisation")
        return canvas.fig


def save_figure(fig: Figure, out: str | Path, stem: str) -> list[Path]:
    """Write `<out>/<stem>.png` (200 dpi), `.svg` and `.pdf` (text as text in both) with a tight
    bounding box (SAVE); returns the paths in FORMATS order and closes the figure."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{fmt}" for fmt in FORMATS]
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):  # rc is read at save time, not when built
        for path in paths:
            fig.savefig(path, dpi=DPI if path.suffix == ".png" else None, **SAVE)
    plt.close(fig)
    return paths
