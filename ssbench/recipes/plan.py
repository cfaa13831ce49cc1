"""A recipe is a plan: the job graph that every executor consumes.

    plan(recipe, overrides) -> Plan(jobs)      pretrain -> finetunes -> attacks

A job holds its typed spec. Where the spec names another job's run (a fine-tune's `source`, an
attack's `target`), the spec carries the placeholder `PENDING` and the job names that job in
`source`; `Job.resolve` fills in the run id once it exists. The store keys a job by the
*resolved* spec's config hash (the same hash as its run's), so plan keys only order and name jobs
inside one plan: they are hashes of the unresolved spec plus the key of the job it needs.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ssbench.recipes.schema import Overrides, Recipe, Resources, TrainStage
from ssbench.specs import AttackSpec, TrainSpec

PENDING = "@pending"  # stands for the run id of the job named in Job.source

JobKind = Literal["pretrain", "finetune", "train", "attack"]


@dataclass(frozen=True)
class Job:
    key: str
    kind: JobKind
    spec: TrainSpec | AttackSpec
    label: str  # "finetune frsf lenet seed 0": log lines, --dry-run, the claim row
    source: str | None = None  # key of the job whose run id the spec needs
    after: tuple[str, ...] = ()  # jobs that must finish first though the spec does not name them
    resources: Resources = field(default_factory=Resources)

    @property
    def deps(self) -> tuple[str, ...]:
        return ((self.source,) if self.source else ()) + self.after

    def resolve(self, run_ids: Mapping[str, int]) -> TrainSpec | AttackSpec:
        """The spec with the needed job's run id in place of `PENDING`."""
        if self.source is None:
            return self.spec
        field_name = "target" if self.kind == "attack" else "source"
        return self.spec.model_copy(update={field_name: str(run_ids[self.source])})


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    jobs: tuple[Job, ...]  # topological order: every job after the jobs it depends on

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def job(self, key: str) -> Job:
        return next(j for j in self.jobs if j.key == key)

    def number(self, key: str) -> int:
        """1-based position: how --dry-run and the log lines name a job."""
        return next(i for i, j in enumerate(self.jobs, 1) if j.key == key)


def _key(kind: str, spec: Any, source: str | None) -> str:
    from ssbench.store import config_hash

    return config_hash({"kind": kind, "spec": spec.model_dump(mode="json"), "source": source})


def describe(kind: str, spec: TrainSpec | AttackSpec, target_label: str | None = None) -> str:
    if isinstance(spec, AttackSpec):
        return f"attack {spec.suite} of {target_label or 'run ' + spec.target}"
    rule = f" {spec.rule.name}" if kind != "pretrain" else ""
    theta = f" theta {spec.rule.theta:g}" if spec.rule.theta is not None else ""
    limit = f" train_limit {spec.data.train_limit}" if spec.data.train_limit is not None else ""
    return f"{kind}{rule}{theta} {spec.model.name} seed {spec.seed}{limit}"


def _stage_spec(stage: TrainStage, recipe: Recipe, ov: Overrides, **fields: Any) -> TrainSpec:
    data = stage.data or recipe.data
    updates = {k: v for k, v in {"train_limit": ov.train_limit, "test_limit": ov.test_limit}.items() if v is not None}
    if updates:
        data = data.model_copy(update=updates)
    return TrainSpec(
        data=data, optim=stage.optim, epochs=ov.epochs or stage.epochs, batch_size=stage.batch_size, task=stage.task,
        hashing=stage.hashing, select=stage.select, deterministic=stage.deterministic,
        track_grad_alignment=stage.track_grad_alignment, keep_epochs=stage.keep_epochs, device=ov.device or recipe.device, recipe=recipe.name,
        tags=recipe.tags, **fields,
    )


def _attack_spec(recipe: Recipe, ov: Overrides, seed: int) -> AttackSpec:
    a = recipe.attack
    assert a is not None
    return AttackSpec(
        target=PENDING, suite=a.suite, attacks=a.attacks, modes=a.modes, eps=a.eps,
        n_examples=ov.n_examples or a.n_examples, batch_size=a.batch_size, steps=a.steps, loss=a.loss,
        transfer_optional=a.transfer_optional, seed=seed, device=ov.device or recipe.device, recipe=recipe.name,
        tags=recipe.tags,
    )


def plan(recipe: Recipe, ov: Overrides = Overrides(), resources: Resources | None = None) -> Plan:
    """The recipe's jobs over seeds x models x train limits, each after the jobs it needs.

    Attacks wait for the whole fine-tune group's BP sibling when transfer mode needs it."""
    jobs: dict[str, Job] = {}
    res = resources or recipe.resources

    def add(kind: JobKind, spec: TrainSpec | AttackSpec, label: str, source: str | None = None,
            after: tuple[str, ...] = ()) -> str:
        key = _key(kind, spec, source)
        jobs.setdefault(key, Job(key, kind, spec, label, source, after, res))
        return key

    for seed in ov.seeds or recipe.seeds:
        for model in recipe.models:
            for limit in recipe.train_limits:
                rv = Overrides(**{**ov.__dict__, "train_limit": ov.train_limit or limit})
                pre = None
                if recipe.pretrain is not None and not recipe.finetune.from_scratch:
                    spec = _stage_spec(recipe.pretrain, recipe, rv, kind="pretrain", model=model, seed=seed)
                    pre = add("pretrain", spec, describe("pretrain", spec))
                group: list[tuple[str, str, str]] = []  # (key, rule, label)
                for entry in recipe.finetune.rules:
                    kind: JobKind = "finetune" if pre is not None or model.pretrained else "train"
                    spec = _stage_spec(
                        recipe.finetune.for_rule(entry), recipe, rv, kind=kind, model=model, seed=seed, rule=entry.rule,
                        source=PENDING if pre is not None else None, reset_head=recipe.finetune.reset_head,
                    )
                    label = describe(kind, spec)
                    group.append((add(kind, spec, label, source=pre), entry.name, label))
                if recipe.attack is None:
                    continue
                bp = [k for k, name, _ in group if name == "bp"]
                needs_sibling = "transfer" in recipe.attack.modes
                for key, name, label in group:
                    after = tuple(bp) if needs_sibling and name != "bp" else ()
                    add("attack", _attack_spec(recipe, rv, seed), f"attack {recipe.attack.suite} of {label}",
                        source=key, after=after)
    return Plan(recipe, tuple(jobs.values()))
