"""The report's figures: which plots a store's finished runs give, drawn by ``plots`` and saved as files."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from ssbench.report.tables import ReportFilter, alignment_curves
from ssbench.report.words import KIND_WORDS, SPLIT_WORDS, class_count, dataset_words, model_words, subject_words


def _slug(*parts: Any) -> str:
    def clean(p: Any) -> str:
        return re.sub(r"[^A-Za-z0-9.@-]+", "-", str(p).replace("θ", "theta")).strip("-")

    return "_".join(clean(p) for p in parts if p is not None and str(p))


def _bits(bits: Any) -> str | None:
    return None if bits is None or pd.isna(bits) else f"{int(bits)}bit"


def _chance(dataset: Any) -> float | None:
    """1 / classes of a dataset label; None where the label does not say how many classes."""
    k = class_count(dataset)
    return 1.0 / k if k else None


def _loss_of(model: Any, dataset: Any, split: Any) -> tuple[str, str]:
    """("training loss", "LeNet, Fashion-MNIST") for the titles of the analyses of one split."""
    return f"{SPLIT_WORDS.get(str(split), str(split))} loss", f"{model_words(model)}, {dataset_words(dataset)}"


def _curves(metrics: pd.DataFrame) -> bool:
    """Whether some run logged two epochs or more: a training 'curve' of one epoch is a dot per run
    (the clean table holds that number)."""
    return bool(len(metrics)) and int(metrics.groupby("run_id")["epoch"].nunique().max()) >= 2


def build_plots(store: Any, f: ReportFilter, out: Path, tables: dict[str, pd.DataFrame] | None = None,
                frames: Any = None) -> list[Path]:
    """Robustness curves per model x dataset x bits x metric, alignment over epochs, training curves,
    Hessian eigenvalue densities and loss surfaces, accuracy vs corruption severity. Model and dataset
    are variant labels (mlp[256x3], fashion-mnist[5-9]), so variants never share a file; titles give
    them in words (`ssbench.report.words`). `tables`: frames already built (by table name), reused
    instead of querying the store again; `frames`: the report's `registry.Frames` (run labels and
    robust sweeps loaded once for tables and plots)."""
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

    labels = frames.labels if frames is not None else labels_of(store)
    figure_keys = ["model", "dataset", "bits"]
    files: list[Path] = []
    robust = frames.robust if frames is not None else robust_table(store, f, labels=labels)
    if not robust.empty:
        for (model, dataset, bits, metric), sub in robust.groupby([*figure_keys, "metric"], sort=False, dropna=False):
            if sub["robust_mean"].isna().all():
                continue
            what = "Robust accuracy" if metric == "accuracy" else f"{plots.metric_label(str(metric))}"
            fig = plots.plot_robustness(sub, title=f"{what} under attack: {subject_words(model, dataset, bits)}",
                                        chance=_chance(dataset) if metric == "accuracy" else None)
            stem = _slug("robust", model, dataset, None if metric == "accuracy" else metric, _bits(bits))
            files += plots.save_figure(fig, out, stem)
    curves = alignment_curves(store, f, labels)
    if not curves.empty:
        for (model, dataset, bits), sub in curves.groupby(figure_keys, sort=False, dropna=False):
            if not plots.has_alignment(sub):
                continue
            fig = plots.plot_alignment(sub, title=f"Alignment of the feedback weights: {subject_words(model, dataset, bits)}")
            files += plots.save_figure(fig, out, _slug("alignment", model, dataset, _bits(bits)))
    metrics = store.frame_metrics(status="finished", **f.kwargs())
    if not metrics.empty:
        metrics = attach_labels(metrics, labels)
        for (kind, model, dataset, bits), sub in metrics.groupby(["kind", *figure_keys], sort=False, dropna=False):
            if not _curves(sub):
                continue
            what = KIND_WORDS.get(str(kind), str(kind)).capitalize()
            fig = plots.plot_training(sub, title=f"{what} curves: {subject_words(model, dataset, bits)}")
            files += plots.save_figure(fig, out, _slug("training", kind, model, dataset, _bits(bits)))
    hess = hessian_runs(store, f, labels)
    if not hess.empty:
        for (model, dataset, split), sub in hess.groupby(["model", "dataset", "split"], sort=False, dropna=False):
            loss, subject = _loss_of(model, dataset, split)
            if sub["density"].map(lambda p: isinstance(p, dict)).any():
                fig = plots.plot_hessian_density(sub, title=f"Hessian eigenvalue density of the {loss}: {subject}")
                files += plots.save_figure(fig, out, _slug("hessian_density", model, dataset, split))
            if sub["surface"].map(lambda p: isinstance(p, dict)).any():
                fig = plots.plot_loss_surfaces(sub, title=f"The {loss} along the top two Hessian eigenvectors: {subject}")
                files += plots.save_figure(fig, out, _slug("loss_surface", model, dataset, split))
    traj = trajectory_points(store, f, labels)
    if not traj.empty:
        for (model, dataset, split), sub in traj.groupby(["model", "dataset", "split"], sort=False, dropna=False):
            loss, subject = _loss_of(model, dataset, split)
            fig = plots.plot_curvature_over_training(sub, title=f"Curvature of the {loss} over training: {subject}")
            files += plots.save_figure(fig, out, _slug("curvature_over_training", model, dataset, split))
    planes = trajectory_planes(store, f, labels)
    if not planes.empty:
        for (model, dataset, split), sub in planes.groupby(["model", "dataset", "split"], sort=False, dropna=False):
            loss, subject = _loss_of(model, dataset, split)
            fig = plots.plot_trajectories(sub, title=f"Weight trajectories over the {loss} (each run's PCA plane): {subject}")
            files += plots.save_figure(fig, out, _slug("trajectory", model, dataset, split))
    corr = corruption_table(store, f, labels)
    if not corr.empty:
        for (model, dataset, bits), sub in corr.groupby(figure_keys, sort=False, dropna=False):
            fig = plots.plot_corruptions(sub, title=f"Accuracy under corruptions: {subject_words(model, dataset, bits)}",
                                         chance=_chance(dataset))
            files += plots.save_figure(fig, out, _slug("corruptions", model, dataset, _bits(bits)))
    train_map = (tables or {}).get("trainability")
    train_map = trainability_table(store, f, labels) if train_map is None else train_map
    for (rule, model, dataset, variant), sub in train_map.groupby(["rule", "model", "dataset", "variant"], sort=False, dropna=False):
        shown = "" if variant is None or pd.isna(variant) or variant == "" else f" [{variant}]"
        fig = plots.plot_trainability(sub, title=f"Trainability of {rule}{shown}: {model_words(model)}, {dataset_words(dataset)}")
        files += plots.save_figure(fig, out, _slug("trainability", rule, model, dataset, shown.strip(" []") or None))
    return files
