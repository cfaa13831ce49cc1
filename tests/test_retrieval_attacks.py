"""A tiny hashing model on digits: trained with CSQ, then attacked (HAG, SDHA, FGSM/PGD-hash, HSJ-label)
through the one attack engine (ssbench.attacks: run_sweep with retrieval's scorer)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from ssbench.attacks import ATTACKS, QUERY_MODE, curve_checks, gradient_source, run_sweep
from ssbench.data import TensorImageDataset
from ssbench.errors import SpecError
from ssbench.retrieval.heads import HashHead
from ssbench.retrieval.metrics import average_precision, binarize, mean_average_precision
from ssbench.retrieval.protocol import encode
from ssbench.retrieval.scoring import Reference, RetrievalLabeler, RetrievalScore, build_sets, retrieval_pool
from ssbench.retrieval.task import HashingTask
from ssbench.rules import convert
from ssbench.specs import HashSpec

BITS = 16


def digits_bundle():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    te, tr = perm[:400], perm[400:]
    return SimpleNamespace(
        train=TensorImageDataset(x[tr], y[tr]), val=None, test=TensorImageDataset(x[te], y[te]), num_classes=10, name="digits"
    )


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    bundle = digits_bundle()
    task = HashingTask(HashSpec(bits=BITS, loss="csq"), 10, seed=0, queries_per_class=20, train_per_class=100)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    model = task.prepare_model(net)
    assert isinstance(model[3], HashHead) and model[3].fc.in_features == 128
    train = task.train_dataset(bundle)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    ys = torch.tensor([train[i][1] for i in range(len(train))])
    assert len(ys) == 1000 and torch.bincount(ys).tolist() == [100] * 10
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):  # plain autograd training
        for idx in torch.randperm(len(ys), generator=gen).split(64):
            opt.zero_grad()
            task.loss(model(xs[idx]), ys[idx]).backward()
            opt.step()
    model.eval()
    return task, bundle, model


def query_setup(task, bundle, model, n=100):
    qc, ql, dc, dl = task.query_database_codes(model, bundle, "cpu")
    split = task.split(bundle)
    pool = [bundle.test, bundle.train]
    offs = split.offsets()
    xs = []
    for i in split.query[:n]:
        name, j = split.locate(i)
        xs.append((bundle.test if name == "test" else bundle.train)[j][0])
    return torch.stack(xs), ql[:n], dc, dl, qc[:n], pool, offs


def test_tiny_model_beats_chance_and_test_scores(trained):
    task, bundle, model = trained
    scores = task.test_scores(model, bundle, "cpu")
    assert set(scores) == {"map@1000", "map@5000", "map@all", "precision@1000"}
    # chance: 10 balanced classes -> about 0.1
    assert scores["map@1000"] > 0.6, scores
    assert scores["map@all"] > 0.5, scores
    val = task.val_scores(model, bundle, "cpu")  # no val split: training-set self retrieval
    assert list(val) == ["map@1000"] and val["map@1000"] > 0.6


@pytest.mark.parametrize("name", ["hag", "sdha"])
def test_hag_sdha_lower_map_in_exact_mode(trained, name):
    task, bundle, model = trained
    x, y, dc, dl, _, _, _ = query_setup(task, bundle, model)
    rule_model = convert(__import__("copy").deepcopy(model), "frsf", seed=0)  # same forward, sign-symmetric backward
    with torch.no_grad():
        assert torch.equal(binarize(rule_model(x)), binarize(model(x)))
    clean = mean_average_precision(binarize(model(x)).detach(), dc, y, dl, 1000)
    train_codes, train_labels = encode(model, task.train_dataset(bundle), "cpu")
    know = Reference(binarize(train_codes), train_labels)
    atk = ATTACKS.get(name)(steps=30, seed=0)
    with gradient_source("exact", rule_model) as gm:
        same = atk.perturb(gm, x, y, 0.0, reference=know)
        adv = atk.perturb(gm, x, y, 0.1, reference=know)
    assert torch.equal(same, x)
    with torch.no_grad():
        robust = mean_average_precision(binarize(rule_model(adv)), dc, y, dl, 1000)
        zero = mean_average_precision(binarize(rule_model(same)), dc, y, dl, 1000)
    assert zero == pytest.approx(clean, abs=1e-12)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    print(name, clean, robust)
    assert robust < clean - 0.2, (clean, robust)


def test_hsj_label_and_labeler(trained):
    task, bundle, model = trained
    x, y, dc, dl, qc, _, _ = query_setup(task, bundle, model, n=6)
    lab = RetrievalLabeler(model, dc, dl, 10)
    # nearest database item by brute force, ties to the lowest index
    for i in range(len(x)):
        dist = ((binarize(qc[i : i + 1]) != binarize(dc)).sum(1)).tolist()
        j = min(range(len(dist)), key=lambda t: (dist[t], t))
        assert int(lab.labels(x[i : i + 1])) == int(dl[j])
    train = task.train_dataset(bundle)
    px = torch.stack([train[i][0] for i in range(0, 1000, 5)])
    py = torch.tensor([train[i][1] for i in range(0, 1000, 5)])
    atk = ATTACKS.get("hsj-label")(steps=3, seed=0)
    adv, dist = atk.min_distance(lab, x, y, pool_x=px, pool_y=py)
    ok = torch.isfinite(dist)
    assert ok.any()
    # where a distance is reported the retrieval label really changed, at that L-inf distance
    assert torch.all(lab.labels(adv[ok]) != y[ok]) or torch.all(dist[ok] == 0)
    got = (adv[ok] - x[ok]).flatten(1).abs().amax(1)
    assert torch.allclose(got, dist[ok], atol=1e-5)


def _sets(task, bundle, model, n):
    return build_sets(model, bundle, n, torch.device("cpu"), queries_per_class=20, train_per_class=100)


def test_hashing_sweeps_through_the_engine(trained):
    """Every hashing attack through run_sweep with the retrieval scorer: eps 0 is the clean mAP, each
    point's mAP equals an independent recomputation from the attack's own adversarials (same seeds:
    call = eps index * 100003 + batch offset), and the sanity checks pass on them."""
    task, bundle, model = trained
    target = convert(__import__("copy").deepcopy(model), "frsf", seed=0)
    sets = _sets(task, bundle, model, 40)
    scorer = RetrievalScore(target, sets, 20, torch.device("cpu"))
    x, y = sets.query_x, sets.query_y
    _, _, dc, dl, qc, _, _ = query_setup(task, bundle, model, n=40)
    clean = mean_average_precision(qc, dc, y, dl, 1000)  # the task's own codes of the same queries
    ref = Reference(sets.train_codes, sets.train_labels)
    grid = (0.0, 0.05, 0.1)
    curves = []
    for name in ("hag", "fgsm-hash", "pgd-hash", "sdha", "hsj-label"):
        cls = ATTACKS.get(name)
        atk = cls(steps=None if cls.single_step else 3, seed=0)
        for mode in (("feedback", "exact") if atk.uses_gradients else (QUERY_MODE,)):
            with gradient_source(mode, target) as g:
                c = run_sweep(atk, scorer, g, x, y, grid, mode=mode, batch_size=20, pool=retrieval_pool(sets, 0),
                              reference=ref)
                curves.append(c)
                assert c.metric == "map@1000" and not c.binary and c.n == 40
                assert c.at(0.0) == pytest.approx(clean, abs=1e-9)
                if atk.minimum_norm:
                    assert all(p["sweep"] == "minimum-norm" for p in c.params)
                    continue
                for k, eps in enumerate(grid[1:], start=1):  # by hand: the same calls, then plain mAP
                    adv = torch.cat([atk.perturb(g, x[b : b + 20], y[b : b + 20], eps, call=k * 100_003 + b, reference=ref)
                                     for b in range(0, 40, 20)])
                    assert (adv - x).abs().max() <= eps + 1e-6
                    ap = average_precision(binarize(target(adv)).detach(), dc, y, dl, 1000)
                    assert torch.allclose(c.scores[k], ap, atol=1e-6)
                    assert c.extras[k]["map@5000"] == pytest.approx(
                        mean_average_precision(binarize(target(adv)).detach(), dc, y, dl, 5000), abs=1e-6)
    assert min(c.at(0.1) for c in curves) < clean - 0.05  # the attacks do something
    clean_scores = scorer.score(x, torch.arange(40))["map@1000"]
    checks = curve_checks(curves, clean, 10, clean_correct=clean_scores, chance=scorer.chance)
    names = {c.name for c in checks}
    assert {"eps0_equals_clean", "iterative_le_single_step", "exact_le_feedback", "whitebox_le_blackbox"} <= names
    assert all(c.passed for c in checks if c.name == "eps0_equals_clean")


def test_one_engine_scores_classification_and_hashing(trained):
    """The same run_sweep call, a classifier and a hashing model: each curve's scores are the task's
    own metric of the adversarials the attack returns (accuracy: argmax == label; hashing: AP@1000)."""
    task, bundle, model = trained
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    xs = torch.stack([bundle.train[i][0] for i in range(300)])
    ys = torch.tensor([int(bundle.train[i][1]) for i in range(300)])
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(xs), ys).backward()
        opt.step()
    x, y = xs[:40], ys[:40]
    sets = _sets(task, bundle, model, 40)
    _, _, dc, dl, _, _, _ = query_setup(task, bundle, model, n=40)
    for target, judge, xx, yy in (
        (clf.eval(), clf, x, y),
        (RetrievalScore(model, sets, 64, torch.device("cpu")), None, sets.query_x, sets.query_y),
    ):
        name = "pgd" if judge is not None else "pgd-hash"
        atk = ATTACKS.get(name)(steps=5, seed=0)
        g = clf if judge is not None else model
        curve = run_sweep(atk, target, g, xx, yy, (0.0, 0.1), mode="exact", fast=False)
        adv = atk.perturb(g, xx if judge is None else xx[curve.scores[0]], yy if judge is None else yy[curve.scores[0]],
                          0.1, call=100_003)
        if judge is not None:  # attacked: the clean-correct ones; the rest count as broken
            expect = torch.zeros(40, dtype=torch.bool)
            expect[curve.scores[0].nonzero().flatten()] = judge(adv).argmax(1) == y[curve.scores[0]]
            assert torch.equal(curve.scores[1], expect) and curve.binary and curve.metric == "accuracy"
        else:
            ap = average_precision(binarize(model(adv)).detach(), dc, yy, dl, 1000)
            assert torch.allclose(curve.scores[1], ap, atol=1e-6) and not curve.binary
        points = curve.to_points()  # the same store records
        assert [p.metric for p in points] == [curve.metric] * 2
        assert (points[1].correct is None) == (judge is None)


def test_hsj_label_needs_a_single_label_database(trained):
    task, bundle, model = trained
    sets = _sets(task, bundle, model, 8)
    sets.db_labels = torch.nn.functional.one_hot(sets.db_labels, 10)  # as a multi-label data set
    sets.query_y = torch.nn.functional.one_hot(sets.query_y, 10)
    scorer = RetrievalScore(model, sets, 8, torch.device("cpu"))
    assert scorer.query_model is None
    with pytest.raises(SpecError, match="hsj-label: multi-label database: no retrieval label"):
        run_sweep(ATTACKS.get("hsj-label")(steps=1), scorer, model, sets.query_x, sets.query_y, (0.0,), mode=QUERY_MODE)
