"""Analysis jobs end to end: a stored run -> analysis run -> evaluations, checked independently."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import typer
from torch.func import functional_call
from typer.testing import CliRunner

from ssbench.analysis.corruptions import corrupt
from ssbench.analysis.jobs import run_corruptions, run_hessian
from ssbench.analysis.specs import CorruptionSpec, HessianSpec
from ssbench.cli.analyze import register
from ssbench.cli.app import SsbenchGroup
from ssbench.data import load_data
from ssbench.models import Normalized, build_model
from ssbench.rules import convert
from ssbench.specs import DataSpec, ModelSpec, RuleSpec, TrainSpec
from ssbench.training.checkpoint import ModelMeta, load_trained, model_from_checkpoint, read_checkpoint, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def store(sqlite_store):  # noqa: ANN001, ANN201
    return sqlite_store


def _train_run(store, rule: str = "fa") -> int:  # noqa: ANN001
    """A finished 'train' run of a small fa MLP on digits, fitted for a few steps (no training job needed)."""
    spec = TrainSpec(kind="train", data=DataSpec(name="digits", test_limit=300), model=ModelSpec(name="mlp", hidden=(4,)),
                     rule=RuleSpec(name=rule), epochs=1, device="cpu")
    bundle = load_data(spec.data)
    torch.manual_seed(0)
    net = build_model(spec.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels, image_size=bundle.image_size)
    model = convert(Normalized(net, bundle.mean, bundle.std), spec.rule, seed=0)
    x, y = bundle.train.transform_batch(bundle.train.images[:400], None), bundle.train.labels[:400]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    meta = ModelMeta(model=spec.model.model_dump(mode="json"), num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                     image_size=bundle.image_size, mean=list(bundle.mean), std=list(bundle.std), task="classification", rule=None)
    with store.run("train", config=spec, seed=0, rule=rule, model="mlp", dataset="digits", task="classification") as rec:
        path = save_checkpoint(store.checkpoint_dir(rec.run_id) / "best.pt", model, meta, spec, epoch=1, run_id=rec.run_id)
        rec.add_checkpoint("best", path, epoch=1)
        return rec.run_id


def _evals(store, run_id: int):  # noqa: ANN001, ANN202
    df = store.frame_evaluations(kind="analysis")
    return df[df["run_id"] == run_id]


def _plain_hessian(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).double()
    buffers = {k: v.double() if v.is_floating_point() else v for k, v in model.named_buffers()}

    def f(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = theta[i : i + k].view(s)
            i += k
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (x.double(),)), y)

    return torch.autograd.functional.hessian(f, flat)


def test_hessian_job_persists_numbers_that_match_plain_autograd(store):
    run_id = _train_run(store)
    dim = 64 * 4 + 4 + 4 * 10 + 10
    spec = HessianSpec(target=str(run_id), n_examples=96, batch_size=40, probes=30, iters=dim, top_k=2, density=True,
                       density_probes=2, surface=True, surface_points=3, surface_radius=0.5, device="cpu")
    aid = run_hessian(spec, store, quiet=True)
    run = store.get_run(aid)
    assert run.kind == "analysis" and run.status == "finished" and run.parent_id == run_id and run.rule == "fa"
    ev = _evals(store, aid)
    one = lambda metric, **kv: ev[(ev.metric == metric) & ev.params.map(lambda p: all(p.get(k) == v for k, v in kv.items()))]  # noqa: E731

    # independent reference: the unconverted network rebuilt in float64, plain autograd Hessian
    trained = load_trained(store, run_id, "cpu")
    bundle = load_data(trained.spec.data)
    idx = torch.tensor(run.summary["indices"])
    x = bundle.train.transform_batch(bundle.train.images[idx], None)
    y = bundle.train.labels[idx]
    # with_rule=False: plain nn.Linear layers, so autograd's double backward is the true Hessian
    ref_model = model_from_checkpoint(read_checkpoint(trained.path), with_rule=False)[0].double().eval()
    hess = _plain_hessian(ref_model, x, y)
    eig = torch.linalg.eigvalsh(hess)
    with torch.no_grad():
        loss = float(F.cross_entropy(ref_model(x.double()), y))

    assert float(one("hessian_loss").value.iloc[0]) == pytest.approx(loss, rel=1e-5)
    trace = one("hessian_trace").iloc[0]
    assert abs(trace.value - float(torch.trace(hess))) <= 3.5 * trace.params["stderr"]
    assert trace.params["n"] == 96 and trace.params["params"] == dim
    assert float(one("hessian_top_eig", method="lanczos").value.iloc[0]) == pytest.approx(float(eig.max()), rel=1e-4)
    assert float(one("hessian_eig", rank=2).value.iloc[0]) == pytest.approx(float(eig[-2]), rel=1e-3)
    assert float(one("hessian_top_eig", method="power").value.iloc[0]) == pytest.approx(float(eig.max()), rel=0.05)

    dens = one("hessian_density").iloc[0]
    assert sum(dens.params["weights"]) == pytest.approx(1.0, abs=1e-9)
    assert len(dens.params["grid"]) == len(dens.params["density"])
    surf = one("loss_surface").iloc[0]
    grid = torch.tensor(surf.params["grid"])
    assert grid.shape == (3, 3)
    assert float(grid[1, 1]) == pytest.approx(loss, rel=1e-5)  # the centre is the trained weights
    assert surf.value == pytest.approx(loss, rel=1e-5)  # and they were restored afterwards


def test_corruption_job_matches_a_direct_evaluation(store):
    run_id = _train_run(store)
    spec = CorruptionSpec(target=str(run_id), corruptions=("fog", "gaussian_noise"), severities=(1, 5), n_examples=120,
                          batch_size=256, seed=0, device="cpu")
    aid = run_corruptions(spec, store, quiet=True)
    ev = _evals(store, aid)
    trained = load_trained(store, run_id, "cpu")
    bundle = load_data(trained.spec.data)
    idx = torch.tensor(store.get_run(aid).summary["indices"])
    x, y = bundle.test.transform_batch(bundle.test.images[idx], None), bundle.test.labels[idx]
    accs = []
    for name in ("fog", "gaussian_noise"):
        for sev in (1, 5):
            with torch.no_grad():
                acc = int((trained.model(corrupt(x, name, sev, seed=0)).argmax(1) == y).sum()) / len(y)
            row = ev[(ev.metric == "corruption_accuracy") & ev.params.map(lambda p: p.get("corruption") == name and p.get("severity") == sev)]
            assert len(row) == 1 and float(row.value.iloc[0]) == pytest.approx(acc, abs=1e-12)
            accs.append(acc)
    with torch.no_grad():
        clean = float((trained.model(x).argmax(1) == y).float().mean())
    assert float(ev[ev.metric == "accuracy"].value.iloc[0]) == pytest.approx(clean)
    assert float(ev[ev.metric == "mean_corruption_accuracy"].value.iloc[0]) == pytest.approx(sum(accs) / 4)
    assert len(ev[ev.metric == "corruption_mean_accuracy"]) == 2


def _cli() -> typer.Typer:
    app = typer.Typer(cls=SsbenchGroup)

    @app.callback()
    def main() -> None:  # a group, so that `analyze` is a sub-command
        pass

    register(app)
    return app


def test_cli_commands_and_one_line_errors(store, tmp_path):
    run_id = _train_run(store)
    url = store.url
    runner = CliRunner()
    app = _cli()
    res = runner.invoke(app, ["analyze", "corruptions", str(run_id), "--corruption", "snow", "--db", url])
    assert res.exit_code == 2
    assert "unknown corruption 'snow'; choose from" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["analyze", "hessian", "999", "--db", url, "--quiet"])
    assert res.exit_code == 2 and "no run 999" in res.output
    res = runner.invoke(app, ["analyze", "corruptions", str(run_id), "--n", "40", "--corruption", "jpeg",
                              "--severity", "2", "--db", url, "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "jpeg" in res.output
    res = runner.invoke(app, ["analyze", "hessian", str(run_id), "--n", "32", "--probes", "3", "--iters", "4",
                              "--db", url, "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    df = store.frame_evaluations(kind="analysis")
    assert {"corruption_accuracy", "hessian_trace", "hessian_top_eig"} <= set(df.metric)
