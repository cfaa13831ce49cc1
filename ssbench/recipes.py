"""Recipes: a YAML grid of pretrain -> finetune(rules) -> attack -> report, validated and resumable.

A recipe is parsed into a `Recipe` (pydantic, unknown keys are errors), expanded into concrete
`TrainSpec` / `AttackSpec` jobs, and run in order. A job whose exact config already finished in the
store is skipped (resume); a failed one is simply run again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from ssbench.errors import SpecError
from ssbench.specs import AttackSpec, DataSpec, EpsPreset, GradientMode, HashSpec, ModelSpec, OptimSpec, RuleSpec, Spec, TrainSpec


class TrainStage(Spec):
    """Training options shared by the pretrain and finetune stages (data/model default to the recipe's)."""

    data: DataSpec | None = None
    optim: OptimSpec = OptimSpec()
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=128, ge=1)
    task: Literal["classification", "hashing"] = "classification"
    hashing: HashSpec | None = None
    select: Literal["best", "last"] = "best"
    deterministic: bool = False
    track_grad_alignment: bool = False


class FinetuneStage(TrainStage):
    rules: tuple[RuleSpec, ...] = Field(min_length=1)
    from_scratch: bool = Field(default=False, description="train each rule from scratch (no pretrain stage)")
    reset_head: bool | None = None

    @field_validator("rules", mode="before")
    @classmethod
    def _names_to_specs(cls, v: Any) -> Any:
        return [{"name": r} if isinstance(r, str) else r for r in v] if isinstance(v, list | tuple) else v


class AttackStage(Spec):
    suite: Literal["whitebox", "blackbox", "hashing", "all"] = "whitebox"
    attacks: tuple[str, ...] | None = None
    modes: tuple[GradientMode, ...] = ("feedback", "exact")
    eps: tuple[float, ...] | EpsPreset = "paper"
    n_examples: int = Field(default=500, ge=1)
    batch_size: int = Field(default=256, ge=1)
    steps: int | None = None


class ReportStage(Spec):
    formats: tuple[Literal["terminal", "markdown", "latex", "csv"], ...] = ("terminal",)
    out: Path | None = None
    plots: bool = True


class Recipe(Spec):
    name: str
    description: str = ""
    requires: tuple[Literal["gpu", "network"], ...] = ()
    seeds: tuple[int, ...] = (0,)
    data: DataSpec = DataSpec()
    models: tuple[ModelSpec, ...] = (ModelSpec(),)
    train_limits: tuple[int | None, ...] = (None,)
    device: str = "auto"
    pretrain: TrainStage | None = None
    finetune: FinetuneStage
    attack: AttackStage | None = None
    report: ReportStage | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _one_model(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict | str) else v


@dataclass(frozen=True)
class Overrides:
    """Command-line changes for quick runs; they change the configs, so they make separate runs."""

    epochs: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    n_examples: int | None = None
    seeds: tuple[int, ...] | None = None
    device: str | None = None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"recipe {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"recipe {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict):
        raise SpecError(f"recipe {path}: expected a mapping at the top level")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"recipe {path}: {where}: {first['msg']}") from err


def _stage_spec(stage: TrainStage, recipe: Recipe, ov: Overrides, **fields: Any) -> TrainSpec:
    data = stage.data or recipe.data
    updates = {k: v for k, v in {"train_limit": ov.train_limit, "test_limit": ov.test_limit}.items() if v is not None}
    if updates:
        data = data.model_copy(update=updates)
    return TrainSpec(
        data=data, optim=stage.optim, epochs=ov.epochs or stage.epochs, batch_size=stage.batch_size, task=stage.task,
        hashing=stage.hashing, select=stage.select, deterministic=stage.deterministic,
        track_grad_alignment=stage.track_grad_alignment, device=ov.device or recipe.device, recipe=recipe.name,
        **fields,
    )


@dataclass
class RecipeResult:
    trained: list[int]
    attacks: list[int]
    skipped: int


def run_recipe(
    recipe: Recipe,
    store: Any,
    ov: Overrides = Overrides(),
    *,
    log: Callable[[str], None] = print,
    train: Callable[..., int] | None = None,
    attack: Callable[..., int] | None = None,
) -> RecipeResult:
    """Run every job of the grid in order, skipping those already finished in `store`."""
    from ssbench.store import config_hash

    if train is None:
        from ssbench.training import run_training as train
    if attack is None and recipe.attack is not None:
        from ssbench.attacks import run_attack as attack

    trained, attacks, skipped = [], [], 0

    def once(kind: str, spec: Any, runner: Callable[..., int]) -> int:
        nonlocal skipped
        done = store.find_finished(kind, config_hash(spec))
        if done is not None:
            skipped += 1
            log(f"skip {kind} (finished as run {done.id})")
            return int(done.id)
        return runner(spec, store)

    seeds = ov.seeds or recipe.seeds
    for seed in seeds:
        for model in recipe.models:
            for limit in recipe.train_limits:
                rv = Overrides(**{**ov.__dict__, "train_limit": ov.train_limit or limit})
                source = None
                if recipe.pretrain is not None and not recipe.finetune.from_scratch:
                    pre = _stage_spec(recipe.pretrain, recipe, rv, kind="pretrain", model=model, seed=seed)
                    source = once("pretrain", pre, train)
                    trained.append(source)
                group = []
                for rule in recipe.finetune.rules:
                    kind = "finetune" if source is not None or model.pretrained else "train"
                    spec = _stage_spec(
                        recipe.finetune, recipe, rv, kind=kind, model=model, seed=seed, rule=rule,
                        source=None if source is None else str(source), reset_head=recipe.finetune.reset_head,
                    )
                    group.append(once(kind, spec, train))
                trained.extend(group)
                # attacks after the whole group, so transfer mode finds the BP sibling
                if recipe.attack is not None and attack is not None:
                    a = recipe.attack
                    for run_id in group:
                        aspec = AttackSpec(
                            target=str(run_id), suite=a.suite, attacks=a.attacks, modes=a.modes, eps=a.eps,
                            n_examples=ov.n_examples or a.n_examples, batch_size=a.batch_size, steps=a.steps,
                            seed=seed, device=ov.device or recipe.device, recipe=recipe.name,
                        )
                        attacks.append(once("attack", aspec, attack))
    return RecipeResult(trained, attacks, skipped)
