"""Paper figures (matplotlib, Agg) from report frames. Each function returns the Figure, so callers
and tests can inspect it; `save_figure` writes PNG + SVG.

Encoding kept across every figure: one colour per rule; gradient mode by line style
(exact solid, feedback dashed, transfer dotted, query dash-dot); the per-example worst case across
modes is a thick, light solid line under the others.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

RULE_ORDER = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "ifa")
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
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "svg.fonttype": "none"}


def rule_color(rule: str) -> tuple[float, float, float]:
    """The same colour for a rule in every figure (bp blue, fa orange, ...)."""
    r = str(rule)
    idx = RULE_ORDER.index(r) if r in RULE_ORDER else len(RULE_ORDER) + sum(map(ord, r)) % 3
    return _PALETTE[idx % len(_PALETTE)]


def _rules(values: Sequence[str]) -> list[str]:
    return sorted(set(values), key=lambda r: (RULE_ORDER.index(r) if r in RULE_ORDER else 99, r))


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _legend_right(fig: Figure, handles: list[Line2D], title: str | None = None, anchor_y: float = 0.5) -> None:
    # outside the axes: a legend never covers data
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, anchor_y), frameon=False, title=title)


def _xlabel(norm: str, metric: str) -> str:
    if norm == "l0":
        return "budget (pixels changed)"
    return "ε (L∞, inputs in [0, 1])" if norm == "linf" else f"ε ({norm})"


def plot_robustness(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Robust metric vs epsilon from a `robust_table` frame (one model x dataset x metric):
    one panel per attack, one colour per rule, line style per gradient mode, ± std bands."""
    with plt.rc_context(STYLE):
        attacks = list(dict.fromkeys(table["attack"]))
        rows, cols = _grid(len(attacks))
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, layout="constrained")
        metric = str(table["metric"].iloc[0]) if len(table) else "accuracy"
        ylabel = "robust accuracy" if metric == "accuracy" else f"{metric.replace('map', 'mAP')} under attack"
        rules = _rules(table["rule"])
        modes = [m for m in MODE_STYLE if m in set(table["mode"])]
        for k, attack in enumerate(attacks):
            ax = axes[k // cols][k % cols]
            sub = table[table["attack"] == attack]
            for mode in ["worst", *[m for m in modes if m != "worst"]]:  # worst first: drawn underneath
                for rule in rules:
                    line = sub[(sub["rule"] == rule) & (sub["mode"] == mode)].sort_values("epsilon")
                    if line.empty:
                        continue
                    x, y, s = line["epsilon"].to_numpy(float), line["robust_mean"].to_numpy(float), line["robust_std"].to_numpy(float)
                    ax.plot(x, y, color=rule_color(rule), label=f"{rule} {mode}", marker="o" if len(x) < 4 else None,
                            markersize=3, zorder=1 if mode == "worst" else 2, **MODE_STYLE[mode])
                    if mode != "worst" and (~pd.isna(s)).any():
                        s = pd.Series(s).fillna(0).to_numpy()
                        ax.fill_between(x, y - s, y + s, color=rule_color(rule), alpha=0.12, linewidth=0)
            norm = str(sub["norm"].iloc[0]) if "norm" in sub.columns and len(sub) else "linf"
            ax.set_title(attack)
            ax.set_xlabel(_xlabel(norm, metric))
            ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlim(left=min(0.0, float(sub["epsilon"].min())) if len(sub) else 0.0)
        for k in range(len(attacks), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        if title:
            fig.suptitle(title)
        rule_handles = [Line2D([], [], color=rule_color(r), linewidth=2, label=r) for r in rules]
        mode_handles = [Line2D([], [], color="0.25", label=MODE_LABEL[m], **MODE_STYLE[m]) for m in modes]
        fig.legend(handles=rule_handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="rule")
        fig.legend(handles=mode_handles, loc="lower left", bbox_to_anchor=(1.0, 0.0), frameon=False, title="gradient mode")
        return fig


def plot_alignment(curves: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Angle(W, B) over epochs from an `alignment_curves` frame: one panel per rule, one line per layer."""
    with plt.rc_context(STYLE):
        rules = _rules(curves["rule"])
        rows, cols = _grid(len(rules), 4)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows), squeeze=False, sharey=True,
                                 layout="constrained")
        layers = list(dict.fromkeys(curves["layer"]))
        cmap = plt.get_cmap("viridis")
        colours = {layer: cmap(i / max(len(layers) - 1, 1) * 0.9) for i, layer in enumerate(layers)}
        top = max(90.0, float(curves["angle_mean"].max()) + 5) if len(curves) else 90.0
        for k, rule in enumerate(rules):
            ax = axes[k // cols][k % cols]
            sub = curves[curves["rule"] == rule]
            for layer in layers:
                line = sub[sub["layer"] == layer].sort_values("epoch")
                if line.empty:
                    continue
                ax.plot(line["epoch"], line["angle_mean"], color=colours[layer], label=layer, marker="o", markersize=3)
            ax.set_title(f"rule {rule}", color=rule_color(rule))
            ax.set_xlabel("epoch")
            ax.set_ylabel("angle(W, B) (degrees)")
            ax.set_ylim(0, top)
            ax.xaxis.get_major_locator().set_params(integer=True)
        for k in range(len(rules), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        if title:
            fig.suptitle(title)
        handles = [Line2D([], [], color=colours[layer], marker="o", markersize=3, label=layer) for layer in layers]
        _legend_right(fig, handles, "layer")
        return fig


def plot_training(metrics: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Validation accuracy and loss per epoch, one line per run (colour = rule; train loss dashed)."""
    with plt.rc_context(STYLE):
        fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(7.0, 2.8), layout="constrained")
        runs = metrics.drop_duplicates("run_id")[["run_id", "rule", "seed", "kind"]].itertuples(index=False)
        for run_id, rule, seed, kind in runs:
            m = metrics[metrics["run_id"] == run_id]
            colour = rule_color(rule)
            seed_txt = "" if pd.isna(seed) else f", seed {int(seed)}"
            label = f"run {run_id}: {kind} {rule}{seed_txt}"
            val_acc = m[(m["split"] == "val") & (m["name"] == "accuracy")].sort_values("epoch")
            if not val_acc.empty:
                acc_ax.plot(val_acc["epoch"], val_acc["value"], color=colour, marker="o", markersize=3, label=label)
            for split, style in (("val", "-"), ("train", "--")):
                loss = m[(m["split"] == split) & (m["name"] == "loss")].sort_values("epoch")
                if not loss.empty:
                    loss_ax.plot(loss["epoch"], loss["value"], color=colour, linestyle=style, marker="o", markersize=3,
                                 label=f"{label} ({split} loss)")
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("validation accuracy")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("cross-entropy loss")
        for ax in (acc_ax, loss_ax):
            ax.xaxis.get_major_locator().set_params(integer=True)
        if title:
            fig.suptitle(title)
        handles = [Line2D([], [], color=rule_color(r), linewidth=2, label=r) for r in _rules(metrics["rule"])]
        handles += [Line2D([], [], color="0.3", linestyle="-", label="validation loss"),
                    Line2D([], [], color="0.3", linestyle="--", label="training loss")]
        _legend_right(fig, handles)
        return fig


def save_figure(fig: Figure, out: str | Path, stem: str) -> list[Path]:
    """Write `<out>/<stem>.png` (200 dpi) and `.svg`; closes the figure."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths
