"""How a retrieval system is judged under attack: the queries, the target's database codes, the
labelled set the attacker knows, and the scorer the attack engine (``ssbench.attacks``) calls.

Quality is always the *target's*: adversarial queries are encoded by the target and ranked against
the target's database codes. The robust metric is ``map@1000`` per query (AP@1000, its mean over the
queries is mAP@1000); map@5000, map@all and precision@1000 ride along. Black-box attacks query the
retrieval label (:class:`RetrievalLabeler`: the class of the nearest database item).

This module imports nothing from ``ssbench.attacks``: the attacks depend on retrieval, not back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset

from ssbench.errors import SpecError
from ssbench.retrieval.metrics import TEST_METRICS, binarize, hamming_distance, ranking_scores, relevance
from ssbench.data.lists import ListRetrievalData
from ssbench.retrieval.protocol import (
    SPLIT_FILE,
    RetrievalSplit,
    bundle_pool,
    class_balanced_split,
    encode,
    load_split_record,
    split_from_record,
)

METRIC = "map@1000"
POOL = 500  # training images the decision-based attack may start from


@torch.no_grad()
def clean_codes(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([binarize(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


@dataclass
class Reference:
    """What a hashing attacker knows besides the image: +-1 codes, under the attacker's gradient
    module, of a labelled reference set (the hash-training set), and their labels (SDHA pushes a
    query away from the codes of the items relevant to it)."""

    codes: Tensor  # (N, K)
    labels: Tensor  # (N,) or (N, C)


@dataclass
class RetrievalSets:
    """Everything the sweeps need: attacked queries (images), the target's database codes, and the
    labelled reference set the attacker knows (the hash-training set)."""

    query_x: Tensor
    query_y: Tensor
    db_codes: Tensor
    db_labels: Tensor
    train_ds: Any
    train_labels: Tensor
    train_codes: Tensor  # target's codes of the training set
    num_classes: int
    split: dict | None = None  # RetrievalSplit.to_dict() for single-label pools


def _gather(ds, indices: Sequence[int]) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    xs, ys = [], []
    for i in indices:
        x, y = ds[i]
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    return torch.stack(xs), torch.stack(ys)


def build_sets(
    model: nn.Module, bundle, n: int, device: torch.device, *, split_seed: int = 0,  # noqa: ANN001
    queries_per_class: int = 100, train_per_class: int = 500, split: RetrievalSplit | None = None,
) -> RetrievalSets:
    """``split``: the one recorded with the fine-tune run (reused as is); None draws it afresh."""
    lists = getattr(bundle, "retrieval", None)
    if isinstance(lists, ListRetrievalData):
        qx, qy = _gather(lists.query, range(min(n, len(lists.query))))
        dc, dl = encode(model, lists.database, device)
        tc, tl = encode(model, lists.train, device)
        return RetrievalSets(qx, qy, binarize(dc), dl, lists.train, tl, binarize(tc), lists.num_classes)
    parts, sizes = bundle_pool(bundle)
    enc = [encode(model, p, device) for p in parts]
    codes, labels = torch.cat([c for c, _ in enc]), torch.cat([y for _, y in enc])
    if split is None:
        split = class_balanced_split(labels, sizes, queries_per_class=queries_per_class, train_per_class=train_per_class, seed=split_seed)
    elif dict(split.sizes) != sizes:
        raise SpecError(f"retrieval split drawn on a pool of {dict(split.sizes)}, the data gives {sizes}")
    by_name = dict(zip(sizes, parts))
    located = [split.locate(i) for i in split.query[:n]]
    pairs = [_gather(by_name[name], [j]) for name, j in located]
    qx, qy = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    d = torch.tensor(split.database, dtype=torch.long)
    t = torch.tensor(split.train, dtype=torch.long)
    start = split.offsets()["train"]
    train_ds = Subset(bundle.train, [i - start for i in split.train])
    return RetrievalSets(
        qx, qy, binarize(codes[d]), labels[d], train_ds, labels[t], binarize(codes[t]),
        int(getattr(bundle, "num_classes", int(labels.max()) + 1)), split.to_dict(),
    )


class RetrievalLabeler(nn.Module):
    """The retrieval system as a classifier: one-hot of the class of the nearest database item
    (``k=1``; ties -> lowest database index, as in the ranking) or the majority of the top ``k``
    (vote ties -> lowest class). Single-label databases only."""

    def __init__(self, model: nn.Module, db_codes: Tensor, db_labels: Tensor, num_classes: int, k: int = 1) -> None:
        super().__init__()
        if db_labels.dim() != 1:
            raise ValueError("the retrieval label needs single-label database labels")
        self.model = model
        self.register_buffer("db_codes", binarize(db_codes))
        self.register_buffer("db_labels", db_labels.long())
        self.num_classes, self.k = num_classes, k

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        d = hamming_distance(binarize(self.model(x)), self.db_codes)
        if self.k == 1:
            return self.db_labels[d.argmin(1)]  # first minimum = lowest database index
        top = torch.sort(d, dim=1, stable=True).indices[:, : self.k]
        votes = F.one_hot(self.db_labels[top], self.num_classes).sum(1)
        return votes.argmax(1)

    def forward(self, x: Tensor) -> Tensor:
        return F.one_hot(self.labels(x), self.num_classes).float()



class RetrievalScore:
    """The attack engine's scorer for a hashing target (see ``ssbench.attacks.scoring.Scorer``):
    per query, AP@1000 of the target's code of the (adversarial) image against the database."""

    metric = METRIC
    binary = False

    def __init__(self, model: nn.Module, sets: RetrievalSets, batch_size: int, device: torch.device) -> None:
        self.model, self.sets, self.batch_size, self.device = model, sets, batch_size, device
        self.y = sets.query_y
        db = sets.db_labels
        # a random ranking's AP@K is about the share of relevant items in the database
        self.chance = float(relevance(self.y, db).float().mean()) if len(self.y) else 0.0
        # black-box attacks query the retrieval label; a multi-label database has none
        self.query_model = RetrievalLabeler(model, sets.db_codes.to(device), db.to(device), sets.num_classes) \
            if db.dim() == 1 else None
        self.no_query_model = "multi-label database: no retrieval label to attack"

    def score(self, images: Tensor, idx: Tensor, *, reorder: bool = False) -> dict[str, Tensor]:
        """Per query of ``idx``: AP@1000 first, then the other test metrics."""
        order = torch.arange(len(images) - 1, -1, -1) if reorder else torch.arange(len(images))
        chunk = self.batch_size // 2 + 1 if reorder else self.batch_size
        codes = torch.empty(len(images), self.sets.db_codes.shape[1])
        codes[order] = clean_codes(self.model, images[order].to(self.device), chunk).cpu()
        return ranking_scores(codes, self.sets.db_codes, self.y[idx.cpu()], self.sets.db_labels,  # type: ignore[return-value]
                              per_query=True, **TEST_METRICS)

    def cotangent(self, outputs: Tensor, y: Tensor) -> Tensor:
        """The clean code: the gradient checks differentiate the code's agreement with it."""
        return binarize(outputs.detach())

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per query: agreement of the relaxed code with the clean code (FGSM-hash's objective; tanh
        at scale 0.1 so a saturated head still passes a gradient)."""
        from ssbench.retrieval.heads import code_scale

        with torch.no_grad():
            b = binarize(model(x))
        with code_scale(model, 0.1):
            return (model(x) * b).sum(1)


def retrieval_pool(sets: RetrievalSets, seed: int) -> tuple[Tensor, Tensor]:
    """Starting points of decision-based attacks: POOL seeded training images."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(sets.train_ds), generator=g)[:POOL].tolist()
    return _gather(sets.train_ds, pick)


def reference(model: nn.Module, sets: RetrievalSets, device: torch.device) -> Reference:
    """The reference set's codes under ``model`` (the target's are already in ``sets``)."""
    codes, _ = encode(model, sets.train_ds, device)
    return Reference(binarize(codes), sets.train_labels)


def recorded_split(target, bundle) -> tuple[RetrievalSplit | None, dict]:  # noqa: ANN001
    """The split the target's fine-tune run recorded (sha256 and data checked), and what the attack
    run notes about it. Older runs without one: None, and the split is drawn afresh (same protocol)."""
    run = getattr(target, "run", None)
    entry = ((getattr(run, "summary", None) or {}).get("retrieval_split")) if run is not None else None
    source = f"run {run.id}" if run is not None else str(target.path)
    root = getattr(target, "artifacts", None)  # the store's artifact root: recorded paths are relative to it
    if entry is None:
        # no run (a checkpoint attacked by path): the file beside it, when copied with its folder
        beside = Path(target.path).parent / SPLIT_FILE if run is None else None
        if beside is None or not beside.is_file():
            return None, {"source": "computed"}
        entry, root = {"path": str(beside)}, None
    record = load_split_record(entry, source, root)
    split = split_from_record(record, bundle, source)
    return split, {"source": "recorded", "path": entry["path"], "sha256": entry.get("sha256")}
