"""init='gaussian' and the trainability map: the stated variances checked on the built layers with
independent moment estimates, the map's cells checked as ordinary training runs in the store."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from sqlalchemy import select
from torch import nn
from typer.testing import CliRunner

from ssbench.analysis.trainability import NONFINITE, TrainabilitySpec, run_trainability
from ssbench.errors import SpecError
from ssbench.rules import convert, convert_from_config, feedback_layers, make_rule, rule_config
from ssbench.specs import DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import open_store
from ssbench.store.models import Metric, Run

W_VAR, B_VAR = 2.0, 0.5  # different on purpose: B must not take W's scale
RULES_WITH_FEEDBACK = ("fa", "dfa", "usf", "frsf", "brsf")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def store(sqlite_store):  # noqa: ANN001, ANN201
    return sqlite_store


# ------------------------------------------------------------------ statistics on the built layers


def _net() -> nn.Module:
    torch.manual_seed(0)  # torch's own init first: the conversion must replace it
    return nn.Sequential(nn.Linear(400, 300), nn.Tanh(), nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 10))


def _assert_var(t: torch.Tensor, var: float) -> None:
    """Mean square of a zero-mean normal sample within 5 standard errors (sd of x^2: sqrt(2) var)."""
    t = t.detach().double().flatten()
    assert abs(float(t.mean())) < 5 * math.sqrt(var / t.numel())
    assert abs(float(t.square().mean()) / var - 1) < 5 * math.sqrt(2 / t.numel())


def _spec(rule: str) -> RuleSpec:
    feedback = {} if rule in ("bp", "ifa") else {"feedback_var": B_VAR}
    return RuleSpec(name=rule, init="gaussian", weight_var=W_VAR, **feedback)


def _trained_step(model: nn.Module) -> None:
    model.train()
    x = torch.randn(8, 400, generator=torch.Generator().manual_seed(1)).requires_grad_()  # dfa: B_l of layer 0 too
    model(x).square().sum().backward()


@pytest.mark.parametrize("rule", ["bp", "ifa", *RULES_WITH_FEEDBACK])
def test_gaussian_init_gives_the_stated_variances(rule: str) -> None:
    model = convert(_net(), _spec(rule), seed=3, from_scratch=True)
    _trained_step(model)  # dfa draws B_l at the first backward, brsf a step's |R_t|
    for _, layer in feedback_layers(model):
        w, fan_in = layer.weight, layer.weight.shape[1]  # a Linear's fan_in, independent of ssbench's fans()
        _assert_var(w, W_VAR / fan_in)
        assert torch.count_nonzero(layer.bias) == 0
        b = layer.feedback_tensor()
        if rule == "bp":
            assert torch.equal(b, w.detach())
        elif rule == "ifa":  # B has ||W_0|| by definition: no feedback variance of its own
            torch.testing.assert_close(b.norm(), w.detach().norm())
        elif rule == "dfa":  # B_l (output size, input size) ~ N(0, feedback_var / input size)
            assert b.shape == (10, fan_in)
            _assert_var(b, B_VAR / fan_in)
        else:
            _assert_var(b, B_VAR / fan_in)
            if rule != "fa":
                assert torch.equal(b.sign(), w.detach().sign())
            if rule == "usf":
                torch.testing.assert_close(b.abs(), torch.full_like(b, math.sqrt(B_VAR / fan_in)))


def test_gaussian_conv_uses_the_kernel_fan_in() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(64, 3))
    model = convert(net, _spec("fa"), seed=1, from_scratch=True, skip=("2",))
    (_, conv), = feedback_layers(model)
    fan_in = 64 * 3 * 3
    _assert_var(conv.weight, W_VAR / fan_in)
    _assert_var(conv.feedback_tensor(), B_VAR / fan_in)


def test_feedback_var_defaults_to_weight_var_and_finetune_keeps_W() -> None:
    spec = RuleSpec(name="frsf", init="gaussian", weight_var=W_VAR)
    assert spec.feedback_var == W_VAR
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    model = convert(net, spec, seed=2)  # not from scratch: W untouched, B still gaussian
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for _, layer in feedback_layers(model):
        _assert_var(layer.feedback_state, W_VAR / layer.weight.shape[1])


@pytest.mark.parametrize("rule", ["usf", "fa", "ifa"])
def test_rule_config_rebuilds_the_same_conversion(rule: str) -> None:
    model = convert(_net(), _spec(rule), seed=4, from_scratch=True)
    config = rule_config(model)
    assert config["init"] == "gaussian" and config["weight_var"] == W_VAR
    assert config.get("feedback_var") == (None if rule == "ifa" else B_VAR)
    copy = _net()
    copy.load_state_dict({k: v for k, v in model.state_dict().items() if "feedback" not in k}, strict=False)
    rebuilt = convert_from_config(copy, config)  # usf: stateless, its B scale comes from the config alone
    for (_, a), (_, b) in zip(feedback_layers(model), feedback_layers(rebuilt)):
        assert torch.equal(a.feedback_tensor(), b.feedback_tensor())


def test_training_job_bp_path_uses_gaussian_init(tmp_path) -> None:
    from ssbench.training import load_trained, run_training

    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    spec = TrainSpec(kind="pretrain", data=DataSpec(name="digits", train_limit=100, test_limit=50),
                     model=ModelSpec(name="mlp", hidden=(512,)), rule=RuleSpec(init="gaussian", weight_var=4.0),
                     optim=OptimSpec(lr=1e-12), epochs=1, select="last", device="cpu")
    linears = [m for m in load_trained(store, run_training(spec, store, quiet=True)).model.modules() if isinstance(m, nn.Linear)]
    _assert_var(linears[0].weight, 4.0 / linears[0].weight.shape[1])
    assert all(float(m.bias.detach().abs().max()) < 1e-9 for m in linears)  # 0 at init; lr 1e-12 barely moves it


# ------------------------------------------------------------------ validation and hashes


@pytest.mark.parametrize("kw, words", [
    ({"name": "fa", "init": "gaussian"}, "needs weight_var"),
    ({"name": "fa", "weight_var": 1.0}, "init gaussian options"),
    ({"name": "fa", "init": "xavier", "feedback_var": 1.0}, "init gaussian options"),
    ({"name": "bp", "init": "gaussian", "weight_var": 1.0, "feedback_var": 1.0}, "no random feedback"),
    ({"name": "ifa", "init": "gaussian", "weight_var": 1.0, "feedback_var": 1.0}, "no random feedback"),
    ({"name": "fa", "init": "gaussian", "weight_var": 0.0}, "greater than 0"),
])
def test_validation_errors(kw: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        RuleSpec(**kw)


def test_rules_built_by_hand_refuse_the_same() -> None:
    with pytest.raises(SpecError, match="needs weight_var"):
        make_rule("fa", init="gaussian")
    with pytest.raises(SpecError, match="no random feedback"):
        make_rule("bp", init="gaussian", weight_var=1.0, feedback_var=2.0)
    with pytest.raises(ValidationError, match="no random feedback"):
        TrainabilitySpec(rule="bp")


def test_default_rule_dump_and_hash_unchanged(store) -> None:
    from ssbench.store.store import config_hash

    assert RuleSpec().model_dump(mode="json") == {"name": "bp", "theta": None, "seed": None, "skip": []}
    assert RuleSpec(name="fa", init="xavier").model_dump(mode="json") == \
        {"name": "fa", "theta": None, "seed": None, "skip": [], "init": "xavier"}
    spec = TrainSpec(kind="train", rule=RuleSpec(name="fa"))
    assert "weight_var" not in spec.model_dump()["rule"] and "feedback_var" not in spec.model_dump()["rule"]
    assert store.job_hash(spec) == config_hash(spec.model_dump(mode="json"))
    g = TrainSpec(kind="train", rule=RuleSpec(name="fa", init="gaussian", weight_var=1.0))
    assert g.model_dump(mode="json")["rule"]["feedback_var"] == 1.0
    assert TrainSpec.model_validate(g.model_dump(mode="json")) == g
    assert store.job_hash(g) == store.job_hash(TrainSpec(kind="train", rule=RuleSpec(name="fa", init="gaussian",
                                                                                       weight_var=1.0, feedback_var=1.0)))


def test_cli_train_options_reach_the_run(tmp_path) -> None:
    from ssbench.cli import app

    url = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["train", "--dataset", "digits", "--model", "mlp", "--rule", "usf", "--epochs", "1", "-q", "--db", url,
            "--train-limit", "100", "--device", "cpu"]
    ok = CliRunner().invoke(app, [*args, "--init", "gaussian", "--weight-var", "2", "--feedback-var", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert open_store(url).list_runs()[0].config["rule"] == {
        "name": "usf", "theta": None, "seed": None, "skip": [], "init": "gaussian", "weight_var": 2.0, "feedback_var": 0.5}
    bad = CliRunner().invoke(app, [*args, "--init", "gaussian"])
    assert bad.exit_code == 2 and "weight_var" in bad.output and bad.output.strip().count("\n") == 0


# ------------------------------------------------------------------ the map end to end

DATA = DataSpec(name="digits", train_limit=300, test_limit=100, val_fraction=0.0)


def _map(**kw) -> TrainabilitySpec:  # noqa: ANN003
    base = dict(rule="fa", model=ModelSpec(name="mlp", hidden=(16,)), data=DATA, weight_vars=(1.0, 2.0),
                feedback_vars=(0.5, 2.0), epochs=1, batch_size=64, optim=OptimSpec(lr=0.05), device="cpu")
    return TrainabilitySpec(**{**base, **kw})


def _last_train_accuracy(store, run_id: int) -> float:  # noqa: ANN001
    with store.session() as s:
        rows = s.scalars(select(Metric).where(Metric.run_id == run_id, Metric.split == "train",
                                              Metric.name == "accuracy").order_by(Metric.epoch.desc())).all()
    return rows[0].value


def _map_cells(store, run_id: int) -> list[dict]:  # noqa: ANN001
    ev = store.frame_evaluations(kind="analysis")
    ev = ev[(ev["run_id"] == run_id) & (ev["metric"] == "trainability")]
    return [{**p, "value": v} for p, v in zip(ev["params"], ev["value"])]


def _train_runs(store) -> list[Run]:  # noqa: ANN001
    return store.list_runs(kind="train")


def test_map_cells_are_ordinary_training_runs_and_are_reused(store, tmp_path) -> None:
    spec = _map()
    first = run_trainability(spec, store, quiet=True)
    cells = _map_cells(store, first)
    assert sorted((c["weight_var"], c["feedback_var"]) for c in cells) == [(1.0, 0.5), (1.0, 2.0), (2.0, 0.5), (2.0, 2.0)]
    assert len(_train_runs(store)) == 4
    for c in cells:
        run = store.get_run(c["cell_run"])
        assert (run.kind, run.status, c["diverged"]) == ("train", "finished", None)
        assert run.config["rule"] == {"name": "fa", "theta": None, "seed": None, "skip": [], "init": "gaussian",
                                      "weight_var": c["weight_var"], "feedback_var": c["feedback_var"]}
        assert run.config["select"] == "last" and run.config["epochs"] == 1
        assert run.config_hash == store.job_hash(spec.cell(c["weight_var"], c["feedback_var"]))
        assert c["value"] == _last_train_accuracy(store, run.id)

    # the CLI on the same grid: every cell reused (no new train run), the same numbers, the map printed
    from ssbench.cli import app

    res = CliRunner().invoke(app, [
        "analyze", "trainability", "--rule", "fa", "--model", "mlp", "--hidden", "16", "--dataset", "digits",
        "--weight-vars", "2,1", "--feedback-vars", "0.5,2", "--epochs", "1", "--train-limit", "300", "--test-limit", "100",
        "--batch-size", "64", "--lr", "0.05", "--device", "cpu", "--db", store.url])
    assert res.exit_code == 0, res.output
    assert res.output.count("reused run") == 4 and "feedback_var \\ weight_var" in res.output and "(He)" in res.output
    assert len(_train_runs(store)) == 4
    second = max(r.id for r in store.list_runs(kind="analysis"))
    assert second != first
    key = lambda c: (c["weight_var"], c["feedback_var"])  # noqa: E731
    assert sorted((key(c), c["cell_run"], c["value"]) for c in _map_cells(store, second)) == \
        sorted((key(c), c["cell_run"], c["value"]) for c in cells)

    # the report: one table row per feedback variance (the rerun is not a second seed), and the heatmap
    from ssbench.report import build_plots, build_tables, display_frame
    from ssbench.report.tables import ReportFilter

    table = build_tables(store, which="trainability")["trainability"]
    assert len(table) == 4 and set(table["n"]) == {1}
    shown = display_frame("trainability", table)
    assert list(shown["feedback var"]) == ["0.5", "2"] and {"weight var 1", "weight var 2"} <= set(shown.columns)
    files = build_plots(store, ReportFilter(), tmp_path / "plots")
    assert any(p.name.startswith("trainability_fa") and p.suffix == ".png" for p in files)


def test_non_finite_loss_is_untrainable_not_fatal_and_not_retried(store) -> None:
    spec = _map(weight_vars=(1.0, 1e60), feedback_vars=(1.0,))  # W of std ~1e29: float32 logits overflow
    first = run_trainability(spec, store, quiet=True)
    cells = {c["weight_var"]: c for c in _map_cells(store, first)}
    bad = cells[1e60]
    assert bad["diverged"] == NONFINITE and bad["value"] == pytest.approx(1 / 10)  # chance: digits has 10 classes
    run = store.get_run(bad["cell_run"])
    assert run.status == "failed" and run.error.startswith("FloatingPointError")
    assert cells[1.0]["diverged"] is None and store.get_run(cells[1.0]["cell_run"]).status == "finished"
    n_runs = len(_train_runs(store))
    second = run_trainability(spec, store, quiet=True)
    assert len(_train_runs(store)) == n_runs
    assert {c["weight_var"]: c["cell_run"] for c in _map_cells(store, second)} == {w: c["cell_run"] for w, c in cells.items()}
