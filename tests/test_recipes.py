"""Recipes: validation (unknown keys are errors), the grid they expand to, resume."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssbench.errors import SpecError
from ssbench.recipes import Overrides, load_recipe, run_recipe
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
    assert r.attack is not None and set(r.attack.modes) == {"feedback", "exact"}
    assert set(r.attack.attacks) == {"fgsm", "pgd"}


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
    first = run_recipe(load_recipe(p), store, log=lambda _m: None)
    # 2 seeds x (1 pretrain + 2 rules)
    assert len(first.trained) == 6 and first.skipped == 0
    runs = store.list_runs()
    assert len(runs) == 6 and all(r.status == "finished" for r in runs)
    finetunes = [r for r in runs if r.kind == "finetune"]
    assert {r.rule for r in finetunes} == {"bp", "ifa"}
    assert all(r.parent_id is not None and store.get_run(r.parent_id).kind == "pretrain" for r in finetunes)
    assert all(r.recipe == "tiny" for r in runs)
    again = run_recipe(load_recipe(p), store, log=lambda _m: None)
    assert again.skipped == 6 and sorted(again.trained) == sorted(first.trained)
    assert len(store.list_runs()) == 6
    # an override changes the config: a new run, the old one untouched
    third = run_recipe(load_recipe(p), store, Overrides(epochs=2, seeds=(0,)), log=lambda _m: None)
    assert third.skipped == 0 and len(store.list_runs()) == 9
