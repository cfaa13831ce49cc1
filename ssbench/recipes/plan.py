"""A recipe is a plan: the job graph that every executor consumes.

    plan(recipe, overrides) -> Plan(jobs)      pretrain -> finetunes -> attacks

A job holds its typed spec. Where the spec names another job's run (a fine-tune's `source`, an
attack's `target`), the spec carries the placeholder `PENDING` and the job names that job in
`source`; `Job.resolve` fills in the run id once it exists. The store keys a job by the
*resolved* spec's config hash (the same hash as its run's), so plan keys only order and name jobs
inside one plan: they are hashes of the unresolved spec plus the key of the job it needs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ssbench.errors import SpecError
from ssbench.recipes.schema import AttackStage, Overrides, Recipe, Resources, TrainStage
from ssbench.specs import AttackOptions, AttackSpec, ModelSpec, Spec, TrainOptions, TrainSpec

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
        return self.spec.replace(**{field_name: str(run_ids[self.source])})


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


def _options(stage: Spec, group: type[Spec]) -> dict[str, Any]:
    """The stage's value of every field of `group`, the options its jobs' specs share with it."""
    return {name: getattr(stage, name) for name in group.model_fields}


def _stage_spec(stage: TrainStage, recipe: Recipe, ov: Overrides, **fields: Any) -> TrainSpec:
    data = stage.data or recipe.data
    updates = {k: v for k, v in {"train_limit": ov.train_limit, "test_limit": ov.test_limit}.items() if v is not None}
    if updates:
        data = data.replace(**updates)
    return TrainSpec(**{
        **_options(stage, TrainOptions), "epochs": _given(ov.epochs, stage.epochs), "data": data,
        "device": _given(ov.device, recipe.device), "recipe": recipe.name, "tags": recipe.tags, **fields,
    })


def _given(override: Any, default: Any) -> Any:
    """An override unless it is unset: 0 is a value (Overrides refuses the ones no job can hold)."""
    return default if override is None else override


def _attack_spec(recipe: Recipe, a: AttackStage, ov: Overrides, seed: int) -> AttackSpec:
    return AttackSpec(**{
        **_options(a, AttackOptions), "n_examples": _given(ov.n_examples, a.n_examples), "target": PENDING,
        "seed": seed, "device": _given(ov.device, recipe.device), "recipe": recipe.name, "tags": recipe.tags,
    })


AddJob = Callable[..., str]


def _cell(recipe: Recipe, ov: Overrides, seed: int, model: ModelSpec, add: AddJob) -> None:
    """The jobs of one seed x model: train limits x (pretrain + rules x (fine-tune + attack))."""
    for limit in recipe.train_limits:
        rv = Overrides(**{**ov.__dict__, "train_limit": _given(ov.train_limit, limit)})
        pre = None
        if recipe.pretrain is not None and not recipe.finetune.from_scratch:
            spec = _stage_spec(recipe.pretrain, recipe, rv, kind="pretrain", model=model, seed=seed)
            pre = add("pretrain", spec, describe("pretrain", spec))
        group: list[tuple[str, str, str]] = []  # (key, rule, label)
        for entry in recipe.finetune.rules:
            kind: JobKind = "finetune" if pre is not None or model.pretrained or model.weights is not None else "train"
            spec = _stage_spec(
                recipe.finetune.for_rule(entry), recipe, rv, kind=kind, model=model, seed=seed, rule=entry.rule,
                source=PENDING if pre is not None else None, reset_head=recipe.finetune.reset_head,
            )
            label = describe(kind, spec)
            group.append((add(kind, spec, label, source=pre), entry.name, label))
        bp = [k for k, name, _ in group if name == "bp"]
        for stage in recipe.attack:
            spec = _attack_spec(recipe, stage, rv, seed)
            needs_sibling = "transfer" in spec.modes
            for key, name, label in group:
                after = tuple(bp) if needs_sibling and name != "bp" else ()
                add("attack", spec, f"attack {stage.suite} of {label}", source=key, after=after)


# the most jobs `plan` expands without being told to (--max-jobs): far above any grid in recipes/,
# far below one that would fill memory before the first job runs
MAX_JOBS = 10_000


def count_jobs(recipe: Recipe, ov: Overrides = Overrides()) -> int:
    """How many jobs `plan` gives, without expanding the grid: seeds x models x the jobs of one
    seed x model. Every job carries its seed and model, so cells share no job and the two axes
    that grow multiply; the one cell is expanded, since jobs inside it can coincide (a repeated
    rule; per-rule epochs that --epochs replaces)."""
    seeds = set(_given(ov.seeds, recipe.seeds))
    models = set(recipe.models)
    keys: set[str] = set()

    def add(kind: JobKind, spec: TrainSpec | AttackSpec, label: str, source: str | None = None,
            after: tuple[str, ...] = ()) -> str:
        keys.add(key := _key(kind, spec, source))
        return key

    _cell(recipe, ov, min(seeds), recipe.models[0], add)
    return len(seeds) * len(models) * len(keys)


def check_plan(recipe: Recipe, ov: Overrides = Overrides(), max_jobs: int | None = MAX_JOBS) -> int:
    """Refuse, before anything is expanded, stored or run, what the recipe and overrides cannot do
    here; returns the job count. The data folders are checked on this machine: the ones a recipe
    names must exist at the same path wherever its jobs run (docs/scale.md)."""
    from ssbench.data import check_data

    if ov.n_examples is not None and not recipe.attack:
        raise SpecError(f"--n {ov.n_examples}: recipe {recipe.name} has no attack stage; leave --n out")
    n = count_jobs(recipe, ov)
    if max_jobs is not None and n > max_jobs:
        raise SpecError(f"recipe {recipe.name} expands to {n:,} jobs (limit {max_jobs:,}); "
                        f"pass --max-jobs {n} to run it anyway, or fewer seeds / models / rules")
    for data in recipe.data_specs():
        check_data(data)
    return n


def plan(recipe: Recipe, ov: Overrides = Overrides(), resources: Resources | None = None, *,
         max_jobs: int | None = MAX_JOBS) -> Plan:
    """The recipe's jobs over seeds x models x train limits, each after the jobs it needs.

    Attacks wait for the whole fine-tune group's BP sibling when transfer mode needs it. A grid of
    more than `max_jobs` jobs (None: no limit) is refused before it is expanded (`check_plan`)."""
    check_plan(recipe, ov, max_jobs)
    jobs: dict[str, Job] = {}
    res = resources or recipe.resources

    def add(kind: JobKind, spec: TrainSpec | AttackSpec, label: str, source: str | None = None,
            after: tuple[str, ...] = ()) -> str:
        key = _key(kind, spec, source)
        jobs.setdefault(key, Job(key, kind, spec, label, source, after, res))
        return key

    for seed in _given(ov.seeds, recipe.seeds):
        for model in recipe.models:
            _cell(recipe, ov, seed, model, add)
    return Plan(recipe, tuple(jobs.values()))
