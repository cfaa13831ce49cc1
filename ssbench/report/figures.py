"""The report's figures: which plots a store's finished runs give, drawn by ``plots`` and saved as files."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from ssbench.report.tables import ReportFilter, alignment_curves


def _slug(*parts: Any) -> str:
    def clean(p: Any) -> str:
        return re.sub(r"[^A-Za-z0-9.@-]+", "-", str(p).replace("θ", "theta")).strip("-")

    return "_".join(clean(p) for p in parts if p is not None and str(p))


def _bits(bits: Any) -> str | None:
    return None if bits is None or pd.isna(bits) else f"{int(bits)}bit"


def _on(model: Any, dataset: Any, bits: Any = None) -> str:
    return f"{model} on {dataset}" + ("" if _bits(bits) is None else f", {int(bits)}-bit codes")


def build_plots(store: Any, f: ReportFilter, out: Path, tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """Robustness curves per model x dataset x bits x metric, alignment over epochs, training curves,
    Hessian eigenvalue densities and loss surfaces, accuracy vs corruption severity. Model and dataset
    are variant labels (mlp[256x3], fashion-mnist[5-9]), so variants never share a file."""
    from ssbench.report import plots
    from ssbench.report.tables import (
        attach_labels,
        corruption_table,
        hessian_runs,
        labels_of,
        robust_table,
        trainability_table,
        trajectory_planes,
        trajectory_points,
    )

    labels = labels_of(store)
    figure_keys = ["model", "dataset", "bits"]
    files: list[Path] = []
    robust = robust_table(store, f, labels=labels)
    if not robust.empty:
        for (model, dataset, bits, metric), sub in robust.groupby([*figure_keys, "metric"], sort=False, dropna=False):
            fig = plots.plot_robustness(sub, title=_on(model, dataset, bits))
            stem = _slug("robust", model, dataset, None if metric == "accuracy" else metric, _bits(bits))
            files += plots.save_figure(fig, out, stem)
    curves = alignment_curves(store, f, labels)
    if not curves.empty:
        for (model, dataset, bits), sub in curves.groupby(figure_keys, sort=False, dropna=False):
            fig = plots.plot_alignment(sub, title=f"alignment of the feedback weights: {_on(model, dataset, bits)}")
            files += plots.save_figure(fig, out, _slug("alignment", model, dataset, _bits(bits)))
    metrics = store.frame_metrics(status="finished", **f.kwargs())
    if not metrics.empty:
        metrics = attach_labels(metrics, labels)
        for (kind, model, dataset, bits), sub in metrics.groupby(["kind", *figure_keys], sort=False, dropna=False):
            fig = plots.plot_training(sub, title=f"{kind} curves: {_on(model, dataset, bits)}")
            files += plots.save_figure(fig, out, _slug("training", kind, model, dataset, _bits(bits)))
    hess = hessian_runs(store, f, labels)
    if not hess.empty:
        for (model, dataset, split), sub in hess.groupby(["model", "dataset", "split"], sort=False, dropna=False):
            where = f"{model} on {dataset} ({split} loss)"
            if sub["density"].map(lambda p: isinstance(p, dict)).any():
                fig = plots.plot_hessian_density(sub, title=f"Hessian eigenvalue density: {where}")
                files += plots.save_figure(fig, out, _slug("hessian_density", model, dataset, split))
            if sub["surface"].map(lambda p: isinstance(p, dict)).any():
                fig = plots.plot_loss_surfaces(sub, title=f"loss surface along the top two eigenvectors: {where}")
                files += plots.save_figure(fig, out, _slug("loss_surface", model, dataset, split))
    traj = trajectory_points(store, f, labels)
    if not traj.empty:
        for (model, dataset, split), sub in traj.groupby(["model", "dataset", "split"], sort=False, dropna=False):
            fig = plots.plot_curvature_over_training(sub, title=f"curvature over training: {model} on {dataset} ({split} loss)")
            files += plots.save_figure(fig, out, _slug("curvature_over_training", model, dataset, split))
    planes = trajectory_planes(store, f, labels)
    if not planes.empty:
        for (model, dataset, split), sub in planes.groupby(["model", "dataset", "split"], sort=False, dropna=False):
            fig = plots.plot_trajectories(sub, title=f"weight trajectories (PCA) over the loss: {model} on {dataset} ({split} loss)")
            files += plots.save_figure(fig, out, _slug("trajectory", model, dataset, split))
    corr = corruption_table(store, f, labels)
    if not corr.empty:
        for (model, dataset, bits), sub in corr.groupby(figure_keys, sort=False, dropna=False):
            fig = plots.plot_corruptions(sub, title=f"accuracy under corruptions: {_on(model, dataset, bits)}")
            files += plots.save_figure(fig, out, _slug("corruptions", model, dataset, _bits(bits)))
    train_map = (tables or {}).get("trainability")
    train_map = trainability_table(store, f, labels) if train_map is None else train_map
    for (rule, model, dataset, variant), sub in train_map.groupby(["rule", "model", "dataset", "variant"], sort=False, dropna=False):
        shown = "" if variant is None or pd.isna(variant) or variant == "" else f" [{variant}]"
        fig = plots.plot_trainability(sub, title=f"trainability of {rule}{shown}: {model} on {dataset}")
        files += plots.save_figure(fig, out, _slug("trainability", rule, model, dataset, shown.strip(" []") or None))
    return files
