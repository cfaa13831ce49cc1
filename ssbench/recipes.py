"""Recipes: a YAML grid of pretrain -> finetune(rules) -> attack -> report, validated and resumable.

A recipe is parsed into a `Recipe` (pydantic, unknown keys are errors), expanded into concrete
`TrainSpec` / `AttackSpec` jobs, and run in order. A job whose exact config already finished in the
store is skipped (resume). A job that fails is reported and the grid goes on (jobs that need its
result are skipped); rerunning the recipe retries exactly the failed and skipped ones.

`requires: [gpu, network]` is checked before any job runs; `tags: [...]` label every run the
recipe creates (tags are part of each run's configuration, like the recipe name).
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from ssbench.errors import SpecError
from ssbench.specs import (
    AttackSpec,
    DataSpec,
    EpsPreset,
    GradientMode,
    HashSpec,
    ModelSpec,
    OptimSpec,
    RuleSpec,
    Spec,
    TrainSpec,
    coerce_eps,
)


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
    loss: Literal["ce", "margin"] = Field(default="ce", description="fgsm/pgd loss: ce (the papers') or margin (non-saturating)")
    transfer_optional: bool = Field(default=False, description="skip transfer mode with a note when no BP sibling exists")

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_fractions(cls, v: object) -> object:
        return coerce_eps(v)


class ReportStage(Spec):
    formats: tuple[Literal["terminal", "markdown", "latex", "csv"], ...] = ("terminal",)
    out: Path | None = None
    plots: bool = True


class Recipe(Spec):
    name: str
    description: str = ""
    requires: tuple[Literal["gpu", "network"], ...] = ()
    tags: tuple[str, ...] = Field(default=(), description="labels stored on every run (ssbench report --tag)")
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
        tags=recipe.tags, **fields,
    )


# hosts the network recipes need (torchvision weights, CIFAR); reaching one is taken as "online"
PROBE_HOSTS = (("download.pytorch.org", 443), ("www.cs.toronto.edu", 443))


def network_available(hosts: tuple[tuple[str, int], ...] = PROBE_HOSTS, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to any probe host opens within ``timeout`` seconds (DNS included:
    the probe runs in a daemon thread, since name resolution itself has no timeout)."""
    ok = threading.Event()

    def probe() -> None:
        for host in hosts:
            try:
                socket.create_connection(host, timeout=timeout).close()
                ok.set()
                return
            except OSError:
                continue

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout * len(hosts) + 1.0)
    return ok.is_set()


def missing_requirements(recipe: Recipe) -> list[str]:
    """The recipe's `requires` this machine lacks, each as a short reason."""
    import torch

    out = []
    if "gpu" in recipe.requires and not torch.cuda.is_available():
        out.append("a GPU (torch sees no CUDA device)")
    if "network" in recipe.requires and not network_available():
        out.append("a network (could not reach " + ", ".join(h for h, _ in PROBE_HOSTS) + ")")
    return out


def check_requirements(recipe: Recipe) -> None:
    missing = missing_requirements(recipe)
    if missing:
        raise SpecError(f"recipe {recipe.name} requires {' and '.join(missing)}; run it elsewhere or pass --force")


@dataclass
class Failure:
    kind: str
    what: str  # e.g. "finetune fa lenet seed 0"
    error: str  # one line; "skipped: ..." when a job it needs failed


@dataclass
class RecipeResult:
    trained: list[int]
    attacks: list[int]
    skipped: int
    failed: list[Failure] = field(default_factory=list)


def _describe(kind: str, spec: Any) -> str:
    if kind == "attack":
        return f"attack {spec.suite} on run {spec.target} seed {spec.seed}"
    rule = f" {spec.rule.name}" if kind != "pretrain" else ""
    theta = f" theta {spec.rule.theta:g}" if spec.rule.theta is not None else ""
    return f"{kind}{rule}{theta} {spec.model.name} seed {spec.seed}" + (
        f" train_limit {spec.data.train_limit}" if spec.data.train_limit is not None else "")


def run_recipe(
    recipe: Recipe,
    store: Any,
    ov: Overrides = Overrides(),
    *,
    log: Callable[[str], None] = print,
    train: Callable[..., int] | None = None,
    attack: Callable[..., int] | None = None,
    force: bool = False,
) -> RecipeResult:
    """Run every job of the grid in order, skipping those already finished in `store`.

    A failing job (any Exception; KeyboardInterrupt still stops the grid) is logged and listed in
    `RecipeResult.failed`; jobs that need its run (the fine-tunes of a failed pretrain, the attack
    of a failed fine-tune) are listed as skipped failures. `force` skips the `requires` check.
    """
    from ssbench.store import config_hash
    from ssbench.store.store import error_line

    if not force:
        check_requirements(recipe)
    if train is None:
        from ssbench.training import run_training as train
    if attack is None and recipe.attack is not None:
        from ssbench.attacks import run_attack as attack

    trained, attacks, skipped = [], [], 0
    failed: list[Failure] = []

    def once(kind: str, spec: Any, runner: Callable[..., int]) -> int | None:
        nonlocal skipped
        done = store.find_finished(kind, config_hash(spec))
        if done is not None:
            skipped += 1
            log(f"skip {kind} (finished as run {done.id})")
            return int(done.id)
        try:
            return runner(spec, store)
        except Exception as err:  # noqa: BLE001  (the store marked the run failed; the grid goes on)
            what = _describe(kind, spec)
            failed.append(Failure(kind, what, error_line(err)))
            log(f"FAILED {what}: {failed[-1].error}")
            return None

    def blocked(kind: str, what: str, because: str) -> None:
        failed.append(Failure(kind, what, f"skipped: {because}"))
        log(f"skip {what}: {because}")

    seeds = ov.seeds or recipe.seeds
    for seed in seeds:
        for model in recipe.models:
            for limit in recipe.train_limits:
                rv = Overrides(**{**ov.__dict__, "train_limit": ov.train_limit or limit})
                source = None
                if recipe.pretrain is not None and not recipe.finetune.from_scratch:
                    pre = _stage_spec(recipe.pretrain, recipe, rv, kind="pretrain", model=model, seed=seed)
                    source = once("pretrain", pre, train)
                    if source is None:
                        for rule in recipe.finetune.rules:
                            blocked("finetune", f"finetune {rule.name} {model.name} seed {seed}", "its pretrain failed")
                        continue
                    trained.append(source)
                group = []
                for rule in recipe.finetune.rules:
                    kind = "finetune" if source is not None or model.pretrained else "train"
                    spec = _stage_spec(
                        recipe.finetune, recipe, rv, kind=kind, model=model, seed=seed, rule=rule,
                        source=None if source is None else str(source), reset_head=recipe.finetune.reset_head,
                    )
                    run_id = once(kind, spec, train)
                    if run_id is not None:
                        group.append(run_id)
                    elif recipe.attack is not None and attack is not None:
                        blocked("attack", f"attack {recipe.attack.suite} of {_describe(kind, spec)}", "its training failed")
                trained.extend(group)
                # attacks after the whole group, so transfer mode finds the BP sibling
                if recipe.attack is not None and attack is not None:
                    a = recipe.attack
                    for run_id in group:
                        aspec = AttackSpec(
                            target=str(run_id), suite=a.suite, attacks=a.attacks, modes=a.modes, eps=a.eps,
                            n_examples=ov.n_examples or a.n_examples, batch_size=a.batch_size, steps=a.steps,
                            loss=a.loss, transfer_optional=a.transfer_optional, seed=seed, device=ov.device or recipe.device, recipe=recipe.name, tags=recipe.tags,
                        )
                        done = once("attack", aspec, attack)
                        if done is not None:
                            attacks.append(done)
    return RecipeResult(trained, attacks, skipped, failed)
