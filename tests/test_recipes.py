"""Recipes: validation (unknown keys are errors), the grid they expand to, resume."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ssbench.errors import SpecError
from ssbench.executors import run_recipe
from ssbench.executors.task import RUNNERS
from ssbench.recipes import Overrides, load_recipe
from ssbench.store import open_store

REPO = Path(__file__).resolve().parents[1]

SMALL = """
name: tiny
seeds: [0, 1]
data: {name: digits, classes: [0, 1, 2, 3, 4], val_fraction: 0.2}
models: [{name: mlp, hidden: [32]}]
pretrain: {epochs: 1, batch_size: 64, optim: {lr: 0.05}}
finetune:
  data: {name: digits, classes: [5, 6, 7, 8, 9], val_fraction: 0.2}
  rules: [bp, {name: ifa, theta: 30}]
  epochs: 1
  batch_size: 64
"""


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.finetune.rules


def test_quickstart_recipe_is_the_documented_task() -> None:
    r = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert r.data.name == "fashion-mnist" and r.data.classes == (0, 1, 2, 3, 4)
    assert r.finetune.data.classes == (5, 6, 7, 8, 9)
    assert [x.name for x in r.finetune.rules] == ["bp", "usf", "frsf", "brsf", "fa"]
    whitebox, headline = r.attack  # FGSM/PGD in both modes, then AutoAttack in exact mode
    assert set(whitebox.modes) == {"feedback", "exact"} and set(whitebox.attacks) == {"fgsm", "pgd"}
    assert headline.suite == "autoattack" and headline.modes is None  # the suite's default: exact
    from ssbench.recipes import Overrides, plan

    specs = [j.spec for j in plan(r, Overrides()) if j.kind == "attack"]
    assert sorted({(s.suite, s.modes) for s in specs}) == [("autoattack", ("exact",)), ("whitebox", ("feedback", "exact"))]
    assert len(specs) == 10  # two stages x five fine-tunes


def test_unknown_key_and_bad_values_are_errors(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(SMALL.replace("epochs: 1\n  batch_size: 64\n", "epochs: 1\n  batchsize: 64\n"))
    with pytest.raises(SpecError, match="finetune.batchsize"):
        load_recipe(p)
    p.write_text(SMALL.replace("rules: [bp,", "rules: [bq,"))
    with pytest.raises(SpecError, match="finetune.rules.0"):
        load_recipe(p)
    p.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_recipe(p)


def test_grid_runs_then_resumes(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(SMALL)
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    first = run_recipe(load_recipe(p), store, quiet=True)
    # 2 seeds x (1 pretrain + 2 rules)
    assert len(first.ran) == 6 and not first.already and not first.failed
    runs = store.list_runs()
    assert len(runs) == 6 and all(r.status == "finished" for r in runs)
    finetunes = [r for r in runs if r.kind == "finetune"]
    assert {r.rule for r in finetunes} == {"bp", "ifa"}
    assert all(r.parent_id is not None and store.get_run(r.parent_id).kind == "pretrain" for r in finetunes)
    assert all(r.recipe == "tiny" for r in runs)
    again = run_recipe(load_recipe(p), store, quiet=True)
    assert not again.ran and sorted(o.run_id for _, o in again.already) == sorted(o.run_id for _, o in first.ran)
    assert len(store.list_runs()) == 6
    # an override changes the config: a new run, the old one untouched
    third = run_recipe(load_recipe(p), store, Overrides(epochs=2, seeds=(0,)), quiet=True)
    assert not third.already and len(third.ran) == 3 and len(store.list_runs()) == 9


THREE_RULES = """
name: three
seeds: [0]
data: {name: digits, classes: [0, 1, 2, 3, 4], val_fraction: 0.2, train_limit: 200}
models: [{name: mlp, hidden: [16]}]
pretrain: {epochs: 1, batch_size: 64}
finetune:
  data: {name: digits, classes: [5, 6, 7, 8, 9], val_fraction: 0.2, train_limit: 200}
  rules: [bp, fa, usf]
  epochs: 1
  batch_size: 64
"""


def test_failed_job_does_not_stop_the_grid_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import ssbench.training.job as job
    from ssbench.cli import app
    from ssbench.rules import model_rule

    p = tmp_path / "r.yaml"
    p.write_text(THREE_RULES)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    real = job._log_alignment

    def fa_breaks(rec, model, epoch, grad_angles=None):  # noqa: ANN001, ANN202  (inside the run: the store marks it failed)
        if model_rule(model) == "fa":
            raise RuntimeError("fa exploded")
        return real(rec, model, epoch, grad_angles)

    monkeypatch.setattr(job, "_log_alignment", fa_breaks)
    first = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["run", str(p), "--db", url, "-q"])
    assert first.exit_code == 1, first.output
    assert "#3 failed finetune fa mlp seed 0 train_limit 200: RuntimeError: fa exploded" in first.output
    assert "1 failed or skipped" in first.output
    store = open_store(url)
    status = {(r.kind, r.rule): r.status for r in store.list_runs()}
    # fa came second: usf after it still ran
    assert status == {("pretrain", "bp"): "finished", ("finetune", "bp"): "finished",
                      ("finetune", "fa"): "failed", ("finetune", "usf"): "finished"}
    assert "fa exploded" in store.list_runs(rule="fa")[0].error

    monkeypatch.setattr(job, "_log_alignment", real)
    before = {r.id for r in store.list_runs()}
    second = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["run", str(p), "--db", url, "-q"])
    assert second.exit_code == 0, second.output
    new = [r for r in store.list_runs() if r.id not in before]
    assert [(r.kind, r.rule, r.status) for r in new] == [("finetune", "fa", "finished")]
    assert "3 already finished" in second.output and "0 failed" in second.output


def test_failed_pretrain_skips_its_finetunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(THREE_RULES)
    calls = []

    def train(spec, store, **_kw):  # noqa: ANN001, ANN202
        calls.append(spec.kind)
        raise ValueError("no data today")

    monkeypatch.setitem(RUNNERS, "pretrain", train)
    monkeypatch.setitem(RUNNERS, "finetune", train)
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    result = run_recipe(load_recipe(p), store)
    assert calls == ["pretrain"]  # the fine-tunes never start without their source
    assert [(j.kind, o.status, o.error) for j, o in result.failed] == [
        ("pretrain", "failed", "ValueError: no data today"),
        *[("finetune", "skipped", "skipped: pretrain mlp seed 0 train_limit 200 failed")] * 3,
    ]


def test_requires_is_checked_before_any_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import ssbench.recipes.requirements as recipes

    p = tmp_path / "r.yaml"
    p.write_text("requires: [gpu, network]\n" + THREE_RULES)
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    calls = []

    def train(spec, store, **_kw):  # noqa: ANN001, ANN202
        calls.append(spec.kind)
        with store.run(spec.kind, config=spec) as rec:
            pass
        return rec.run_id

    for kind in ("pretrain", "finetune"):
        monkeypatch.setitem(RUNNERS, kind, train)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(recipes, "network_available", lambda: True)
    with pytest.raises(SpecError, match=r"^recipe three requires a GPU \(torch sees no CUDA device\); .* --force$"):
        run_recipe(load_recipe(p), store)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(recipes, "network_available", lambda: False)
    with pytest.raises(SpecError, match="requires a network"):
        run_recipe(load_recipe(p), store)
    assert calls == []
    run_recipe(load_recipe(p), store, force=True)
    assert calls == ["pretrain", "finetune", "finetune", "finetune"]


def test_network_probe_against_a_local_port() -> None:
    import socket

    from ssbench.recipes import network_available

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert network_available((("127.0.0.1", port),), timeout=2.0)
    # the listener is closed now: nothing answers on that port
    assert not network_available((("127.0.0.1", port),), timeout=2.0)


def test_recipe_tags_land_on_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("tags: [ablation, cpu]\n" + THREE_RULES + "attack: {suite: whitebox, attacks: [fgsm], eps: [0.0]}\n")
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    attacked = []

    def attack(spec, store, **_kw):  # noqa: ANN001, ANN202
        attacked.append(spec.tags)
        with store.run("attack", config=spec) as rec:
            pass
        return rec.run_id

    monkeypatch.setitem(RUNNERS, "attack", attack)
    run_recipe(load_recipe(p), store, quiet=True)
    runs = store.list_runs(kind=["pretrain", "finetune"])
    assert len(runs) == 4 and all(r.tags == ["ablation", "cpu"] for r in runs)
    assert [r.id for r in store.list_runs(tag="ablation")] == [r.id for r in runs]
    assert attacked == [("ablation", "cpu")] * 3


def test_attack_stage_takes_fractions_and_loss() -> None:
    """A recipe's attack stage reads '8/255' like the CLI does and carries --loss through."""
    from ssbench.recipes import AttackStage

    stage = AttackStage(eps=["0", "2/255", "8/255"], loss="margin")
    assert stage.eps == (0.0, 2 / 255, 8 / 255) and stage.loss == "margin"
    assert AttackStage(eps="0,4/255").eps == (0.0, 4 / 255)
    with pytest.raises(ValidationError):
        AttackStage(eps=["-1/255"])
    with pytest.raises(ValidationError):
        AttackStage(loss="hinge")
    with pytest.raises(ValidationError, match="modes repeat"):  # the spec's validators, at load time
        AttackStage(modes=["exact", "exact"])


# a value other than the default for every option a stage hands its jobs: the keys are checked to be
# the option groups' fields, so a new option needs a value here and is then checked to reach the specs
TRAIN_OPTIONS = {
    "task": "hashing", "optim": {"name": "adam", "lr": 0.002}, "hashing": {"bits": 16, "loss": "dpsh"}, "epochs": 4,
    "batch_size": 64, "deterministic": True, "select": "last", "track_grad_alignment": True, "keep_epochs": 2,
    "compute": {"precision": "bf16", "channels_last": True, "gpus": 2},
}
ATTACK_OPTIONS = {
    "suite": "blackbox", "attacks": ["square"], "modes": ["exact", "transfer"], "eps": "0,2/255", "n_examples": 9,
    "batch_size": 3, "steps": 4, "transfer_optional": True, "loss": "margin", "precision": "train",
}


def test_every_stage_option_reaches_the_planned_specs() -> None:
    from ssbench.recipes import AttackStage, Recipe, TrainStage, plan
    from ssbench.specs import AttackOptions, TrainOptions

    # a stage holds its option group and only what the planner hands on itself (a stage's data)
    assert set(TrainStage.model_fields) == set(TrainOptions.model_fields) | {"data"}
    assert set(AttackStage.model_fields) == set(AttackOptions.model_fields)
    assert set(TRAIN_OPTIONS) == set(TrainOptions.model_fields)
    assert set(ATTACK_OPTIONS) == set(AttackOptions.model_fields)
    train, attack = TrainStage.model_validate(TRAIN_OPTIONS), AttackStage.model_validate(ATTACK_OPTIONS)
    for stage, names in ((train, TRAIN_OPTIONS), (attack, ATTACK_OPTIONS)):
        assert all(getattr(stage, n) != type(stage).model_fields[n].default for n in names)

    recipe = Recipe.model_validate({
        "name": "every-option", "data": {"name": "digits"}, "pretrain": TRAIN_OPTIONS,
        "finetune": {**TRAIN_OPTIONS, "rules": ["bp", {"name": "fa", "epochs": 6}]}, "attack": ATTACK_OPTIONS,
    })
    jobs = plan(recipe)
    assert sorted(j.kind for j in jobs) == ["attack", "attack", "finetune", "finetune", "pretrain"]
    for job in jobs:
        stage, names = (attack, ATTACK_OPTIONS) if job.kind == "attack" else (train, TRAIN_OPTIONS)
        expected = {n: getattr(stage, n) for n in names}
        if job.kind == "finetune" and job.spec.rule.name == "fa":
            expected["epochs"] = 6  # the rule's own value
        assert {n: getattr(job.spec, n) for n in names} == expected, job.label


PER_RULE = """
name: per-rule
data: {name: digits, val_fraction: 0.2, train_limit: 200}
models: [{name: mlp, hidden: [16]}]
finetune:
  from_scratch: true
  rules: [bp, {name: dfa, optim: {lr: 1.0e-4}, epochs: 2}, {name: ifa, theta: 30, batch_size: 32}]
  epochs: 1
  batch_size: 64
  optim: {name: sgd, lr: 0.001, momentum: 0.9, weight_decay: 0.001, scheduler: multistep, milestones: [50, 75]}
"""


def test_per_rule_overrides_reach_the_jobs_and_their_hashes(tmp_path: Path) -> None:
    from ssbench.recipes import plan
    from ssbench.store import config_hash
    from ssbench.training.optim import build_optimizer

    p = tmp_path / "r.yaml"
    p.write_text(PER_RULE)
    jobs = {j.spec.rule.name: j.spec for j in plan(load_recipe(p))}
    # a partial optim keeps the stage's other optimiser fields
    assert jobs["dfa"].optim.lr == 1e-4 and jobs["dfa"].optim.momentum == 0.9
    assert jobs["dfa"].optim.weight_decay == 1e-3 and jobs["dfa"].optim.milestones == (50, 75)
    assert jobs["dfa"].epochs == 2 and jobs["bp"].epochs == 1 and jobs["ifa"].batch_size == 32
    assert jobs["bp"].optim.lr == 1e-3 and jobs["ifa"].rule.theta == 30
    # the override is part of the job's identity
    p.write_text(PER_RULE.replace("{name: dfa, optim: {lr: 1.0e-4}, epochs: 2}", "{name: dfa, epochs: 2}"))
    plain = {j.spec.rule.name: j.spec for j in plan(load_recipe(p))}
    assert config_hash(plain["dfa"]) != config_hash(jobs["dfa"]) and config_hash(plain["bp"]) == config_hash(jobs["bp"])
    # and reaches the optimiser the job builds
    import torch

    opt = build_optimizer(torch.nn.Linear(2, 2), jobs["dfa"].optim, None)
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[0]["weight_decay"] == 1e-3


@pytest.mark.parametrize("entry, message", [
    ("{name: dfa, optim: {lrr: 1.0e-4}}", "rule dfa: optim.lrr: Extra inputs are not permitted"),
    ("{name: dfa, lr: 1.0e-4}", "unknown key 'lr'"),
    ("{name: dfa, epochs: 0}", "rule dfa: epochs: Input should be greater than or equal to 1"),
])
def test_per_rule_override_errors_are_one_line(tmp_path: Path, entry: str, message: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(PER_RULE.replace("{name: dfa, optim: {lr: 1.0e-4}, epochs: 2}", entry))
    with pytest.raises(SpecError, match="^recipe .*finetune") as err:
        load_recipe(p)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("args", [["run", "RECIPE", "--seeds", "abc"], ["pretrain", "--model", "mlp", "--hidden", "abc"],
                                  ["train", "--scheduler", "multistep", "--milestones", "x,y"]])
def test_lists_of_numbers_are_one_line_errors(tmp_path: Path, args: list[str]) -> None:
    from typer.testing import CliRunner

    from ssbench.cli import app

    p = tmp_path / "r.yaml"
    p.write_text(THREE_RULES)
    res = CliRunner().invoke(app, [str(p) if a == "RECIPE" else a for a in args])
    assert res.exit_code == 2 and "expected whole numbers separated by commas" in res.output
    assert res.output.strip().count("\n") == 0


def _arithmetic_jobs(path: Path) -> int:
    """seeds x models x train limits x (pretrain + rules x (fine-tune + attack stages)), from the YAML alone."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    models = raw.get("models", [{}])
    models = [models] if isinstance(models, (dict, str)) else models
    ft = raw["finetune"]
    pre = 1 if raw.get("pretrain") is not None and not ft.get("from_scratch", False) else 0
    attack = raw.get("attack")
    per_rule = 1 + (0 if attack is None else len(attack) if isinstance(attack, list) else 1)
    return (len(raw.get("seeds", [0])) * len(models) * len(raw.get("train_limits", [None]))
            * (pre + len(ft["rules"]) * per_rule))


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_job_count_without_expanding_is_the_plan_length(path: Path) -> None:
    from ssbench.recipes import plan
    from ssbench.recipes.plan import count_jobs

    recipe = load_recipe(path)
    assert count_jobs(recipe) == len(plan(recipe)) == _arithmetic_jobs(path)
    ov = Overrides(seeds=(3, 4, 5), epochs=1, train_limit=50)
    assert count_jobs(recipe, ov) == len(plan(recipe, ov))


def test_job_count_where_jobs_coincide(tmp_path: Path) -> None:
    """Repeated seeds and rules, and per-rule epochs that --epochs replaces, are one job each, as in the plan."""
    from ssbench.recipes import plan
    from ssbench.recipes.plan import count_jobs

    p = tmp_path / "r.yaml"
    p.write_text(SMALL.replace("seeds: [0, 1]", "seeds: [0, 1, 1]")
                 .replace("rules: [bp, {name: ifa, theta: 30}]", "rules: [bp, bp, {name: fa, epochs: 2}, fa]"))
    recipe = load_recipe(p)
    assert count_jobs(recipe) == len(plan(recipe)) == 2 * (1 + 3)
    assert count_jobs(recipe, Overrides(epochs=1)) == len(plan(recipe, Overrides(epochs=1))) == 2 * (1 + 2)


def test_plan_refuses_a_grid_above_max_jobs(tmp_path: Path) -> None:
    from ssbench.recipes import plan

    p = tmp_path / "r.yaml"
    p.write_text(SMALL)  # 2 seeds x (pretrain + 2 rules) = 6 jobs
    with pytest.raises(SpecError, match=r"^recipe tiny expands to 6 jobs \(limit 5\); pass --max-jobs 6"):
        plan(load_recipe(p), max_jobs=5)
    assert len(plan(load_recipe(p), max_jobs=6)) == len(plan(load_recipe(p), max_jobs=None)) == 6


@pytest.mark.parametrize("text, where", [("seeds: []", "seeds"), ("models: []", "models"),
                                         ("train_limits: [0]", "train_limits.0")])
def test_empty_or_zero_grid_axes_are_refused(tmp_path: Path, text: str, where: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(SMALL.replace("seeds: [0, 1]", text) if text.startswith("seeds") else SMALL + text + "\n")
    if text.startswith("models"):
        p.write_text(SMALL.replace("models: [{name: mlp, hidden: [32]}]", text))
    with pytest.raises(SpecError, match=f"^recipe .*: {where}: "):
        load_recipe(p)
