"""Every attack on a small batch: eps=0, threat model, BP accuracy drops, fast sweep = naive loop,
eval mode / BatchNorm buffers untouched, library faults worked around."""
from __future__ import annotations

import warnings

import foolbox as fb
import pytest
import torch
import torchattacks
from torch import nn

from ssbench.attacks import ATTACKS, eval_guard, run_sweep, select_indices
from ssbench.attacks.base import seeded
from test_attacks_common import accuracy, digits, trained

# small budgets so the whole file runs in seconds on CPU
FAST = {"pgd": 10, "apgd-ce": 10, "apgd-dlr": 10, "tpgd": 5, "square": 300, "onepixel": 3, "boundary": 50, "hsj": 4}


def make(name: str):
    return ATTACKS.get(name)(steps=FAST.get(name), seed=0)


def batch(n: int = 32):
    _, _, x, y = digits()
    return x[:n], y[:n]


class Counting(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


BUDGETED = [n for n in ATTACKS.names() if not ATTACKS.get(n).minimum_norm]
LINF = [n for n in BUDGETED if ATTACKS.get(n).norm == "linf"]


@pytest.mark.parametrize("name", BUDGETED)
def test_eps0_returns_input_without_model_calls(name):
    x, y = batch(8)
    model = Counting(trained("bp"))
    adv = make(name).perturb(model, x, y, 0.0)
    assert torch.equal(adv, x) and model.calls == 0


def test_torchattacks_eps0_is_identity_but_does_work():
    """Why we short-circuit eps=0: torchattacks returns x but still runs every step."""
    x, y = batch(8)
    model = Counting(trained("bp"))
    adv = torchattacks.PGD(model, eps=0.0, alpha=0.0, steps=5).forward(x, y)
    assert torch.equal(adv, x) and model.calls == 5


@pytest.mark.parametrize("name", LINF)
def test_linf_budget_range_and_bp_accuracy_drops(name):
    x, y = batch(32)
    model = trained("bp")
    clean = accuracy(model, x, y)
    eps = 0.15
    adv = make(name).perturb(model, x, y, eps)
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    if name != "tpgd":  # TPGD maximises KL, not the label loss; weaker at a fixed budget
        assert accuracy(model, adv, y) < clean - 0.25


def test_onepixel_changes_at_most_k_pixels():
    x, y = batch(6)
    adv = make("onepixel").perturb(trained("bp"), x, y, 2)
    assert int((adv != x).any(1).flatten(1).sum(1).max()) <= 2
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("name", ["hsj", "boundary"])
def test_minimum_norm_curve_agrees_with_its_adversarials(name):
    """Read independently: the adversarial returned is misclassified by the model and its L-inf
    distance is the one the curve uses (broken at eps iff distance <= eps)."""
    x, y = batch(16)
    model = trained("bp")
    ok = model(x).argmax(1) == y
    adv, dist = make(name).min_distance(model, x[ok], y[ok], pool_x=x, pool_y=y)
    found = torch.isfinite(dist)
    assert found.any()
    assert (model(adv[found]).argmax(1) != y[ok][found]).all()
    assert torch.allclose(dist[found], (adv[found] - x[ok][found]).flatten(1).abs().amax(1))
    assert adv.min() >= 0 and adv.max() <= 1
    curve = run_sweep(make(name), model, model, x, y, [0.0, 0.1, 1.0], mode="query")
    for e, r in zip(curve.eps, curve.robust()):
        expect = (ok.sum() - (dist <= e).sum()).item() / len(x)
        assert abs(r - expect) < 1e-9


def test_bp_sweep_monotone_and_decreasing():
    x, y = batch(64)
    model = trained("bp")
    curve = run_sweep(make("pgd"), model, model, x, y, [0, 0.05, 0.1, 0.2, 0.3], mode="exact")
    r = curve.robust()
    assert r[0] == pytest.approx(accuracy(model, x, y))
    assert all(a >= b for a, b in zip(r, r[1:])) and r[-1] < 0.1


def test_fast_sweep_equals_naive_torchattacks_loop_for_fgsm():
    x, y = batch(120)
    model = trained("bp")
    grid = [0.0, 0.02, 0.05, 0.1, 0.2]
    fast = run_sweep(make("fgsm"), model, model, x, y, grid, mode="exact", batch_size=37)
    # naive: torchattacks.FGSM on every example at every eps, then the containment rule
    alive = model(x).argmax(1) == y
    for k, e in enumerate(grid):
        adv = x if e == 0 else torchattacks.FGSM(model, eps=e)(x, y)
        with torch.no_grad():
            alive = alive & (model(adv).argmax(1) == y)
        assert torch.equal(fast.correct[k], alive), e
        assert fast.params[k]["sweep"] == "cumulative" and fast.params[k]["monotone_assumption"]
    naive = run_sweep(make("fgsm"), model, model, x, y, grid, mode="exact", fast=False)
    assert all(a <= b + 1e-12 for a, b in zip(fast.robust(), naive.robust()))
    assert naive.params[1]["sweep"] == "per-eps"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_model_stays_eval_and_batchnorm_buffers_unchanged(name):
    x, y = batch(12)
    model = trained("bp", "cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_sweep(make(name), model, model, x, y, [0.0, 0.1], mode="exact")
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_torchattacks_training_mode_fault_is_caught_and_undone():
    x, y = batch(12)
    model = trained("bp", "cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    atk = torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=2)
    atk.set_model_training_mode(model_training=True, batchnorm_training=True)
    # the library fault itself, on a throwaway copy: eval model left in train mode, BN stats moved
    import copy

    victim = copy.deepcopy(model)
    atk_v = torchattacks.PGD(victim, eps=0.1, alpha=0.01, steps=2)
    atk_v.set_model_training_mode(model_training=True, batchnorm_training=True)
    atk_v(x, y)
    assert victim.training
    assert not torch.equal(victim[1].running_mean, before["1.running_mean"])
    # our guard: refuses, restores the buffers and the eval flags
    with pytest.raises(RuntimeError, match="buffers"):
        with eval_guard(model):
            atk(x, y)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_attacks_do_not_reset_the_callers_rng():
    """torchattacks' Square calls torch.random.manual_seed(seed) on the global generator."""
    x, y = batch(4)
    torch.manual_seed(123)
    torch.rand(1)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(1)
    make("square").perturb(trained("bp"), x, y, 0.05)
    assert torch.equal(torch.rand(3), expected)
    with seeded(5, torch.device("cpu")):
        a = torch.rand(2)
    with seeded(5, torch.device("cpu")):
        assert torch.equal(torch.rand(2), a)


class MeanBrightness(nn.Module):
    """Class 1 when the mean pixel > 0.3, else class 0: uniform noise (mean 0.5) is always class 1."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.3 - m, m - 0.3], 1) * 50


def test_decision_attacks_survive_a_failed_random_init():
    x = torch.cat([torch.full((1, 1, 8, 8), 0.1), torch.full((1, 1, 8, 8), 0.6)])
    y = torch.tensor([0, 1])
    model = MeanBrightness().eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="init_attack failed"):
        warnings.simplefilter("ignore")
        fb.attacks.HopSkipJumpAttack(steps=2).run(fmodel, x, fb.criteria.Misclassification(y))
    for name in ("hsj", "boundary"):
        adv, dist = ATTACKS.get(name)(steps=5).min_distance(model, x, y, pool_x=x, pool_y=y)
        assert torch.isfinite(dist).all()
        assert (model(adv).argmax(1) != y).all()


def test_selection_is_a_fixed_prefix_of_a_seeded_permutation():
    a, b = select_indices(100, 10, 3), select_indices(100, 20, 3)
    assert a == b[:10] and len(set(b)) == 20 and select_indices(100, 10, 4) != a
