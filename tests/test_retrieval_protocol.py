"""Retrieval split, list files, hash head attachment."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ssbench.errors import DataNotFoundError
from ssbench.retrieval.heads import HashHead, attach_hash_head, code_scale
from ssbench.retrieval.metrics import relevance
from ssbench.data.lists import load_list_retrieval
from ssbench.retrieval.protocol import RetrievalSplit, class_balanced_split


def test_class_balanced_split(tmp_path):
    g = torch.Generator().manual_seed(1)
    test_y = torch.randint(0, 4, (200,), generator=g)
    train_y = torch.randint(0, 4, (600,), generator=g)
    val_y = torch.randint(0, 4, (50,), generator=g)
    labels = torch.cat([test_y, train_y, val_y])
    sizes = {"test": 200, "train": 600, "val": 50}
    s = class_balanced_split(labels, sizes, queries_per_class=10, train_per_class=30, seed=5)
    q, d, t = set(s.query), set(s.database), set(s.train)
    assert len(s.query) == 40 and all(i < 200 for i in s.query)  # queries from test only
    assert q.isdisjoint(d) and q | d == set(range(850))  # database = everything else
    assert t <= d and all(200 <= i < 800 for i in t)  # train: from the database, train split only
    assert torch.bincount(labels[list(s.query)], minlength=4).tolist() == [10] * 4
    assert torch.bincount(labels[list(s.train)], minlength=4).tolist() == [30] * 4
    assert sorted(labels[list(s.query[:4])].tolist()) == [0, 1, 2, 3]  # round-robin: balanced prefixes
    assert s.locate(210) == ("train", 10) and s.locate(805) == ("val", 5)
    s.save(tmp_path / "split.json")
    assert RetrievalSplit.load(tmp_path / "split.json") == s
    assert class_balanced_split(labels, sizes, queries_per_class=10, train_per_class=30, seed=5) == s


def test_list_files(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (10, 12), (i * 80, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "train.txt").write_text("im0.png 1 0 1\nim1.png 0 1 0\n")
    (tmp_path / "test.txt").write_text("im2.png 0 0 1\n")
    (tmp_path / "database.txt").write_text("im0.png 1 0 1\nim1.png 0 1 0\nim2.png 0 0 1\n")
    data = load_list_retrieval(tmp_path, image_size=8)
    assert data.num_classes == 3
    x, y = data.query[0]
    assert x.shape == (3, 8, 8) and 0 <= x.min() and x.max() <= 1 and y.tolist() == [0, 0, 1]
    rel = relevance(data.query.label_matrix, data.database.label_matrix)
    assert rel.tolist() == [[True, False, True]]  # shares label 2 with im0 and im2
    (tmp_path / "test.txt").unlink()
    with pytest.raises(DataNotFoundError, match="test.txt"):
        load_list_retrieval(tmp_path)


def test_attach_hash_head_keeps_backbone_and_scale():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    w1 = net[1].weight
    attach_hash_head(net, 12)
    assert net[1].weight is w1 and isinstance(net[3], HashHead) and net[3].fc.in_features == 5
    x = torch.randn(4, 8)
    z = net[3].fc(net[2](net[1](net[0](x))))
    assert torch.allclose(net(x), torch.tanh(z))
    with code_scale(net, 3.0):
        assert torch.allclose(net(x), torch.tanh(3 * z))
    assert net[3].scale == 1.0
    assert attach_hash_head(net, 12) is net  # idempotent
    with pytest.raises(ValueError):
        attach_hash_head(net, 16)
