"""Issue-level acceptance on the real data set: full Fashion-MNIST, LeNet, CPU (about 2 minutes).

Pretrain 3 epochs BP -> test accuracy >= 0.85; fine-tune that checkpoint 2 epochs with bp, usf and
frsf: the sign-symmetric rules stay within 2 points of BP fine-tuning.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ssbench.specs import DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import open_store
from ssbench.training import run_training

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="apt-get install dataset-fashion-mnist"),
]


def test_lenet_bp_pretrain_and_sign_symmetric_finetune(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'fm.db'}")
    data = DataSpec(name="fashion-mnist")
    pre = run_training(
        TrainSpec(kind="pretrain", data=data, model=ModelSpec(name="lenet"), optim=OptimSpec(lr=0.05), epochs=3, batch_size=128),
        store, quiet=True,
    )
    bp_acc = store.get_run(pre).summary["test_accuracy"]
    assert bp_acc >= 0.85
    accs = {}
    for rule in ("bp", "usf", "frsf"):
        spec = TrainSpec(kind="finetune", source=str(pre), data=data, model=ModelSpec(name="lenet"),
                         rule=RuleSpec(name=rule), optim=OptimSpec(lr=0.01), epochs=2, batch_size=128)
        accs[rule] = store.get_run(run_training(spec, store, quiet=True)).summary["test_accuracy"]
    print(f"\nFashion-MNIST LeNet: pretrain BP {bp_acc:.4f}; fine-tune 2 epochs: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    assert accs["usf"] >= accs["bp"] - 0.02
    assert accs["frsf"] >= accs["bp"] - 0.02
