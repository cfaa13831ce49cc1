"""mAP@K / precision@K against a pure-Python brute force (ties, K variants, queries without relevant items)."""
from __future__ import annotations

import random

import pytest
import torch

from ssbench.retrieval.metrics import binarize, hamming_ranking, precision_at, ranking_scores


def brute_force(qcodes, dcodes, qlabels, dlabels, topk):
    """Plain Python: Hamming distance, ranking by (distance, database index), AP@K as defined."""
    aps, precs = [], []
    for q, ql in zip(qcodes, qlabels):
        dist = [sum(1 for a, b in zip(q, d) if (a >= 0) != (b >= 0)) for d in dcodes]
        order = sorted(range(len(dcodes)), key=lambda i: (dist[i], i))
        k = len(order) if topk is None else min(topk, len(order))
        hits, total = 0, 0.0
        for r, i in enumerate(order[:k], 1):
            rel = (ql == dlabels[i]) if isinstance(ql, int) else any(a and b for a, b in zip(ql, dlabels[i]))
            if rel:
                hits += 1
                total += hits / r
        aps.append(total / hits if hits else 0.0)
        precs.append(hits / k)
    return sum(aps) / len(aps), sum(precs) / len(precs)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_brute_force_with_ties(multi, seed):
    rng = random.Random(seed)
    bits, nq, nd, c = 4, 13, 60, 5  # 4 bits: 16 distinct codes for 60 items, so ties everywhere
    # include exact zeros: sign(0) -> +1 must be honoured
    q = torch.tensor([[rng.choice([-1.0, -0.3, 0.0, 0.4, 1.0]) for _ in range(bits)] for _ in range(nq)])
    d = torch.tensor([[rng.choice([-1.0, -0.2, 0.0, 0.7]) for _ in range(bits)] for _ in range(nd)])
    if multi:
        ql = torch.tensor([[int(rng.random() < 0.25) for _ in range(c)] for _ in range(nq)])
        ql[0] = 0  # a query with no label at all: never relevant
        dl = torch.tensor([[int(rng.random() < 0.25) for _ in range(c)] for _ in range(nd)])
        pyq, pyd = ql.tolist(), dl.tolist()
    else:
        ql = torch.tensor([rng.randrange(c + 1) for _ in range(nq)])  # class c absent from the database
        ql[0] = c
        dl = torch.tensor([rng.randrange(c) for _ in range(nd)])
        pyq, pyd = ql.tolist(), dl.tolist()
    for topk in (1, 3, 7, 25, None, 1000):
        expect_map, expect_prec = brute_force(q.tolist(), d.tolist(), pyq, pyd, topk)
        got = ranking_scores(q, d, ql, dl, map_at=(topk,), precision_at=(topk or nd,), chunk=4)
        key = "map@all" if topk is None else f"map@{topk}"
        assert got[key] == pytest.approx(expect_map, abs=1e-6), topk
        assert got[f"precision@{topk or nd}"] == pytest.approx(expect_prec, abs=1e-6)


def test_stable_tie_order_and_sign_zero():
    q = torch.tensor([[0.0, 1.0]])  # -> (+1, +1)
    d = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    assert binarize(q).tolist() == [[1.0, 1.0]]
    assert hamming_ranking(q, d).tolist() == [[1, 3, 0, 2]]  # distance 0: items 1, 3; distance 1: 0, 2


def test_precision_and_all_relevant_zero():
    q = torch.tensor([[1.0, 1.0]])
    d = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert precision_at(q, d, torch.tensor([0]), torch.tensor([1, 0]), k=1) == 0.0
    assert ranking_scores(q, d, torch.tensor([2]), torch.tensor([1, 0]), map_at=(None,))["map@all"] == 0.0
    # the relevant item ranked second: AP = (1/2) / 1
    assert ranking_scores(q, d, torch.tensor([0]), torch.tensor([1, 0]), map_at=(None,))["map@all"] == pytest.approx(0.5)
