"""Kept epochs and `analyze trajectory`, checked against independent computation: numpy's SVD of
the stacked weight vectors, `analyze hessian` on the final weights, a plain forward pass at a point
of the loss plane."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ssbench.analysis.jobs import run_hessian, select_indices, stack_examples
from ssbench.analysis.specs import HessianSpec, TrajectorySpec
from ssbench.analysis.trajectory import kept_epochs, run_trajectory
from ssbench.data import load_data
from ssbench.errors import SpecError
from ssbench.report import build_tables
from ssbench.report.tables import trajectory_planes, trajectory_points
from ssbench.specs import DataSpec, ModelSpec, RuleSpec, TrainSpec
from ssbench.training import run_training
from ssbench.training.checkpoint import load_trained, read_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def store(sqlite_store):  # noqa: ANN001, ANN201
    return sqlite_store


def _spec(**kw) -> TrainSpec:  # noqa: ANN003
    base = dict(kind="train", data=DataSpec(name="digits", val_fraction=0.0, test_limit=200),
                model=ModelSpec(name="mlp", hidden=(8,)), rule=RuleSpec(name="fa"), epochs=4, batch_size=64,
                keep_epochs=1, device="cpu", select="last")
    return TrainSpec(**{**base, **kw})


def _params(state: dict[str, torch.Tensor], model: torch.nn.Module) -> np.ndarray:
    """The flat trainable parameter vector of a checkpoint's state dict, in model.parameters() order."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return np.concatenate([state[n].double().reshape(-1).numpy() for n in names])


def test_keep_epochs_keeps_the_initial_every_nth_and_last_weights(store) -> None:  # noqa: ANN001
    run = run_training(_spec(epochs=5, keep_epochs=2), store, quiet=True)
    assert kept_epochs(store, run) == [0, 2, 4, 5]
    last = read_checkpoint(store.checkpoint(run, "last").path)
    kept5 = read_checkpoint(store.checkpoint(run, "epoch-5").path)
    assert all(torch.equal(last["state_dict"][k], kept5["state_dict"][k]) for k in last["state_dict"])
    assert kept5["epoch"] == 5 and kept5["run_id"] == run
    # the default keeps nothing and leaves the stored config (and its hash) as before the option existed
    assert "keep_epochs" not in _spec(keep_epochs=0).model_dump()


def test_a_resumed_run_carries_the_kept_epochs_of_the_interrupted_one(store) -> None:  # noqa: ANN001
    def stop(epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(_spec(), store, quiet=True, on_epoch=stop)
    run = run_training(_spec(), store, quiet=True)
    assert kept_epochs(store, run) == [0, 1, 2, 3, 4]
    assert {read_checkpoint(r.path)["run_id"] for r in store.checkpoints(run) if r.tag.startswith("epoch-")} == {run}


def test_trajectory_matches_numpy_svd_and_analyze_hessian(store) -> None:  # noqa: ANN001
    run = run_training(_spec(), store, quiet=True)
    spec = TrajectorySpec(target=str(run), n_examples=128, probes=8, iters=12, points=5, margin=0.1, device="cpu")
    aid = run_trajectory(spec, store, quiet=True)

    # PCA against numpy: rows theta_i - theta_final, right singular vectors, coordinates of every epoch
    final = load_trained(store, run, "cpu")
    thetas = np.stack([_params(read_checkpoint(store.checkpoint(run, f"epoch-{e}").path)["state_dict"], final.model)
                       for e in range(5)])
    _, s, vt = np.linalg.svd(thetas[:-1] - thetas[-1], full_matrices=False)
    coords = (thetas - thetas[-1]) @ vt[:2].T
    coords *= np.where(coords[0] < 0, -1.0, 1.0)  # the stored convention: the first point >= 0 on each axis
    plane = trajectory_planes(store).iloc[0]["plane"]
    np.testing.assert_allclose(np.asarray(plane["coords"]), coords, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plane["explained"], (s[:2] ** 2) / (s**2).sum(), rtol=1e-7)
    assert plane["epochs"] == [0, 1, 2, 3, 4]

    # one point of the loss plane, by a plain forward pass at theta_final + a d1 + b d2
    d = vt[:2] * np.where(((thetas - thetas[-1]) @ vt[:2].T)[0] < 0, -1.0, 1.0)[:, None]
    i, j = 1, 3
    theta = thetas[-1] + plane["alphas"][i] * d[0] + plane["betas"][j] * d[1]
    model = final.model.double()
    torch.nn.utils.vector_to_parameters(torch.from_numpy(theta), [p for p in model.parameters() if p.requires_grad])
    bundle = load_data(final.spec.data)
    x, y = stack_examples(bundle.train, select_indices(len(bundle.train), 128, 0), "cpu")
    with torch.no_grad():
        expected = float(F.cross_entropy(model.eval()(x.double()), y))
    assert plane["grid"][i][j] == pytest.approx(expected, rel=1e-5)

    # the last epoch's curvature is `analyze hessian` on the final weights, same examples and seeds
    hid = run_hessian(HessianSpec(target=str(run), n_examples=128, probes=8, iters=12, top_k=1, device="cpu"), store, quiet=True)
    h = store.get_run(hid).summary
    points = trajectory_points(store)
    last = points[points["epoch"] == 4].iloc[0]
    assert last["trace"] == pytest.approx(h["trace"], rel=1e-9)
    assert last["top_eig"] == pytest.approx(h["top_eigs"][0], rel=1e-9)
    assert last["loss"] == pytest.approx(h["loss"], rel=1e-9)
    assert sorted(points["epoch"]) == [0, 1, 2, 3, 4] and (points["run_id"] == aid).all()
    assert set(build_tables(store, which="trajectory")["trajectory"]["epoch"]) == {0, 1, 2, 3, 4}


def test_every_n_analyses_every_nth_kept_epoch_and_the_last(store) -> None:  # noqa: ANN001
    run = run_training(_spec(epochs=5), store, quiet=True)
    run_trajectory(TrajectorySpec(target=str(run), n_examples=64, probes=4, iters=6, every=2, pca=False, device="cpu"),
                   store, quiet=True)
    assert sorted(trajectory_points(store)["epoch"]) == [0, 2, 4, 5]
    assert trajectory_planes(store).empty


def test_a_run_without_kept_epochs_is_refused_in_one_line(store) -> None:  # noqa: ANN001
    run = run_training(_spec(epochs=1, keep_epochs=0), store, quiet=True)
    with pytest.raises(SpecError, match="--keep-epochs"):
        run_trajectory(TrajectorySpec(target=str(run), device="cpu"), store, quiet=True)
    with pytest.raises(SpecError, match="needs a run id"):
        run_trajectory(TrajectorySpec(target="/some/file.pt", device="cpu"), store, quiet=True)


def test_cli_trajectory_and_report_plots(tmp_path) -> None:  # noqa: ANN001
    from ssbench.cli import app

    db = f"sqlite:///{tmp_path / 'r.db'}"
    runner = CliRunner()
    common = ["--db", db, "--artifacts", str(tmp_path), "--device", "cpu", "--quiet"]
    r = runner.invoke(app, ["train", "--rule", "usf", "--model", "mlp", "--hidden", "8", "--dataset", "digits",
                            "--epochs", "3", "--keep-epochs", "1", "--val-fraction", "0", *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", "trajectory", "1", "--n", "64", "--probes", "4", "--iters", "6", "--points", "4", *common])
    assert r.exit_code == 0, r.output
    out = tmp_path / "rep"
    r = runner.invoke(app, ["report", "--db", db, "--artifacts", str(tmp_path), "--out", str(out), "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert (out / "trajectory.csv").exists()
    assert list(out.glob("trajectory_*.png")) and list(out.glob("curvature-over-training_*.png"))
