"""A tiny hashing model on digits: trained with CSQ, then attacked (HAG, SDHA, FGSM/PGD-hash, HSJ-label)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from ssbench.attacks.modes import gradient_source
from ssbench.data import TensorImageDataset
from ssbench.retrieval.attack_suite import run_hashing_suite
from ssbench.retrieval.attacks import HASH_ATTACKS, Knowledge, RetrievalLabeler
from ssbench.retrieval.heads import HashHead
from ssbench.retrieval.metrics import binarize, mean_average_precision, relevance
from ssbench.retrieval.protocol import encode
from ssbench.retrieval.task import HashingTask
from ssbench.rules import convert
from ssbench.specs import AttackSpec, HashSpec

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
    know = Knowledge(binarize(train_codes), relevance(y, train_labels))
    atk = HASH_ATTACKS.get(name)(steps=30, seed=0)
    with gradient_source("exact", rule_model) as gm:
        same = atk.perturb(gm, x, 0.0, know)
        adv = atk.perturb(gm, x, 0.1, know)
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
    atk = HASH_ATTACKS.get("hsj-label")(steps=3, seed=0)
    adv, dist = atk.min_distance(lab, x, y, px, py)
    ok = torch.isfinite(dist)
    assert ok.any()
    # where a distance is reported the retrieval label really changed, at that L-inf distance
    assert torch.all(lab.labels(adv[ok]) != y[ok]) or torch.all(dist[ok] == 0)
    got = (adv[ok] - x[ok]).flatten(1).abs().amax(1)
    assert torch.allclose(got, dist[ok], atol=1e-5)


def test_suite_end_to_end(trained):
    task, bundle, model = trained
    target = convert(__import__("copy").deepcopy(model), "frsf", seed=0)
    spec = AttackSpec(target="x", suite="hashing", modes=("feedback", "exact"), eps=(0.0, 0.1), n_examples=40,
                      batch_size=20, steps=3, attacks=("hag", "fgsm-hash", "pgd-hash", "sdha", "hsj-label"))
    sweeps, checks = [], []
    res = run_hashing_suite(target, None, bundle, spec, "cpu", on_sweep=sweeps.append, on_sanity=checks.append,
                            queries_per_class=20, train_per_class=100)
    assert len(sweeps) == 4 * 2 + 1  # one sweep per attack x mode (hsj once, mode "query")
    pts = res.points
    assert len(pts) == (4 * 2 + 1) * 2 and all(p["metric"] == "map@1000" and p["n"] == 40 for p in pts)
    # independent check of the clean value: the task's codes of the same 40 queries
    x, y, dc, dl, qc, _, _ = query_setup(task, bundle, model, n=40)
    assert res.clean["map@1000"] == pytest.approx(mean_average_precision(qc, dc, y, dl, 1000), abs=1e-9)
    for p in pts:
        if p["epsilon"] == 0:
            assert p["robust"] == pytest.approx(res.clean["map@1000"], abs=1e-12)
    names = {c["name"] for c in res.checks}
    assert {"eps0-reproduces-clean", "perturbation-within-budget", "map-falls-at-max-eps"} <= names
    assert all(c["passed"] for c in res.checks if c["name"] in ("eps0-reproduces-clean", "perturbation-within-budget"))
    assert {(p["attack"], p["mode"]) for p in pts} >= {("hag", "exact"), ("hsj-label", "query")}


def test_hashing_sweeps_records(trained):
    store = pytest.importorskip("ssbench.store")
    if not hasattr(store, "SweepPoint"):
        pytest.skip("ssbench.store records not built yet")
    from ssbench.retrieval.attack_suite import hashing_sweeps
    from ssbench.specs import TrainSpec

    task, bundle, model = trained

    class Recorder:
        def __init__(self):
            self.sweeps, self.sanity, self.evals = [], [], []

        def add_sweep(self, points):
            self.sweeps.append(points)

        def add_sanity(self, checks):
            self.sanity += checks

        def log_evaluation(self, metric, value, split="test", params=None):
            self.evals.append((metric, value, split))

        def set_summary(self, **kv):
            self.summary = kv

    target = SimpleNamespace(model=model, spec=TrainSpec(task="hashing"), run=SimpleNamespace(id="t"))
    spec = AttackSpec(target="t", suite="hashing", modes=("exact",), eps=(0.0, 0.1), n_examples=20, steps=2, attacks=("hag",))
    rec = Recorder()
    hashing_sweeps(target, None, spec, rec, "cpu", bundle=bundle)
    assert [m for m, _, _ in rec.evals] == ["map@1000", "map@5000", "map@all", "precision@1000"]
    assert rec.summary == {"retrieval_split": {"source": "computed"}}  # the fake run recorded no split
    (points,) = rec.sweeps
    assert all(isinstance(p, store.SweepPoint) for p in points) and len(points) == 2
    assert all(isinstance(c, store.SanityCheck) for c in rec.sanity)
