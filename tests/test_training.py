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


def _head(model):  # noqa: ANN001, ANN202
    from ssbench.models import head_of

    return head_of(model)[1]


def test_head_is_new_for_other_classes_and_kept_for_the_same(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    pre = _pretrain(store)
    src = load_trained(store, pre).model
    src_body = [p.detach().clone() for n, p in src.named_parameters() if not n.startswith("net.fc.")]

    def finetune(data: DataSpec, reset: bool | None) -> tuple[torch.nn.Module, str]:
        # lr ~ 0 and the last epoch exported: whatever differs from the source was replaced, not learned
        spec = TrainSpec(kind="finetune", source=str(pre), data=data, model=MLP, rule=RuleSpec(name="usf"),
                         optim=OptimSpec(lr=1e-12), epochs=1, batch_size=64, select="last", reset_head=reset)
        run_id = run_training(spec, store, quiet=True)
        return load_trained(store, run_id).model, store.get_run(run_id).summary["head"]

    for data, reset, expect in [
        (DIGITS_59, None, "new"),  # the quickstart case: 5 classes -> 5 other classes
        (DIGITS_03, None, "kept"),
        (DIGITS_59, False, "kept"),  # --keep-head
        (DIGITS_03, True, "new"),  # --reset-head
    ]:
        model, head = finetune(data, reset)
        assert head == expect, (data.classes, reset)
        same = torch.equal(_head(model).weight, _head(src).weight)
        assert same == (expect == "kept"), (data.classes, reset)
        body = [p for n, p in model.named_parameters() if not n.startswith("net.fc.")]
        assert all(torch.equal(a, b) for a, b in zip(body, src_body))  # the backbone always carries over


def test_same_classes_compares_data_set_and_class_list() -> None:
    from ssbench.training.checkpoint import ModelMeta
    from ssbench.training.job import same_classes

    bundle = load_data(DIGITS_03)
    meta = ModelMeta(model={"name": "mlp"}, num_classes=5, in_channels=1, image_size=8, mean=[0.0], std=[1.0],
                     task="classification", rule=None, class_names=["0", "1", "2", "3", "4"])
    assert same_classes(DIGITS_03, meta, DIGITS_03, bundle)
    # same class ids of another data set, or the same classes in another order: other meaning per output
    assert not same_classes(DataSpec(name="mnist", classes=(0, 1, 2, 3, 4)), meta, DIGITS_03, bundle)
    reordered = DataSpec(name="digits", classes=(4, 3, 2, 1, 0), val_fraction=0.2)
    assert not same_classes(DIGITS_03, meta, reordered, load_data(reordered))
    # checkpoints without class names: class ids, None meaning all of them
    old = ModelMeta(**{**meta.as_dict(), "class_names": None, "num_classes": 10})
    full = DataSpec(name="digits")
    assert same_classes(full, old, DataSpec(name="digits", classes=tuple(range(10))), load_data(full))
    assert not same_classes(full, old, DIGITS_03, bundle)


def test_keep_head_that_cannot_fit_is_an_error(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    pre = _pretrain(store)
    ten = DataSpec(name="digits", val_fraction=0.2)
    spec = TrainSpec(kind="finetune", source=str(pre), data=ten, model=MLP, rule=RuleSpec(name="fa"), reset_head=False)
    with pytest.raises(CheckpointError, match="has 5 outputs, the data 10 classes"):
        run_training(spec, store, quiet=True)
    spec = TrainSpec(kind="finetune", source=str(pre), data=DIGITS_03, model=MLP, task="hashing", reset_head=False)
    with pytest.raises(CheckpointError, match="classification model; a hashing run needs a new head"):
        run_training(spec, store, quiet=True)


def test_optim_spec_rejects_options_it_would_ignore() -> None:
    with pytest.raises(ValueError, match="multistep needs milestones"):
        OptimSpec(scheduler="multistep")
    with pytest.raises(ValueError, match="milestones are a multistep option"):
        OptimSpec(scheduler="step", milestones=(3,))
    with pytest.raises(ValueError, match="increasing"):
        OptimSpec(scheduler="multistep", milestones=(5, 3))
    with pytest.raises(ValueError, match="nesterov needs optimizer sgd"):
        OptimSpec(name="adam", nesterov=True)
    with pytest.raises(ValueError, match="nesterov needs optimizer sgd"):
        OptimSpec(momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        OptimSpec(name="adam", betas=(0.9, 1.0))


def test_exploding_loss_is_recorded_as_diverged(tmp_path: Path) -> None:
    """Adam with a huge step keeps numbers finite while logits (and the loss) explode: the run
    finishes, but its summary says it diverged, at which epoch and how far; a sane run says nothing."""
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    wild = TrainSpec(kind="train", data=DIGITS_03, model=MLP, optim=OptimSpec(name="adam", lr=30.0), epochs=2, batch_size=64)
    run = store.get_run(run_training(wild, store, quiet=True))
    div = run.summary["diverged"]
    first_epoch_loss = store.frame_metrics().query("run_id == @run.id and split == 'train' and name == 'loss'")
    assert div["epoch"] == int(first_epoch_loss.sort_values("epoch").query("value > 100 * @div['first_batch_loss']").epoch.iloc[0])
    assert div["train_loss"] > 100 * div["first_batch_loss"]
    sane = store.get_run(_pretrain(store))
    assert "diverged" not in sane.summary
