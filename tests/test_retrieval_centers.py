"""Hash centers and hashing losses."""
from __future__ import annotations

import itertools

import pytest
import torch

from ssbench.errors import UnknownNameError
from ssbench.retrieval.centers import hadamard, hamming_matrix, hash_centers, random_centers
from ssbench.retrieval.losses import HASH_LOSSES, make_hash_loss


@pytest.mark.parametrize("k", [4, 16, 64])
def test_hadamard_rows_at_half_distance(k):
    h = hadamard(k)
    assert torch.equal(h @ h.T, k * torch.eye(k))  # orthogonal rows
    d = hamming_matrix(h)
    off = ~torch.eye(k, dtype=torch.bool)
    assert torch.all(d[off] == k / 2)
    c = hash_centers(10, k) if k >= 10 else hash_centers(4, k)
    dc = hamming_matrix(c)
    assert torch.all(dc[~torch.eye(len(c), dtype=torch.bool)] == k / 2)
    assert set(c.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("bits,num,dmin", [(12, 10, 4), (48, 30, 16), (20, 50, 6)])
def test_random_centers_respect_min_distance(bits, num, dmin):
    c = random_centers(num, bits, min_distance=dmin, seed=3)
    assert c.shape == (num, bits)
    for i, j in itertools.combinations(range(num), 2):
        assert int((c[i] != c[j]).sum()) >= dmin
    assert torch.equal(c, random_centers(num, bits, min_distance=dmin, seed=3))  # seeded
    # non power of two -> random centers with the default min distance bits // 4
    c2 = hash_centers(num, bits, seed=1)
    d = hamming_matrix(c2)
    assert torch.all(d[~torch.eye(num, dtype=torch.bool)] >= bits // 4)


def test_random_centers_impossible_raises():
    with pytest.raises(ValueError, match="min_distance"):
        random_centers(20, 4, min_distance=4, tries=200)


def test_csq_loss_matches_hand_computation():
    torch.manual_seed(0)
    loss = make_hash_loss("csq", 4, 8, quantization_weight=0.5)
    u = torch.rand(6, 8) * 1.8 - 0.9
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    c = loss.centers[y]
    p, t = (u + 1) / 2, (c + 1) / 2
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    expect = bce + 0.5 * ((u.abs() - 1) ** 2).mean()
    assert float(loss(u, y)) == pytest.approx(float(expect), rel=1e-5)


def test_dpsh_loss_matches_hand_computation():
    torch.manual_seed(1)
    loss = make_hash_loss("dpsh", 3, 6, quantization_weight=0.1)
    u = torch.rand(5, 6) * 2 - 1
    y = torch.tensor([0, 1, 0, 2, 1])
    total = 0.0
    for i in range(5):
        for j in range(5):
            th = 0.5 * float(u[i] @ u[j])
            s = float(y[i] == y[j])
            total += torch.log1p(torch.exp(torch.tensor(th))).item() - s * th
    expect = total / 25 + 0.1 * float(((u - u.sign()) ** 2).mean())
    assert float(loss(u, y)) == pytest.approx(expect, rel=1e-5)


def test_loss_registry():
    assert set(HASH_LOSSES.names()) >= {"csq", "dpsh"}
    with pytest.raises(UnknownNameError):
        make_hash_loss("nope", 2, 8)
