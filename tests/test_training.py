"""Training job, checkpoints and the run record, on scikit-learn digits (seconds on CPU)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from ssbench.errors import CheckpointError, SpecError
from ssbench.rules import feedback_layers, model_rule
from ssbench.specs import DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import open_store
from ssbench.training import evaluate_classifier, load_trained, run_training
from ssbench.data import load_data

DIGITS_03 = DataSpec(name="digits", classes=(0, 1, 2, 3, 4), val_fraction=0.2)
DIGITS_59 = DataSpec(name="digits", classes=(5, 6, 7, 8, 9), val_fraction=0.2)
MLP = ModelSpec(name="mlp", hidden=(64, 64))


def _pretrain(store, **kw) -> int:  # noqa: ANN001
    spec = TrainSpec(kind="pretrain", data=DIGITS_03, model=MLP, optim=OptimSpec(lr=0.05), epochs=4, batch_size=64, **kw)
    return run_training(spec, store, quiet=True)


def test_pretrain_then_finetune_records_everything(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    pre = _pretrain(store)
    run = store.get_run(pre)
    assert run.status == "finished" and run.kind == "pretrain" and run.rule == "bp"
    test_acc = run.summary["test_accuracy"]
    assert test_acc > 0.85  # 5 digit classes, a 64-64 MLP: far above chance (0.2)

    spec = TrainSpec(kind="finetune", source=str(pre), data=DIGITS_59, model=MLP, rule=RuleSpec(name="frsf"),
                     optim=OptimSpec(lr=0.02, head_lr=0.05), epochs=3, batch_size=64)
    ft = run_training(spec, store, quiet=True)
    frun = store.get_run(ft)
    assert frun.parent_id == pre and frun.rule == "frsf" and frun.status == "finished"
    # checkpoints are recorded with the sha256 of the file on disk
    ck = store.checkpoint(ft, "best")
    assert hashlib.sha256(Path(ck.path).read_bytes()).hexdigest() == ck.sha256
    # the exported model reloads with its rule and gives the stored test accuracy exactly
    trained = load_trained(store, ft)
    assert model_rule(trained.model) == "frsf"
    assert len(feedback_layers(trained.model)) == 3
    acc = evaluate_classifier(trained.model, load_data(DIGITS_59).test, torch.device("cpu"))["accuracy"]
    assert acc == pytest.approx(frun.summary["test_accuracy"], abs=1e-12)
    metrics = store.frame_metrics()
    mine = metrics[metrics.run_id == ft]
    assert set(mine.epoch) == {1, 2, 3}
    assert {"loss", "accuracy"} <= set(mine[mine.split == "val"].name)
    align = store.frame_alignment()
    a = align[align.run_id == ft]
    assert set(a.epoch) == {0, 1, 2, 3}  # epoch 0 = at conversion
    assert a[a.epoch == 0].norm_ratio.between(0.99, 1.01).all()  # B scaled to the pretrained W


def test_finetune_keeps_pretrained_forward_weights(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    pre = _pretrain(store)
    src = load_trained(store, pre).model
    spec = TrainSpec(kind="finetune", source=str(pre), data=DIGITS_03, model=MLP, rule=RuleSpec(name="usf"),
                     optim=OptimSpec(lr=1e-12), epochs=1, batch_size=64, select="last")
    ft = load_trained(store, run_training(spec, store, quiet=True)).model
    for (n, a), (_, b) in zip(src.named_parameters(), ft.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=n)  # lr ~ 0: nothing moved


def test_failed_run_is_marked_failed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    spec = TrainSpec(kind="pretrain", data=DIGITS_03, model=MLP, optim=OptimSpec(lr=1e12, momentum=0.0), epochs=3, batch_size=64)
    with pytest.raises(FloatingPointError):
        run_training(spec, store, quiet=True)
    (run,) = store.list_runs()
    assert run.status == "failed" and "loss became" in run.error


def test_checkpoint_errors(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    pre = _pretrain(store)
    wrong_arch = TrainSpec(kind="finetune", source=str(pre), data=DIGITS_59, model=ModelSpec(name="resnet20"), rule=RuleSpec(name="fa"))
    with pytest.raises(CheckpointError, match="holds a mlp model, not resnet20"):
        run_training(wrong_arch, store, quiet=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable ssbench checkpoint"):
        load_trained(store, str(bad))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ssbench checkpoint"):
        load_trained(store, str(tmp_path / "foreign.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        load_trained(store, str(tmp_path / "missing.pt"))
    from ssbench.training.checkpoint import model_from_checkpoint, read_checkpoint

    payload = read_checkpoint(store.checkpoint(pre, "best").path)
    with pytest.raises(CheckpointError, match="trained with rule bp, not frsf"):
        model_from_checkpoint(payload, expect_rule="frsf")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="finetune needs a source"):
        TrainSpec(kind="finetune")
    with pytest.raises(ValueError, match="pretrain is backprop"):
        TrainSpec(kind="pretrain", rule=RuleSpec(name="fa"))
    with pytest.raises(ValueError, match="extra"):
        TrainSpec.model_validate({"kind": "pretrain", "epochz": 3})
    with pytest.raises(ValueError):
        RuleSpec(name="xfa")  # type: ignore[arg-type]


def test_dfa_and_ifa_train_from_scratch(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    for rule in (RuleSpec(name="dfa"), RuleSpec(name="ifa", theta=30.0)):
        spec = TrainSpec(kind="train", data=DIGITS_03, model=MLP, rule=rule, optim=OptimSpec(lr=0.05), epochs=4, batch_size=64)
        run = store.get_run(run_training(spec, store, quiet=True))
        assert run.summary["test_accuracy"] > 0.6, rule.name  # both rules learn (chance 0.2)
    align = store.frame_alignment()
    ifa0 = align[(align.run_id == run.id) & (align.epoch == 0)]
    assert ifa0.angle_deg.sub(30.0).abs().max() < 0.01
