"""Every attack on a small batch: eps=0, threat model, BP accuracy drops, fast sweep = naive loop,
eval mode / BatchNorm buffers untouched, library faults worked around, CE vs margin loss."""
from __future__ import annotations

import warnings

import foolbox as fb
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from ssbench.attacks import ATTACKS, eval_guard, gradient_source, run_sweep, select_indices, suite_attacks
from ssbench.attacks.base import seeded
from ssbench.errors import SsbenchError
from test_attacks_common import Scaled, accuracy, digits, trained

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


CLASSIFIERS = suite_attacks("all")  # the hashing suite's attacks need a hashing model (test_retrieval_attacks.py)
BUDGETED = [n for n in CLASSIFIERS if not ATTACKS.get(n).minimum_norm]
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
    assert accuracy(model, adv, y) < clean - 0.25


@pytest.mark.parametrize("name", ["tpgd", "onepixel", "boundary", "hsj"])
def test_bp_accuracy_falls_along_the_curve(name):
    """The attacks without a fixed-budget drop test above (or, for TPGD, whose loss is not the label
    loss): on a BP model the curve starts at clean accuracy, never rises and ends below it. Budgeted
    attacks run the naive per-eps loop so monotonicity is not built in by the cumulative rule."""
    x, y = batch(16 if name == "onepixel" else 32)  # OnePixel's differential evolution is slow on CPU
    model = trained("bp")
    clean = accuracy(model, x, y)
    minimum_norm = ATTACKS.get(name).minimum_norm
    curve = run_sweep(make(name), model, model, x, y, [0.0, 0.05, 0.1, 0.2, 0.3], mode="exact",
                      fast=minimum_norm)
    r = curve.robust()
    assert curve.eps[-1] == (5.0 if name == "onepixel" else 0.3)
    assert r[0] == pytest.approx(clean)
    assert r[-1] < clean - (0.1 if name == "boundary" else 0.3)  # boundary: 50 steps minimise l2 only
    # per-eps runs draw fresh randomness at every budget: one example of slack
    slack = 0.0 if minimum_norm else 1.0 / len(x) + 1e-9
    assert all(b <= a + slack for a, b in zip(r, r[1:])), r


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


@pytest.mark.parametrize("name", CLASSIFIERS)
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


def test_margin_loss_brute_force():
    from ssbench.attacks.losses import margin, runner_up

    z = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 7, (20,), generator=torch.Generator().manual_seed(1))
    for i in range(20):
        others = [(float(z[i, j]), j) for j in range(7) if j != int(y[i])]
        best, j_star = max(others)
        assert float(margin(z, y)[i]) == pytest.approx(best - float(z[i, y[i]]))
        assert int(runner_up(z, y)[i]) == j_star


def test_margin_pgd_loop_is_torchattacks_pgd_with_ce():
    """pgd_linf (which runs the margin variant) has torchattacks.PGD's random start, step and
    projection: with the CE loss and the same seed it returns the same images."""
    from ssbench.attacks.pgd import pgd_linf

    x, y = batch(24)
    model = trained("bp")
    with seeded(3, x.device):
        ours = pgd_linf(model, x, y, 0.1, 0.02, 6, "ce")
    with seeded(3, x.device):
        theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=6, random_start=True).forward(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_fgsm_ce_saturates_where_margin_does_not():
    """Logits x1000 (same decisions): float32 CE is exactly 0 on confident examples, its exact
    gradient too, sign(0) = 0 and FGSM leaves them where they are even at eps 0.3; the margin loss
    breaks them. Independent reading: the CE input gradient of those examples, by plain autograd."""
    x, y = batch(64)
    model = Scaled(trained("fa"), 1000.0).eval()
    grid = [0.0, 0.1, 0.3]
    curves = {}
    for loss in ("ce", "margin"):
        with gradient_source("exact", model) as g:
            curves[loss] = run_sweep(ATTACKS.get("fgsm")(loss=loss), model, g, x, y, grid, mode="exact")
        assert all(p["loss"] == loss for p in curves[loss].params)
    ce_alive, margin_alive = curves["ce"].correct[-1], curves["margin"].correct[-1]
    stuck = ce_alive & ~margin_alive  # survive CE-FGSM at 0.3, broken by margin-FGSM
    assert int(stuck.sum()) >= 10
    assert float(margin_alive.float().mean()) < 0.2
    with gradient_source("exact", model) as g:
        xs = x[stuck].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(g(xs), y[stuck], reduction="sum"), xs)
    assert (grad.flatten(1).abs().sum(1) == 0).all()


def test_margin_pgd_within_budget_and_breaks_saturated_model():
    x, y = batch(48)
    model = Scaled(trained("fa"), 1000.0).eval()
    clean = accuracy(model, x, y)
    eps = 0.1
    with gradient_source("exact", model) as g:
        adv_m = ATTACKS.get("pgd")(steps=10, loss="margin").perturb(g, x, y, eps)
        adv_c = ATTACKS.get("pgd")(steps=10, loss="ce").perturb(g, x, y, eps)
    assert float((adv_m - x).abs().max()) <= eps + 1e-6 and adv_m.min() >= 0 and adv_m.max() <= 1
    assert accuracy(model, adv_m, y) < accuracy(model, adv_c, y) - 0.2
    assert accuracy(model, adv_c, y) > clean - 0.1  # CE: saturated, (almost) nothing moves


def test_loss_option_is_validated_and_stored():
    assert make("pgd").params(0.1)["loss"] == "ce"
    assert ATTACKS.get("fgsm")(loss="margin").params(0.1)["loss"] == "margin"
    assert ATTACKS.get("apgd-dlr")().params(0.1)["loss"] == "dlr"  # fixed losses keep their own
    with pytest.raises(SsbenchError, match="loss"):
        ATTACKS.get("pgd")(loss="hinge")
    with pytest.raises(SsbenchError, match="fixed loss"):
        ATTACKS.get("apgd-ce")(loss="margin")


class BatchStats(nn.Module):
    """A hidden layer normalised with the *batch's* statistics whatever eval() says (a BatchNorm
    left in training mode by a custom forward): deterministic for a given batch, not per image."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        h = self.net[:3](x)
        return self.net[3:](F.batch_norm(h, None, None, training=True))


def test_eps0_check_catches_a_batch_dependent_forward():
    from ssbench.attacks import curve_checks
    from ssbench.attacks.starting import predict

    x, y = batch(200)
    leaky = BatchStats(trained("bp")).eval()
    clean = predict(leaky, x, 256) == y
    assert torch.equal(predict(leaky, x, 256) == y, clean)  # repeatable: same batching, same labels
    for name in ("fgsm", "pgd", "tpgd"):
        curve = run_sweep(make(name), leaky, leaky, x, y, [0.0, 0.1], mode="exact", batch_size=256)
        check = [c for c in curve_checks([curve], float(clean.float().mean()), 10, clean_correct=clean)
                 if c.name == "eps0_equals_clean"]
        assert check[0].passed is False, name
    sound = trained("bp")
    clean = predict(sound, x) == y
    curve = run_sweep(make("pgd"), sound, sound, x, y, [0.0, 0.1], mode="exact")
    assert torch.equal(curve.correct[0], clean)
    check = [c for c in curve_checks([curve], float(clean.float().mean()), 10, clean_correct=clean)
             if c.name == "eps0_equals_clean"]
    assert check[0].passed is True
