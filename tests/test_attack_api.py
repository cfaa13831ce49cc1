"""The library's bare-model entry points: ssbench.attack (no store), dir(ssbench), convert(inplace=)."""
from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import ssbench
from ssbench.attacks import ATTACKS, gradient_source
from ssbench.errors import SpecError, SsbenchError


@pytest.fixture(scope="module")
def digits_net():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[:1000]), y[:1000]).backward()
        opt.step()
    return net.eval(), x[1000:1100], y[1000:1100]


def test_dir_lists_the_public_api():
    names = set(dir(ssbench))
    assert {"attack", "convert", "exact_gradients", "open_store", "run_attack", "ATTACKS", "RULES", "__version__"} <= names
    assert not {"import_module", "Any", "annotations"} & names  # the module's own imports are not API
    assert all(callable(getattr(ssbench, n)) or n.isupper() or n.startswith("__") for n in names)


def test_convert_inplace_or_copy(digits_net):
    net, x, _ = digits_net
    copy_of = copy.deepcopy(net)
    twin = ssbench.convert(copy_of, "fa", inplace=False)
    assert twin is not copy_of and not ssbench.feedback_layers(copy_of) and ssbench.feedback_layers(twin)
    same = ssbench.convert(copy_of, "fa")
    assert same is copy_of and ssbench.feedback_layers(copy_of)  # the default: in place, as documented
    with torch.no_grad():
        assert torch.equal(twin(x), net(x)) and torch.equal(same(x), net(x))  # weights kept either way


def test_attack_equals_the_engine_and_a_hand_pgd(digits_net):
    """ssbench.attack on a bare model: the adversarials are PGD's own (same calls the sweep makes:
    clean-correct examples, batch offsets, call = eps index * 100003 + offset), success is
    misclassification of those images, clean-wrong examples come back unchanged."""
    net, x, y = digits_net
    fa = ssbench.convert(copy.deepcopy(net), "fa", seed=0)
    res = ssbench.attack(fa, x, y, "pgd", eps=0.1, mode="exact", steps=10, batch_size=32)
    clean = fa(x).argmax(1) == y
    assert torch.equal(res.clean_correct, clean) and res.mode == "exact" and res.eps == 0.1
    assert torch.equal(res.adversarial[~clean], x[~clean])
    idx = clean.nonzero().flatten()
    pgd = ATTACKS.get("pgd")(steps=10, seed=0)
    with gradient_source("exact", fa) as g:
        hand = torch.cat([pgd.perturb(g, x[idx[b : b + 32]], y[idx[b : b + 32]], 0.1, call=b) for b in range(0, len(idx), 32)])
    assert torch.equal(res.adversarial[idx], hand)
    assert (res.adversarial - x).abs().max() <= 0.1 + 1e-5
    with torch.no_grad():
        assert torch.equal(res.success, fa(res.adversarial).argmax(1) != y)
    assert res.robust_accuracy == pytest.approx(1 - float(res.success.float().mean()))
    assert res.robust_accuracy < float(clean.float().mean()) - 0.2  # the attack does something
    assert not any(m.training for m in fa.modules())  # left as it came (eval)
    # feedback mode follows FA's pseudo-gradient: a weaker attack on the same forward
    weak = ssbench.attack(fa, x, y, "pgd", eps=0.1, mode="feedback", steps=10, batch_size=32)
    assert weak.robust_accuracy > res.robust_accuracy


def test_attack_matches_the_cli_sweep(digits_net, tmp_path):
    """The CLI's stored per-example result on the same examples and seed equals ssbench.attack's."""
    from ssbench.attacks.sweep import select_indices, stack_examples
    from ssbench.data import load_data
    from ssbench.specs import AttackSpec, DataSpec, ModelSpec, TrainSpec
    from ssbench.store import open_store
    from ssbench.training import run_training

    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    spec = TrainSpec(kind="train", data=DataSpec(name="digits"), model=ModelSpec(name="mlp", hidden=(32,)), epochs=2,
                     batch_size=64, device="cpu")
    run = run_training(spec, store, quiet=True)
    aid = ssbench.run_attack(AttackSpec(target=str(run), attacks=("pgd",), modes=("exact",), eps=(0.1,), n_examples=60,
                                        steps=5, batch_size=16, device="cpu"), store, quiet=True)
    point = store.frame_sweeps().query(f"run_id == {aid}").iloc[0]
    model = ssbench.load_trained(store, run).model
    bundle = load_data(spec.data)
    x, y = stack_examples(bundle.test, select_indices(len(bundle.test), 60, 0))
    res = ssbench.attack(model, x, y, "pgd", eps=0.1, steps=5, batch_size=16)
    assert "".join("0" if s else "1" for s in res.success.tolist()) == point["correct"]


def test_attack_refuses_in_one_line(digits_net):
    net, x, y = digits_net
    with pytest.raises(SpecError, match="hashing"):
        ssbench.attack(net, x, y, "hag")
    with pytest.raises(SpecError, match="same length"):
        ssbench.attack(net, x, y[:3])
    with pytest.raises(SsbenchError, match="unknown attack 'nope'; choose from"):
        ssbench.attack(net, x, y, "nope")
