"""The trainability map (IFA paper, Fig. 3a): final training accuracy over a grid of forward (W) and
backward (B) initial variances.

Each cell is an ordinary `train` job (`TrainSpec(kind="train")` with `RuleSpec(init="gaussian",
weight_var=w, feedback_var=b)`), run through `run_task` like any job of a recipe: its claim makes it
run once, and a cell already finished in the store (same job hash) is reused, never rerun. The map
itself is one `analysis` run holding, per cell, the evaluation `trainability`: the cell run's
training accuracy of its last epoch as the training job stored it (the mean over that epoch's
batches, in training mode, as the network learnt: no extra pass over the data). A cell whose loss
became non-finite (the job's FloatingPointError) is untrainable: it scores chance accuracy
(1 / classes) with params `diverged: "non-finite loss"`, and is not retried when the map reruns
(training is seeded: it would diverge again).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator
from rich.console import Console
from rich.table import Table

from ssbench.errors import SsbenchError
from ssbench.printing import SafeConsole
from ssbench.specs import NO_RANDOM_FEEDBACK, DataSpec, ModelSpec, OptimSpec, RuleName, RuleSpec, Spec, TrainSpec

METRIC = "trainability"
LECUN, HE = 1.0, 2.0  # variance x fan_in of LeCun's and He's initialisations
NONFINITE = "non-finite loss"  # `diverged` of a cell whose training raised FloatingPointError
GREW = "loss grew"  # `diverged` of a finished cell whose loss rose > DIVERGED_FACTOR x its first batch's


class TrainabilitySpec(Spec):
    """A grid of from-scratch training runs of one rule over initial (weight, feedback) variances."""

    rule: RuleName = "fa"
    model: ModelSpec = ModelSpec(name="mlp", hidden=(256, 256, 256))
    data: DataSpec = DataSpec()
    weight_vars: tuple[float, ...] = Field(default=(0.5, 1.0, 2.0, 4.0), min_length=1,
                                           description="W ~ N(0, v / fan_in) per column (1 = LeCun, 2 = He)")
    feedback_vars: tuple[float, ...] = Field(default=(0.5, 1.0, 2.0, 4.0), min_length=1,
                                             description="random feedback ~ N(0, v / fan_in) per row")
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=128, ge=1)
    optim: OptimSpec = OptimSpec()
    seed: int = 0
    device: str = "auto"
    recipe: str | None = None
    tags: tuple[str, ...] = ()

    @field_validator("weight_vars", "feedback_vars")
    @classmethod
    def _variances(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(x > 0 and math.isfinite(x) for x in v):
            raise ValueError(f"variances must be finite and > 0, got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"variances repeat: {list(v)}")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _rule_has_random_feedback(self) -> TrainabilitySpec:
        if self.rule in NO_RANDOM_FEEDBACK:
            raise ValueError(f"rule {self.rule!r} has no random feedback (its B follows W): the map's backward "
                             "axis needs fa, dfa, usf, frsf or brsf")
        return self

    def cell(self, weight_var: float, feedback_var: float) -> TrainSpec:
        """The ordinary training job of one cell (select last: the map is about training, no val choice)."""
        return TrainSpec(
            kind="train", data=self.data, model=self.model, optim=self.optim, epochs=self.epochs,
            batch_size=self.batch_size, seed=self.seed, device=self.device, select="last",
            rule=RuleSpec(name=self.rule, init="gaussian", weight_var=weight_var, feedback_var=feedback_var),
            recipe=self.recipe, tags=self.tags,
        )


@dataclass(frozen=True)
class Cell:
    weight_var: float
    feedback_var: float
    run_id: int
    accuracy: float  # final-epoch training accuracy; chance for a non-finite loss
    diverged: str | None  # None, GREW or NONFINITE
    how: str  # ran, reused, reused (diverged)


def final_train_accuracy(store: Any, run_id: int) -> float:
    """The `train` accuracy a training run logged for its last epoch."""
    m = store.frame_metrics(id=run_id)
    m = m[(m["split"] == "train") & (m["name"] == "accuracy")] if not m.empty else m
    if m.empty:
        raise SsbenchError(f"run {run_id} logged no training accuracy (a classification run is needed)")
    return float(m.loc[m["epoch"].idxmax(), "value"])


def _diverged_run(store: Any, config_hash: str) -> int | None:
    """The newest `train` run of this job that failed on a non-finite loss, if any."""
    from sqlalchemy import select

    from ssbench.store.models import Run

    stmt = (select(Run.id).where(Run.kind == "train", Run.config_hash == config_hash, Run.status == "failed",
                                 Run.error.like("FloatingPointError%")).order_by(Run.id.desc()).limit(1))
    with store.session() as s:
        return s.scalars(stmt).first()


def run_cell(spec: TrainabilitySpec, weight_var: float, feedback_var: float, store: Any, chance: float) -> Cell:
    """One cell through the executors' `run_task` (claim, run, record), or its earlier result."""
    from ssbench.executors.task import Task, run_task
    from ssbench.recipes.schema import Resources

    train = spec.cell(weight_var, feedback_var)
    key = store.job_hash(train)
    if store.find_finished("train", key) is None and (failed := _diverged_run(store, key)) is not None:
        return Cell(weight_var, feedback_var, failed, chance, NONFINITE, "reused (diverged)")
    label = f"trainability {spec.rule} weight_var={weight_var:g} feedback_var={feedback_var:g}"
    out = run_task(Task(label, "train", train, key, label, spec.recipe, Resources()), store, quiet=True)
    if out.status == "failed" and (out.error or "").startswith("FloatingPointError"):
        return Cell(weight_var, feedback_var, int(_diverged_run(store, key) or -1), chance, NONFINITE, "ran")
    if not out.ok or out.run_id is None:
        why = out.error if out.status == "failed" else f"a live worker ({out.where}) is running it; rerun when it ends"
        raise SsbenchError(f"{label}: {out.status}: {why}")
    diverged = GREW if store.get_run(out.run_id).summary.get("diverged") else None
    how = "ran" if out.status == "finished" else "reused"
    return Cell(weight_var, feedback_var, out.run_id, final_train_accuracy(store, out.run_id), diverged, how)


def run_trainability(spec: TrainabilitySpec, store: Any, *, console: Console | None = None, quiet: bool = False) -> int:
    """Every cell (one line each), then one `analysis` run with an evaluation per cell; prints the map
    (rows: feedback variance, columns: weight variance) and returns the analysis run's id."""
    from ssbench.data import load_data
    from ssbench.training.device import resolve_device

    console = console or SafeConsole(stderr=True)
    chance = 1.0 / load_data(spec.data).num_classes  # also: a missing data set fails before any cell runs
    grid = [(w, b) for b in spec.feedback_vars for w in spec.weight_vars]
    cells: list[Cell] = []
    for i, (w, b) in enumerate(grid, start=1):
        c = run_cell(spec, w, b, store, chance)
        cells.append(c)
        if not quiet:
            note = f" ({c.diverged})" if c.diverged else ""
            console.print(f"cell {i}/{len(grid)}: weight_var {w:g}, feedback_var {b:g}: {c.how} run {c.run_id}, "
                          f"final train accuracy {c.accuracy:.3f}{note}", highlight=False)
    with store.run(
        "analysis", config=spec, seed=spec.seed, recipe=spec.recipe, tags=spec.tags, rule=spec.rule,
        model=spec.model.name, dataset=spec.data.name, task="classification", device=str(resolve_device(spec.device)),
    ) as rec:
        for c in cells:
            rec.log_evaluation(METRIC, c.accuracy, split="train", params={
                "weight_var": c.weight_var, "feedback_var": c.feedback_var, "cell_run": c.run_id,
                "diverged": c.diverged, "epochs": spec.epochs,
            })
        rec.set_summary(cells={f"{c.weight_var:g},{c.feedback_var:g}": c.run_id for c in cells}, chance=chance,
                        untrainable=sum(c.diverged == NONFINITE for c in cells))
        console.print(map_table(spec, cells, rec.run_id))
        return rec.run_id


def _mark(w: float, b: float) -> str:
    return " (LeCun)" if w == b == LECUN else " (He)" if w == b == HE else ""


def map_table(spec: TrainabilitySpec, cells: list[Cell], run_id: int) -> Table:
    """The map as printed: rows feedback variance, columns weight variance; x = non-finite loss."""
    by = {(c.weight_var, c.feedback_var): c for c in cells}
    table = Table(title=f"trainability of {spec.rule} (analysis run {run_id}): final training accuracy, "
                        f"{spec.epochs} epoch(s)",
                  caption="W ~ N(0, weight_var / fan_in), B ~ N(0, feedback_var / fan_in); "
                          "x = non-finite loss (chance accuracy), ! = loss grew > 100x")
    table.add_column("feedback_var \\ weight_var")
    for w in spec.weight_vars:
        table.add_column(f"{w:g}", justify="right")
    for b in spec.feedback_vars:
        row = []
        for w in spec.weight_vars:
            c = by[(w, b)]
            flag = " x" if c.diverged == NONFINITE else " !" if c.diverged == GREW else ""
            row.append(f"{c.accuracy:.3f}{flag}{_mark(w, b)}")
        table.add_row(f"{b:g}", *row)
    return table
