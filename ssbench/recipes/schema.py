"""The recipe file: a typed grid of pretrain -> finetune(rules) -> attack -> report.

`load_recipe` parses YAML into a `Recipe` (pydantic, unknown keys are errors); `plan` (plan.py)
turns it into the job graph executors run. `tags: [...]` label every run the recipe creates (tags
are part of each run's configuration, like the recipe name).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ssbench.errors import SpecError
from ssbench.specs import (
    AttackOptions,
    DataSpec,
    ModelSpec,
    RuleSpec,
    Spec,
    TrainOptions,
    first_error,
    parse_eps_value,
)


class TrainStage(TrainOptions):
    """The pretrain or finetune stage: the training options of its jobs (`TrainOptions`) and the data
    they read (unset: the recipe's)."""

    data: DataSpec | None = None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, mappings merged key by key (a rule's `optim: {lr: 1e-4}` keeps the
    stage's momentum and schedule)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RuleEntry(Spec):
    """One rule of the fine-tune stage and the training-stage fields it changes for itself
    (`{name: dfa, optim: {lr: 1.0e-4}}`): they reach that rule's jobs and their config hashes."""

    rule: RuleSpec
    overrides: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.rule.name


class FinetuneStage(TrainStage):
    rules: tuple[RuleEntry, ...] = Field(min_length=1)
    from_scratch: bool = Field(default=False, description="train each rule from scratch (no pretrain stage)")
    reset_head: bool | None = None

    @field_validator("rules", mode="before")
    @classmethod
    def _split_entries(cls, v: Any) -> Any:
        """`bp` or `{name: ifa, theta: 30, epochs: 5}` -> rule fields and stage overrides."""
        if not isinstance(v, list | tuple):
            return v
        rule_keys, stage_keys = set(RuleSpec.model_fields), set(TrainStage.model_fields)
        out = []
        for i, entry in enumerate(v):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or "rule" in entry:
                out.append(entry)
                continue
            unknown = sorted(set(entry) - rule_keys - stage_keys)
            if unknown:
                raise ValueError(f"rule entry {i}: unknown key {unknown[0]!r} (rule fields: {', '.join(sorted(rule_keys))}; "
                                 f"training-stage fields: {', '.join(sorted(stage_keys))})")
            out.append({"rule": {k: x for k, x in entry.items() if k in rule_keys},
                        "overrides": {k: x for k, x in entry.items() if k in stage_keys}})
        return out

    @model_validator(mode="after")
    def _overrides_validate(self) -> FinetuneStage:
        for entry in self.rules:
            try:
                self.for_rule(entry)
            except ValidationError as err:
                raise ValueError(f"rule {entry.name}: {first_error(err)}") from None
        return self

    def for_rule(self, entry: RuleEntry) -> TrainStage:
        """The training stage as this rule's jobs run it."""
        if not entry.overrides:
            return self
        base = self.model_dump(include=set(TrainStage.model_fields))
        return TrainStage.model_validate(_merge(base, entry.overrides))


class AttackStage(AttackOptions):
    """One attack job per trained model, with these options (`AttackOptions`; unset modes / eps are
    the suite's)."""


class ReportStage(Spec):
    formats: tuple[Literal["terminal", "markdown", "latex", "csv", "json", "html"], ...] = ("terminal",)
    out: Path | None = None
    plots: bool = True
    leaderboard_eps: float | None = Field(default=None, ge=0, description="the one budget the leaderboard reports at")

    @field_validator("leaderboard_eps", mode="before")
    @classmethod
    def _eps_fraction(cls, v: object) -> object:
        return parse_eps_value(v) if v is not None else v


class Resources(Spec):
    """What each job asks a parallel executor for. Not part of any job's configuration: the same
    job gives the same numbers wherever it runs."""

    cpus: float = Field(default=1, gt=0, description="CPU cores per job; the job's torch threads follow it")
    gpus: float | None = Field(
        default=None, ge=0,
        description="GPUs per job; default 1 when the job runs on CUDA, else 0; a fraction shares a GPU")


class Recipe(Spec):
    name: str
    description: str = ""
    requires: tuple[Literal["gpu", "network"], ...] = ()
    tags: tuple[str, ...] = Field(default=(), description="labels stored on every run (ssbench report --tag)")
    # an empty axis would plan no job at all: refused like any other value that cannot run
    seeds: tuple[int, ...] = Field(default=(0,), min_length=1)
    data: DataSpec = DataSpec()
    models: tuple[ModelSpec, ...] = Field(default=(ModelSpec(),), min_length=1)
    train_limits: tuple[Annotated[int, Field(ge=1)] | None, ...] = Field(default=(None,), min_length=1)
    device: str = "auto"
    pretrain: TrainStage | None = None
    finetune: FinetuneStage
    # one stage or a list: each trained model gets one attack job per stage
    attack: tuple[AttackStage, ...] = ()
    report: ReportStage | None = None
    resources: Resources = Resources()

    def data_specs(self) -> list[DataSpec]:
        """Every distinct data set the recipe's training stages read (a stage's own, else the recipe's)."""
        stages = [self.data] + [(self.finetune.for_rule(e).data or self.data) for e in self.finetune.rules]
        if self.pretrain is not None:
            stages.append(self.pretrain.data or self.data)
        return list(dict.fromkeys(stages))

    @field_validator("models", mode="before")
    @classmethod
    def _one_model(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict | str) else v

    @field_validator("attack", mode="before")
    @classmethod
    def _one_attack(cls, v: Any) -> Any:
        return () if v is None else [v] if isinstance(v, dict | AttackStage) else v


@dataclass(frozen=True)
class Overrides:
    """Command-line changes for quick runs; they change the configs, so they make separate runs."""

    epochs: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    n_examples: int | None = None
    seeds: tuple[int, ...] | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        # None is "unset"; every other value, 0 included, is meant: one no job can hold is refused
        # here, naming the option, rather than quietly replaced by the recipe's value
        for option, value in (("--epochs", self.epochs), ("--train-limit", self.train_limit),
                              ("--test-limit", self.test_limit), ("--n", self.n_examples)):
            if value is not None and value < 1:
                raise SpecError(f"{option} {value}: must be 1 or more (leave it out to use the recipe's)")
        if self.seeds is not None and not self.seeds:
            raise SpecError("--seeds names no seed; give at least one, e.g. 0,1,2 (or leave it out to use the recipe's)")
        if self.device is not None and not self.device.strip():
            raise SpecError("--device is empty; name one (auto, cpu, cuda, cuda:N) or leave it out to use the recipe's")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"recipe {path} is a folder; name a recipe file, e.g. recipes/quickstart.yaml")
    if not path.is_file():
        raise SpecError(f"recipe {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"recipe {path} is not a text file (UTF-8 YAML expected)") from None
    try:
        # libyaml where installed: the same safe loader, several times faster on a long seeds list
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as err:
        raise SpecError(f"recipe {path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict):
        raise SpecError(f"recipe {path}: expected a mapping at the top level")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"recipe {path}: {first_error(err)}") from err
