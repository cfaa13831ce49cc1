"""The course of training, read from the weights a run kept per epoch (`TrainSpec.keep_epochs`).

* Curvature over training (the IFA paper's Fig. 2f-k): Hutchinson trace and top Hessian eigenvalue
  (Lanczos) of the loss at every analysed epoch, computed exactly as `ssbench analyze hessian` does,
  so the last epoch's values equal that command's on the final weights.
* Weight trajectory (Fig. 2b-d, after Li et al. 2018, "Visualizing the loss landscape"): the
  vectors theta_i - theta_final of the kept epochs, their first two principal directions (SVD,
  not mean-centred: the final weights are the origin), every epoch's coordinates in that plane and
  the loss on a grid of the plane around the path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from ssbench.analysis.hessian import hutchinson_trace, lanczos_top, loss_surface, model_hessian
from ssbench.analysis.jobs import analysis_run_fields, batches_of, progress_bar, select_indices, stack_examples
from ssbench.analysis.specs import TrajectorySpec
from ssbench.errors import SpecError
from ssbench.printing import SafeConsole

EPOCH_TAG = "epoch-"


# -- the numerics ---------------------------------------------------------------------------------

def flat_params(model: nn.Module) -> Tensor:
    """Every trainable forward parameter in `model.parameters()` order, flat, float64 (the order and
    the set `model_hessian` differentiates; rule state are buffers, not parameters)."""
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters() if p.requires_grad])


@dataclass(frozen=True)
class Projection:
    """A weight trajectory in the plane of its first two principal directions."""

    coords: Tensor  # (epochs, 2): (theta_i - theta_final) . d_k
    directions: Tensor  # (2, dim) unit rows, float64
    explained: tuple[float, float]  # share of sum ||theta_i - theta_final||^2 along each direction


def project_trajectory(thetas: Tensor) -> Projection:
    """Principal directions of the rows theta_i - theta_final (i before the last) and every row's
    coordinates. Each direction's sign is fixed so that the first point has a coordinate >= 0 on it
    (an SVD's signs are arbitrary; this makes plots and stored numbers reproducible)."""
    thetas = thetas.double()
    if thetas.shape[0] < 3:
        raise SpecError(f"a trajectory needs at least 3 kept weight vectors, got {thetas.shape[0]}")
    diffs = thetas[:-1] - thetas[-1]
    _, s, vh = torch.linalg.svd(diffs, full_matrices=False)
    directions = vh[:2].clone()
    coords = (thetas - thetas[-1]) @ directions.T
    flip = torch.where(coords[0] < 0, -1.0, 1.0).to(torch.float64)
    directions *= flip[:, None]
    coords *= flip
    total = float((s**2).sum())
    explained = tuple(float(v) / total if total > 0 else 0.0 for v in (s[:2] ** 2))
    return Projection(coords, directions, (explained[0], explained[1]))


def plane_grid(coords: Tensor, points: int, margin: float) -> tuple[list[float], list[float]]:
    """Axes of a grid covering the trajectory's extent on each direction, widened by `margin` of it."""
    axes = []
    for k in range(2):
        lo, hi = float(coords[:, k].min()), float(coords[:, k].max())
        pad = margin * max(hi - lo, 1e-12)
        axes.append([float(v) for v in torch.linspace(lo - pad, hi + pad, points, dtype=torch.float64)])
    return axes[0], axes[1]


# -- the job --------------------------------------------------------------------------------------

def kept_epochs(store: Any, run_id: int) -> list[int]:
    """Epochs whose weights the run kept, ascending."""
    return sorted(int(r.epoch) for r in store.checkpoints(run_id) if r.tag.startswith(EPOCH_TAG) and r.epoch is not None)


def chosen_epochs(kept: list[int], every: int) -> list[int]:
    """Every `every`-th kept epoch, always with the first and the last."""
    picked = kept[::every]
    return picked + ([kept[-1]] if kept and picked[-1] != kept[-1] else [])


def run_trajectory(spec: TrajectorySpec, store: Any, *, console: Console | None = None, quiet: bool = False) -> int:
    """Curvature at the analysed epochs and the PCA trajectory with its loss plane, stored as one
    analysis run (parent: the analysed run); returns its id."""
    from ssbench.data import load_data
    from ssbench.training.checkpoint import load_trained
    from ssbench.training.device import resolve_device
    from ssbench.training.job import epoch_tag

    console = console or SafeConsole(stderr=True)
    if not spec.target.strip().lstrip("#").isdigit():
        raise SpecError(f"analyze trajectory needs a run id (the kept epochs are in the store), got {spec.target!r}")
    run_id = int(spec.target.strip().lstrip("#"))
    device = resolve_device(spec.device)
    final = load_trained(store, run_id, device)  # a finished trained run, or one clear error
    if final.spec.task != "classification":
        raise SpecError(f"analysis needs a classification run; run {run_id} is a {final.spec.task} model")
    kept = kept_epochs(store, run_id)
    if len(kept) < 3:
        raise SpecError(f"run {run_id} kept {len(kept)} epoch checkpoint(s); a trajectory needs 3 or more: "
                        "train with --keep-epochs N (recipes: keep_epochs)")
    epochs = chosen_epochs(kept, spec.every)
    bundle = load_data(final.spec.data)
    dataset = bundle.train if spec.split == "train" else bundle.test
    indices = select_indices(len(dataset), spec.n_examples, spec.seed)
    x, y = stack_examples(dataset, indices, device)
    batches = batches_of(x, y, spec.batch_size)
    common = {"n": len(indices), "split": spec.split}
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []

    with store.run("analysis", **analysis_run_fields(spec, final, device)) as rec:
        thetas: dict[int, Tensor] = {}
        path_loss: list[float] = []  # the loss along the path itself, on the same examples
        with progress_bar(console, quiet) as progress:
            task = progress.add_task(f"run {run_id}: {len(kept)} kept epochs", total=len(kept))
            for epoch in kept:
                model = load_trained(store, run_id, device, tag=epoch_tag(epoch)).model
                thetas[epoch] = flat_params(model)
                op = model_hessian(model, batches)
                loss = op.loss()
                path_loss.append(loss)
                if spec.hessian and epoch in epochs:
                    tr = hutchinson_trace(op, spec.probes, seed=spec.seed)
                    top = lanczos_top(op, 1, spec.iters, seed=spec.seed)
                    p = {**common, "epoch": epoch}
                    rec.log_evaluation("trajectory_trace", tr.mean, split=spec.split,
                                       params={**p, "stderr": tr.stderr, "probes": spec.probes})
                    rec.log_evaluation("trajectory_top_eig", top.values[0], split=spec.split,
                                       params={**p, "iters": top.iterations, "method": "lanczos"})
                    rec.log_evaluation("trajectory_loss", loss, split=spec.split, params=p)
                    rows.append({"epoch": epoch, "loss": loss, "trace": tr.mean, "stderr": tr.stderr, "top_eig": top.values[0]})
                progress.advance(task)
            summary: dict[str, Any] = {"n": len(indices), "indices": indices, "kept_epochs": kept, "hessian_epochs": epochs if spec.hessian else []}
            if spec.pca:
                proj = project_trajectory(torch.stack([thetas[e] for e in kept]))
                alphas, betas = plane_grid(proj.coords, spec.points, spec.margin)
                # `op` is still the last kept epoch's: the final weights are the plane's origin
                plane = progress.add_task("loss on the PCA plane", total=len(alphas) * len(betas))
                grid = loss_surface(op, proj.directions[0], proj.directions[1], alphas, betas,
                                    on_point=lambda: progress.advance(plane))
                rec.log_evaluation("trajectory_pca", sum(proj.explained), split=spec.split, params={
                    **common, "epochs": kept, "coords": proj.coords.tolist(), "explained": list(proj.explained),
                    "alphas": alphas, "betas": betas, "grid": grid.tolist(), "path_loss": path_loss,
                    "params": int(proj.directions.shape[1]),
                })
                summary.update(explained=list(proj.explained))
        summary["seconds"] = time.perf_counter() - t0
        rec.set_summary(**summary)
        _print(console, rec.run_id, run_id, rows, proj if spec.pca else None, kept)
        return rec.run_id


def _print(console: Console, analysis_id: int, run_id: int, rows: list[dict[str, Any]], proj: Projection | None,
           kept: list[int]) -> None:
    title = f"run {run_id} over training (analysis run {analysis_id})"
    if proj is not None:
        title += f"; PC1 {100 * proj.explained[0]:.1f}%, PC2 {100 * proj.explained[1]:.1f}% of the path's variance"
    table = Table(title=title)
    for col in ("epoch", "loss", "trace", "top eigenvalue", "PC1", "PC2"):
        table.add_column(col, justify="right")
    by_epoch = {r["epoch"]: r for r in rows}
    for i, epoch in enumerate(kept):
        r = by_epoch.get(epoch)
        if r is None and proj is None:
            continue
        cells = [f"{r['loss']:.4g}", f"{r['trace']:.4g} ± {r['stderr']:.2g}", f"{r['top_eig']:.4g}"] if r else ["", "", ""]
        # + 0.0 turns the origin's -0.0 into 0
        pcs = [f"{float(proj.coords[i, k]) + 0.0:.3g}" for k in range(2)] if proj is not None else ["", ""]
        table.add_row(str(epoch), *cells, *pcs)
    console.print(table)
