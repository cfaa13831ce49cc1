"""Analysis jobs: a trained run -> Hessian spectrum / corruption accuracy -> evaluations in the store.

Each job is one ``analysis`` run whose parent is the analysed run; every number it prints is stored
as an evaluation (metric, value, split, params), so ``ssbench report`` can rebuild the tables.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import Tensor

from ssbench.analysis.corruptions import CORRUPTIONS, corrupt, corruption_names
from ssbench.analysis.hessian import (
    hutchinson_trace,
    lanczos_top,
    loss_surface,
    model_hessian,
    power_iteration,
    slq_density,
    surface_grid,
)
from ssbench.analysis.specs import CorruptionSpec, HessianSpec
from ssbench.errors import SpecError
from ssbench.printing import SafeConsole


def progress_bar(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet)


def select_indices(n_total: int, n: int, seed: int) -> list[int]:
    """The first n of a fixed seeded permutation (the same rows for every run with this seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].tolist()


def stack_examples(dataset: Any, indices: list[int], device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Images (no augmentation, whatever the data set's training transforms) and labels."""
    from ssbench.data import TensorImageDataset

    if isinstance(dataset, TensorImageDataset):
        sub = dataset.select(torch.as_tensor(indices, dtype=torch.long), augment=False)
        x = sub.transform_batch(sub.images, generator=None)
        return x.to(device), sub.labels.to(device)
    xs, ys = zip(*(dataset[i] for i in indices))
    x = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in xs]).to(device)
    return x, torch.as_tensor([int(t) for t in ys], dtype=torch.long, device=device)


def batches_of(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def _load(store: Any, target: str, device_name: str) -> tuple[Any, torch.device]:
    from ssbench.training.checkpoint import load_trained
    from ssbench.training.device import resolve_device

    device = resolve_device(device_name)
    trained = load_trained(store, target, device)
    if trained.spec.task != "classification":
        raise SpecError(f"analysis needs a classification run; run {target} is a {trained.spec.task} model")
    return trained, device


def analysis_run_fields(spec: Any, trained: Any, device: torch.device) -> dict[str, Any]:
    """The `store.run("analysis", ...)` fields of any analysis spec (seed, recipe, tags) of a trained run."""
    return dict(
        config=spec, seed=spec.seed, parent_id=trained.run.id if trained.run is not None else None,
        rule=trained.spec.rule.name, model=trained.spec.model.name, dataset=trained.spec.data.name,
        task=trained.spec.task, device=str(device), recipe=spec.recipe, tags=spec.tags,
    )


# -- Hessian --------------------------------------------------------------------------------------

@contextmanager
def _phase(progress: Progress, op: Any, name: str, total: int) -> Iterator[Any]:
    task = progress.add_task(name, total=total)
    op.on_product = lambda: progress.advance(task)
    try:
        yield task
    finally:
        op.on_product = None
        progress.update(task, completed=total)


def run_hessian(spec: HessianSpec, store: Any, *, console: Console | None = None, quiet: bool = False) -> int:
    """Trace, top eigenvalues (power iteration and Lanczos), optional SLQ density and 2-D loss
    surface of the run's loss on a fixed example set; returns the analysis run's id."""
    from ssbench.data import load_data

    console = console or SafeConsole(stderr=True)
    trained, device = _load(store, spec.target, spec.device)
    bundle = load_data(trained.spec.data)
    dataset = bundle.train if spec.split == "train" else bundle.test
    indices = select_indices(len(dataset), spec.n_examples, spec.seed)
    x, y = stack_examples(dataset, indices, device)
    model = trained.model
    op = model_hessian(model, batches_of(x, y, spec.batch_size))
    common = {"n": len(indices), "split": spec.split, "params": op.dim}
    rows: list[tuple[str, str]] = []
    t0 = time.perf_counter()

    with store.run("analysis", **analysis_run_fields(spec, trained, device)) as rec:
        loss = op.loss()
        rec.log_evaluation("hessian_loss", loss, split=spec.split, params=common)
        rows.append(("loss", f"{loss:.5g}"))
        with progress_bar(console, quiet) as progress:
            with _phase(progress, op, "trace (Hutchinson)", spec.probes):
                tr = hutchinson_trace(op, spec.probes, seed=spec.seed)
            rec.log_evaluation("hessian_trace", tr.mean, split=spec.split,
                               params={**common, "stderr": tr.stderr, "probes": spec.probes, "method": "hutchinson"})
            rows.append(("trace", f"{tr.mean:.5g} +- {tr.stderr:.2g}"))

            with _phase(progress, op, "top eigenvalue (power)", spec.iters):
                pw = power_iteration(op, spec.iters, seed=spec.seed)
            rec.log_evaluation("hessian_top_eig", pw.value, split=spec.split,
                               params={**common, "method": "power", "iters": pw.iterations, "converged": pw.converged})
            rows.append(("top eigenvalue (power)", f"{pw.value:.5g}" + ("" if pw.converged else " (not converged)")))

            k = max(spec.top_k, 2 if spec.surface else 1)
            with _phase(progress, op, "top eigenvalues (Lanczos)", min(spec.iters, op.dim)):
                top = lanczos_top(op, k, spec.iters, seed=spec.seed)
            rec.log_evaluation("hessian_top_eig", top.values[0], split=spec.split,
                               params={**common, "method": "lanczos", "iters": top.iterations})
            for rank, value in enumerate(top.values, start=1):
                rec.log_evaluation("hessian_eig", value, split=spec.split,
                                   params={**common, "rank": rank, "method": "lanczos", "iters": top.iterations})
            rows.append(("top eigenvalues (Lanczos)", ", ".join(f"{v:.5g}" for v in top.values)))
            summary: dict[str, Any] = {
                "n": len(indices), "indices": indices, "params": op.dim, "loss": loss, "trace": tr.mean,
                "trace_stderr": tr.stderr, "top_eig_power": pw.value, "top_eigs": list(top.values),
            }

            if spec.density:
                total = spec.density_probes * min(spec.iters, op.dim)
                with _phase(progress, op, "density (SLQ)", total):
                    dens = slq_density(op, spec.density_probes, spec.iters, seed=spec.seed)
                grid, values = dens.smoothed(sigma=spec.density_sigma, points=spec.density_grid)
                rec.log_evaluation("hessian_density", dens.mean(), split=spec.split, params={
                    **common, "nodes": list(dens.nodes), "weights": list(dens.weights), "probes": spec.density_probes,
                    "iters": spec.iters, "grid": grid.tolist(), "density": values.tolist(),
                })
                rows.append(("density mean (= trace / params)", f"{dens.mean():.5g}"))
                summary["density_mean"] = dens.mean()

            if spec.surface:
                if len(top.values) < 2:
                    raise SpecError("loss surface needs two eigenvectors; the model has a single parameter")
                alphas = surface_grid(spec.surface_points, spec.surface_radius)
                task = progress.add_task("loss surface", total=len(alphas) ** 2)
                grid_vals = loss_surface(op, top.vectors[0], top.vectors[1], alphas, alphas,
                                         on_point=lambda: progress.advance(task))
                centre = op.loss()
                rec.log_evaluation("loss_surface", centre, split=spec.split, params={
                    **common, "alphas": alphas, "betas": alphas, "grid": grid_vals.tolist(),
                    "eigenvalues": list(top.values[:2]),
                })
                rows.append(("loss surface range", f"{float(grid_vals.min()):.5g} .. {float(grid_vals.max()):.5g}"))

        summary.update(hvps=op.products, seconds=time.perf_counter() - t0)
        rec.set_summary(**summary)
        _print_rows(console, f"hessian of run {spec.target} (analysis run {rec.run_id}; n={len(indices)} "
                             f"{spec.split} examples, {op.dim} parameters, eval mode)", rows)
        return rec.run_id


def _print_rows(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


# -- corruptions ----------------------------------------------------------------------------------

def _predict(model: torch.nn.Module, x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def corruption_list(spec: CorruptionSpec) -> list[str]:
    if spec.corruptions is None:
        return corruption_names()
    names = [CORRUPTIONS.get(n).name for n in spec.corruptions]  # unknown names: one line with the choices
    if len(set(names)) != len(names):
        raise SpecError("a corruption is named twice")
    return names


def run_corruptions(spec: CorruptionSpec, store: Any, *, console: Console | None = None, quiet: bool = False) -> int:
    """Accuracy on the first n of a seeded test permutation under each corruption x severity;
    returns the analysis run's id."""
    from ssbench.data import load_data

    console = console or SafeConsole(stderr=True)
    names = corruption_list(spec)
    trained, device = _load(store, spec.target, spec.device)
    bundle = load_data(trained.spec.data)
    indices = select_indices(len(bundle.test), spec.n_examples, spec.seed)
    x, y = stack_examples(bundle.test, indices, device)
    model = trained.model.eval()
    severities = [s for s in spec.severities if s > 0]
    acc: dict[str, dict[int, float]] = {}

    with store.run("analysis", **analysis_run_fields(spec, trained, device)) as rec:
        clean = float((_predict(model, x, spec.batch_size) == y).float().mean())
        rec.log_evaluation("accuracy", clean, params={"n": len(indices), "clean": True})
        with progress_bar(console, quiet) as progress:
            for name in names:
                task = progress.add_task(name, total=len(severities))
                acc[name] = {}
                for sev in severities:
                    correct = 0
                    for b, start in enumerate(range(0, len(y), spec.batch_size)):
                        xb = x[start : start + spec.batch_size]
                        xc = corrupt(xb, name, sev, seed=spec.seed * 1_000_003 + b)
                        correct += int((_predict(model, xc, spec.batch_size) == y[start : start + spec.batch_size]).sum())
                    a = correct / len(y)
                    acc[name][sev] = a
                    rec.log_evaluation("corruption_accuracy", a,
                                       params={"corruption": name, "severity": sev, "n": len(indices)})
                    progress.advance(task)
                if severities:
                    rec.log_evaluation("corruption_mean_accuracy", _mean(acc[name].values()),
                                       params={"corruption": name, "severities": severities, "n": len(indices)})
        overall = _mean(a for per in acc.values() for a in per.values()) if severities else clean
        rec.log_evaluation("mean_corruption_accuracy", overall,
                           params={"corruptions": names, "severities": severities, "n": len(indices)})
        rec.set_summary(indices=indices, n=len(indices), clean_accuracy=clean, mean_corruption_accuracy=overall,
                        accuracy={k: {str(s): v for s, v in per.items()} for k, per in acc.items()})
        _print_corruptions(console, rec.run_id, spec.target, clean, acc, severities, overall)
        return rec.run_id


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan


def _print_corruptions(console: Console, run_id: int, target: str, clean: float, acc: dict[str, dict[int, float]],
                       severities: list[int], overall: float) -> None:
    table = Table(title=f"corruption accuracy of run {target} (analysis run {run_id}; clean {clean:.3f})")
    table.add_column("corruption")
    for s in severities:
        table.add_column(str(s), justify="right")
    table.add_column("mean", justify="right")
    for name, per in acc.items():
        table.add_row(name, *[f"{per[s]:.3f}" for s in severities], f"[bold]{_mean(per.values()):.3f}[/]")
    table.add_row("[bold]all[/]", *[f"{_mean(per[s] for per in acc.values()):.3f}" for s in severities], f"[bold]{overall:.3f}[/]")
    console.print(table)
