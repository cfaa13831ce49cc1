"""Paper figures (matplotlib, Agg) from report frames. Each function returns the Figure, so callers
and tests can inspect it; `save_figure` writes PNG (200 dpi) + SVG (text kept as text).

Encoding kept across every figure: one colour per rule (variants of one rule, e.g. ifa at several
θ, are shades of that rule's colour, dark to light in option order); gradient mode by line
style (exact solid, feedback dashed, transfer dotted, query dash-dot); the per-example worst case
across modes is a thick, light solid line under the others. Legends sit outside the axes, so they
never cover data, and figures have a fixed size (no tight-bbox cropping): the PNG is exactly
width x height x 200 dpi, the SVG width x height x 72 pt.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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

from ssbench.report.variants import RULE_ORDER, base_rule, sort_rules  # noqa: E402

DPI = 200
_PALETTE = plt.get_cmap("tab10").colors
MODE_STYLE = {
    "exact": {"linestyle": "-", "linewidth": 1.6},
    "feedback": {"linestyle": "--", "linewidth": 1.6},
    "transfer": {"linestyle": ":", "linewidth": 1.9},
    "query": {"linestyle": "-.", "linewidth": 1.6},
    "worst": {"linestyle": "-", "linewidth": 4.5, "alpha": 0.35},
}
MODE_LABEL = {"exact": "exact gradient", "feedback": "feedback (rule) gradient", "transfer": "transfer (BP surrogate)",
              "query": "black-box (queries)", "worst": "worst case over modes"}
# svg.fonttype none: SVG text stays <text> (editable, searchable in a paper's figure files)
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "svg.fonttype": "none",
         "figure.constrained_layout.use": True}  # constrained layout: labels, titles and legends never overlap
PANEL = (3.2, 2.6)  # inches per panel


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


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


def _legend_width(labels: Iterable[str]) -> float:
    """Inches for a legend column: line handle + the longest label at legend.fontsize."""
    return max(1.0, 0.65 + 0.068 * max([len(str(v)) for v in labels] + [6]))


class Canvas:
    """A figure split into a panel area (with its own title, so a title never runs under the
    legends) and a legend column on the right (so legends never cover data)."""

    def __init__(self, rows: int, cols: int, legend_labels: Iterable[str] = (), *,
                 panel: tuple[float, float] = PANEL, **subplot_kw: Any) -> None:
        labels = list(legend_labels)
        lw = _legend_width(labels) if labels else 0.0
        width = panel[0] * cols
        self.fig = plt.figure(figsize=(width + lw, panel[1] * rows + 0.45))
        if labels:
            self.panels, self.side = self.fig.subfigures(1, 2, width_ratios=[width, lw], wspace=0.0)
        else:
            self.panels, self.side = self.fig, None
        self.axes = self.panels.subplots(rows, cols, squeeze=False, **subplot_kw)

    def title(self, text: str | None) -> None:
        if text:  # over panels and legends: the whole width is there for it
            self.fig.suptitle(text)

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


def _metric_label(metric: str) -> str:
    return metric.replace("map@", "mAP@").replace("precision@", "precision@")


def plot_robustness(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Robust metric vs epsilon from a `robust_table` frame (one model x dataset x bits x metric):
    one panel per attack, one colour per rule variant, line style per gradient mode, ± std bands."""
    with plt.rc_context(STYLE):
        table = table.assign(series=series_of(table).to_numpy())
        attacks = list(dict.fromkeys(table["attack"]))
        rows, cols = _grid(len(attacks))
        colors = series_colors(table["series"])
        series = list(colors)
        modes = [m for m in MODE_STYLE if m in set(table["mode"])]
        canvas = Canvas(rows, cols, [*series, *(MODE_LABEL[m] for m in modes)])
        axes = canvas.axes
        metric = str(table["metric"].iloc[0]) if len(table) else "accuracy"
        ylabel = "robust accuracy" if metric == "accuracy" else f"{_metric_label(metric)} under attack"
        for k, attack in enumerate(attacks):
            ax = axes[k // cols][k % cols]
            sub = table[table["attack"] == attack]
            for mode in ["worst", *[m for m in modes if m != "worst"]]:  # worst first: drawn underneath
                for s_name in series:
                    line = sub[(sub["series"] == s_name) & (sub["mode"] == mode)].sort_values("epsilon")
                    if line.empty:
                        continue
                    x, y, s = line["epsilon"].to_numpy(float), line["robust_mean"].to_numpy(float), line["robust_std"].to_numpy(float)
                    ax.plot(x, y, color=colors[s_name], label=f"{s_name} {mode}", marker="o" if len(x) < 4 else None,
                            markersize=3, zorder=1 if mode == "worst" else 2, **MODE_STYLE[mode])
                    if mode != "worst" and (~pd.isna(s)).any():
                        s = pd.Series(s).fillna(0).to_numpy()
                        ax.fill_between(x, y - s, y + s, color=colors[s_name], alpha=0.12, linewidth=0)
            norm = str(sub["norm"].iloc[0]) if "norm" in sub.columns and len(sub) else "linf"
            ax.set_title(attack)
            ax.set_xlabel(_xlabel(norm, metric))
            if k % cols == 0:
                ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlim(left=min(0.0, float(sub["epsilon"].min())) if len(sub) else 0.0)
        for k in range(len(attacks), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        canvas.title(title)
        canvas.legend([Line2D([], [], color=colors[r], linewidth=2, label=r) for r in series], "rule", "upper")
        canvas.legend([Line2D([], [], color="0.25", label=MODE_LABEL[m], **MODE_STYLE[m]) for m in modes],
                      "gradient mode", "lower")
        return canvas.fig


def plot_alignment(curves: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Alignment over epochs from an `alignment_curves` frame: one panel per rule variant, one line
    per layer; top block angle(W, B), and, when the runs tracked it, a second block with the angle
    between the rule's and the true weight gradient."""
    with plt.rc_context(STYLE):
        curves = curves.assign(series=series_of(curves).to_numpy())
        colors = series_colors(curves["series"])
        series = list(colors)
        grad = "grad_angle_mean" in curves.columns and curves["grad_angle_mean"].notna().any()
        blocks = [("angle_mean", "angle(W, B) (degrees)")]
        if grad:
            blocks.append(("grad_angle_mean", "angle(rule grad, true grad) (°)"))
        rows, cols = _grid(len(series), 4)
        layers = list(dict.fromkeys(curves["layer"]))
        canvas = Canvas(rows * len(blocks), cols, layers, sharey="row")
        axes = canvas.axes
        cmap = plt.get_cmap("viridis")
        colours = {layer: cmap(i / max(len(layers) - 1, 1) * 0.9) for i, layer in enumerate(layers)}
        for b, (column, ylabel) in enumerate(blocks):
            vals = curves[column].dropna()
            top = max(90.0, float(vals.max()) + 5) if len(vals) else 90.0
            bottom = min(0.0, float(vals.min()) - 5) if len(vals) else 0.0
            for k, s_name in enumerate(series):
                ax = axes[b * rows + k // cols][k % cols]
                sub = curves[curves["series"] == s_name]
                for layer in layers:
                    line = sub[sub["layer"] == layer].dropna(subset=[column]).sort_values("epoch")
                    if line.empty:
                        continue
                    ax.plot(line["epoch"], line[column], color=colours[layer], label=layer, marker="o", markersize=3)
                ax.set_title(s_name if b == 0 else f"{s_name}: gradients", color=colors[s_name])
                ax.set_xlabel("epoch")
                if k % cols == 0:
                    ax.set_ylabel(ylabel)
                ax.set_ylim(bottom, top)
                _integer_axis(ax, sub.dropna(subset=[column])["epoch"])
            for k in range(len(series), rows * cols):
                axes[b * rows + k // cols][k % cols].set_visible(False)
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


LOSS_STYLE = (("val", "-", "o"), ("train", "--", "x"))
SPLIT_WORD = {"val": "validation", "train": "training"}


def plot_training(metrics: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Validation score (accuracy, or mAP@K for hashing runs) and loss per epoch, one line per run
    (colour = rule variant; training loss dashed, validation loss solid)."""
    with plt.rc_context(STYLE):
        metrics = metrics.assign(series=series_of(metrics).to_numpy())
        colors = series_colors(metrics["series"])
        canvas = Canvas(1, 2, [*colors, "validation loss"])
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
        val_ax.set_ylabel(f"validation {_metric_label(score)}" if score else "validation score")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")  # the task's own objective: cross-entropy, CSQ / DPSH for hashing
        for ax in (val_ax, loss_ax):
            _integer_axis(ax, metrics["epoch"])
        canvas.title(title)
        canvas.legend([Line2D([], [], color=c, linewidth=2, label=r) for r, c in colors.items()], "rule", "upper")
        splits = set(metrics.loc[metrics["name"] == "loss", "split"])
        canvas.legend([Line2D([], [], color="0.3", linestyle=style, marker=marker, label=f"{SPLIT_WORD[split]} loss")
                       for split, style, marker in LOSS_STYLE if split in splits], None, "lower")
        return canvas.fig


def plot_hessian_density(runs: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Smoothed Hessian eigenvalue density (SLQ) from `hessian_runs` rows that stored one: one line
    per analysed run, colour per rule variant, log density axis (a bulk near 0 and a few outliers)."""
    with plt.rc_context(STYLE):
        runs = runs[runs["density"].map(lambda p: isinstance(p, dict) and bool(p.get("grid")))]
        runs = runs.assign(series=series_of(runs).to_numpy())
        colors = series_colors(runs["series"])
        canvas = Canvas(1, 1, colors, panel=(4.6, 3.0))
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


def plot_loss_surfaces(runs: pd.DataFrame, *, title: str | None = None) -> Figure:
    """2-D loss surfaces L(w + a v1 + b v2) along the top two Hessian eigenvectors from `hessian_runs`
    rows that stored one: one panel per analysed run, one shared (log) colour scale, so a sharper
    minimum shows as more tightly packed contours."""
    with plt.rc_context(STYLE):
        runs = runs[runs["surface"].map(lambda p: isinstance(p, dict) and bool(p.get("grid")))]
        runs = runs.assign(series=series_of(runs).to_numpy())
        order = sort_rules(runs["series"])
        runs = runs.iloc[np.argsort([order.index(s) for s in runs["series"]], kind="stable")]
        colors = series_colors(runs["series"])
        rows, cols = _grid(len(runs), 4)
        canvas = Canvas(rows, cols, panel=(2.6, 2.4), sharex=True, sharey=True)
        axes = canvas.axes
        grids = [np.asarray(p["grid"], float) for p in runs["surface"]]
        lo = max(min(float(np.nanmin(g)) for g in grids), 1e-6) if grids else 1e-6
        hi = max(max(float(np.nanmax(g)) for g in grids), lo * 1.01) if grids else 1.0
        levels = np.geomspace(lo, hi, 16)
        norm = LogNorm(vmin=lo, vmax=hi)
        mappable = None
        for k, (row, grid) in enumerate(zip(runs.itertuples(index=False), grids)):
            ax = axes[k // cols][k % cols]
            a, b = np.asarray(row.surface["alphas"], float), np.asarray(row.surface["betas"], float)
            z = np.clip(grid.T, lo, hi)  # grid[i][j] = L(w + a_i v1 + b_j v2): x = alpha needs the transpose
            mappable = ax.contourf(a, b, z, levels=levels, norm=norm, cmap="viridis")
            ax.contour(a, b, z, levels=levels, colors="white", linewidths=0.3, alpha=0.6)
            ax.plot([0], [0], marker="+", color="red", markersize=8)
            seed = "" if pd.isna(row.seed) else f", seed {int(row.seed)}"
            ax.set_title(f"{row.series}{seed}", color=colors[row.series])
            ax.grid(False)
            if k // cols == rows - 1 or k + cols >= len(runs):
                ax.set_xlabel("α along v1 (top eigenvector)")
            if k % cols == 0:
                ax.set_ylabel("β along v2")
        for k in range(len(runs), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        if mappable is not None:
            bar = canvas.fig.colorbar(mappable, ax=axes, label="loss (log scale)", shrink=0.9)
            bar.set_ticks(levels[::3], labels=[f"{v:.3g}" for v in levels[::3]])
            bar.ax.minorticks_off()
        canvas.title(title)
        return canvas.fig


def plot_corruptions(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Accuracy averaged over corruptions vs severity (0 = clean) from a `corruption_table` frame:
    one line per rule variant, ± std over seeds."""
    with plt.rc_context(STYLE):
        rows = table[((table["corruption"] == "all") & table["severity"].notna()) | (table["corruption"] == "none")]
        rows = rows.assign(series=series_of(rows).to_numpy())
        colors = series_colors(rows["series"])
        canvas = Canvas(1, 1, colors, panel=(4.2, 3.0))
        ax = canvas.axes[0][0]
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
        canvas.legend([Line2D([], [], color=c, linewidth=2, label=r) for r, c in colors.items()], "rule")
        return canvas.fig


def save_figure(fig: Figure, out: str | Path, stem: str) -> list[Path]:
    """Write `<out>/<stem>.png` (200 dpi) and `.svg` (text as text) at the figure's size; closes it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    with plt.rc_context({"svg.fonttype": "none"}):  # rc is read at save time, not when the figure was built
        fig.savefig(paths[0], dpi=DPI)
        fig.savefig(paths[1])
    plt.close(fig)
    return paths
