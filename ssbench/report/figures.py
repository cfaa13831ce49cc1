"""The report's figures: one definition each, and the only list of their kinds.

Adding a figure kind touches this file only (plus its `plots.plot_*` function): one `Figure(...)` in
`FIGURES`. `build_plots` draws every definition in order; the HTML page shows the SVGs it wrote.

A `Figure` (frozen dataclass):

  name    the kind, and the first part of each file stem (<out>/<name>_<parts>.png, .svg, .pdf)
  frame   frame(frames, built) -> the frame its figures draw from. `frames`: the report's
          `registry.Frames` (run labels and robust sweeps loaded once, shared with the tables);
          `built`: the tables' long frames already built, by table name (`_table` reuses one)
  keys    the columns one figure each value of which gets (a group of `frame`)
  title   title(k) -> the figure's title in words (`ssbench.report.words`); k: {key: value} of the group
  stem    stem(k) -> the parts after `name` in the file stem (None and "" left out)
  plot    plot(sub, title, k) -> the matplotlib figure of the group's rows `sub`
  skip    skip(sub) -> whether a group has nothing to draw (no file then)

Model and dataset are variant labels (mlp[256x3], fashion-mnist[5-9]), so variants never share a file.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ssbench.report.registry import Frames, table
from ssbench.report.tables import (
    ReportFilter,
    alignment_curves,
    attach_labels,
    hessian_runs,
    trajectory_planes,
    trajectory_points,
)
from ssbench.report.words import KIND_WORDS, SPLIT_WORDS, class_count, dataset_words, model_words, subject_words


def _slug(*parts: Any) -> str:
    def clean(p: Any) -> str:
        return re.sub(r"[^A-Za-z0-9.@-]+", "-", str(p).replace("θ", "theta")).strip("-")

    return "_".join(c for c in (clean(p) for p in parts if p is not None) if c)


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


def _plots() -> Any:
    """`plots`, imported when a figure is drawn: matplotlib loads only for reports that plot."""
    from ssbench.report import plots

    return plots


Keys = dict[str, Any]  # {group key: value} of one figure
FrameOf = Callable[[Frames, Mapping[str, pd.DataFrame]], pd.DataFrame]  # (frames, the tables already built) -> the frame a kind draws from


@dataclass(frozen=True)
class Figure:
    name: str
    frame: FrameOf
    keys: tuple[str, ...]
    title: Callable[[Keys], str]
    stem: Callable[[Keys], tuple[Any, ...]]
    plot: Callable[[pd.DataFrame, str, Keys], Any]
    skip: Callable[[pd.DataFrame], bool] = lambda sub: False


def _table(name: str) -> FrameOf:
    """The frame of the registry's table `name`: the one the tables built, else built now."""
    return lambda fr, built: built[name] if name in built else table(name).build(fr)


def _training_metrics(fr: Frames, built: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    m = fr.store.frame_metrics(status="finished", **fr.filter.kwargs())
    return m if m.empty else attach_labels(m, fr.labels)


def _analysis(builder: Callable[..., pd.DataFrame]) -> FrameOf:
    return lambda fr, built: fr.of(builder)


def _lacks(column: str) -> Callable[[pd.DataFrame], bool]:
    """skip: no run of the group stored `column`'s params (a Hessian analysis without --density / --surface)."""
    return lambda sub: not sub[column].map(lambda p: isinstance(p, dict)).any()


def _subject(k: Keys) -> str:
    return subject_words(k["model"], k["dataset"], k["bits"])


def _accuracy(k: Keys) -> bool:
    """Whether a robust group is of accuracy, the plain case: no metric in its title words or stem, a chance line."""
    return k["metric"] == "accuracy"


def _robust_title(k: Keys) -> str:
    what = "Robust accuracy" if _accuracy(k) else _plots().metric_label(str(k["metric"]))
    return f"{what} under attack: {_subject(k)}"


def _variant(k: Keys) -> str:
    v = k["variant"]
    return "" if v is None or pd.isna(v) else str(v)


def _analysed_stem(k: Keys) -> tuple[Any, ...]:
    return k["model"], k["dataset"], k["split"]


SUBJECT = ("model", "dataset", "bits")
ANALYSED = ("model", "dataset", "split")
_hessian = _analysis(hessian_runs)  # one object: density and surface share the frame (built once)

FIGURES: tuple[Figure, ...] = (
    Figure("robust", lambda fr, built: fr.robust, (*SUBJECT, "metric"),
           _robust_title,
           lambda k: (k["model"], k["dataset"], None if _accuracy(k) else k["metric"], _bits(k["bits"])),
           lambda sub, title, k: _plots().plot_robustness(sub, title=title, chance=_chance(k["dataset"]) if _accuracy(k) else None),
           skip=lambda sub: sub["robust_mean"].isna().all()),
    Figure("alignment", _analysis(alignment_curves), SUBJECT,
           lambda k: f"Alignment of the feedback weights: {_subject(k)}",
           lambda k: (k["model"], k["dataset"], _bits(k["bits"])),
           lambda sub, title, k: _plots().plot_alignment(sub, title=title),
           skip=lambda sub: not _plots().has_alignment(sub)),
    Figure("training", _training_metrics, ("kind", *SUBJECT),
           lambda k: f"{KIND_WORDS.get(str(k['kind']), str(k['kind'])).capitalize()} curves: {_subject(k)}",
           lambda k: (k["kind"], k["model"], k["dataset"], _bits(k["bits"])),
           lambda sub, title, k: _plots().plot_training(sub, title=title),
           skip=lambda sub: not _curves(sub)),
    Figure("hessian-density", _hessian, ANALYSED,
           lambda k: "Hessian eigenvalue density of the {}: {}".format(*_loss_of(**k)),
           _analysed_stem,
           lambda sub, title, k: _plots().plot_hessian_density(sub, title=title),
           skip=_lacks("density")),
    Figure("loss-surface", _hessian, ANALYSED,
           lambda k: "The {} along the top two Hessian eigenvectors: {}".format(*_loss_of(**k)),
           _analysed_stem,
           lambda sub, title, k: _plots().plot_loss_surfaces(sub, title=title),
           skip=_lacks("surface")),
    Figure("curvature-over-training", _analysis(trajectory_points), ANALYSED,
           lambda k: "Curvature of the {} over training: {}".format(*_loss_of(**k)),
           _analysed_stem,
           lambda sub, title, k: _plots().plot_curvature_over_training(sub, title=title)),
    Figure("trajectory", _analysis(trajectory_planes), ANALYSED,
           lambda k: "Weight trajectories over the {} (each run's PCA plane): {}".format(*_loss_of(**k)),
           _analysed_stem,
           lambda sub, title, k: _plots().plot_trajectories(sub, title=title)),
    Figure("corruptions", _table("corruptions"), SUBJECT,
           lambda k: f"Accuracy under corruptions: {_subject(k)}",
           lambda k: (k["model"], k["dataset"], _bits(k["bits"])),
           lambda sub, title, k: _plots().plot_corruptions(sub, title=title, chance=_chance(k["dataset"]))),
    Figure("trainability", _table("trainability"), ("rule", "model", "dataset", "variant"),
           lambda k: f"Trainability of {k['rule']}{f' [{_variant(k)}]' if _variant(k) else ''}: "
                     f"{model_words(k['model'])}, {dataset_words(k['dataset'])}",
           lambda k: (k["rule"], k["model"], k["dataset"], _variant(k)),
           lambda sub, title, k: _plots().plot_trainability(sub, title=title)),
)


def build_plots(store: Any, f: ReportFilter, out: Path, tables: Mapping[str, pd.DataFrame] | None = None,
                frames: Frames | None = None) -> list[Path]:
    """Every figure of every `FIGURES` kind the store has data for, saved as `plots.save_figure` files
    (in registry order). `tables`: the tables' long frames already built (by table name), reused
    instead of querying the store again; `frames`: the report's `registry.Frames` (run labels and
    robust sweeps loaded once for tables and plots; its store and filter win)."""
    frames = frames or Frames(store, f)
    built = tables or {}
    loaded: dict[Callable, pd.DataFrame] = {}  # a frame two kinds draw from is loaded once
    files: list[Path] = []
    for d in FIGURES:
        if d.frame not in loaded:
            loaded[d.frame] = d.frame(frames, built)
        data = loaded[d.frame]
        if data.empty:
            continue
        for values, sub in data.groupby(list(d.keys), sort=False, dropna=False):
            if d.skip(sub):
                continue
            k = dict(zip(d.keys, values))
            files += _plots().save_figure(d.plot(sub, d.title(k), k), out, _slug(d.name, *d.stem(k)))
    return files
