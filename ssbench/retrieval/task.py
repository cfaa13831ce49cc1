"""The hashing training task: hash head, hashing loss, retrieval scores (implements training's Task)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ssbench.retrieval.heads import attach_hash_head
from ssbench.retrieval.losses import make_hash_loss
from ssbench.retrieval.metrics import TEST_METRICS, ranking_scores
from ssbench.data.lists import ListRetrievalData
from ssbench.retrieval.protocol import (
    SPLIT_FILE,
    RetrievalSplit,
    bundle_pool,
    class_balanced_split,
    dataset_labels,
    encode,
    pool_labels,
    save_split_record,
    split_record,
)
from ssbench.specs import HashSpec

VAL_METRIC = "map@1000"


class HashingTask:
    """K-bit hashing with CSQ (default) or DPSH; selection metric ``map@1000`` on val vs train.

    ``val_scores``: val images (at most ``val_queries``, seeded) are the queries, the hash-training
    set (``train_dataset``) the database - cheap enough for every epoch. ``test_scores``: the
    retrieval protocol of :mod:`ssbench.retrieval.protocol` (map@1000, map@5000, map@all,
    precision@1000).
    """

    name = "hashing"

    def __init__(
        self,
        spec: HashSpec,
        num_classes: int,
        seed: int = 0,
        *,
        queries_per_class: int = 100,
        train_per_class: int = 500,
        val_queries: int = 1000,
        split_seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        self.spec, self.num_classes, self.seed = spec, num_classes, seed
        self.queries_per_class, self.train_per_class = queries_per_class, train_per_class
        self.val_queries, self.split_seed, self.batch_size = val_queries, split_seed, batch_size
        self.criterion = make_hash_loss(spec.loss, num_classes, spec.bits, quantization_weight=spec.quantization_weight, seed=seed)
        self._split_cache: dict[tuple, RetrievalSplit] = {}

    # -- training --------------------------------------------------------------------------------
    def prepare_model(self, net: nn.Module) -> nn.Module:
        return attach_hash_head(net, self.spec.bits)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if next(iter(self.criterion.buffers()), outputs).device != outputs.device:
            self.criterion.to(outputs.device)
        return self.criterion(outputs, targets)

    # -- splits ------------------------------------------------------------------------------------
    def split(self, bundle, labels: Tensor | None = None) -> RetrievalSplit:  # noqa: ANN001
        """The (cached, deterministic) query / database / train split of a single-label bundle."""
        parts, sizes = bundle_pool(bundle)
        key = (id(bundle), tuple(sizes.items()))
        if key not in self._split_cache:
            labels = pool_labels(parts) if labels is None else labels
            self._split_cache[key] = class_balanced_split(
                labels, sizes, queries_per_class=self.queries_per_class, train_per_class=self.train_per_class, seed=self.split_seed
            )
        return self._split_cache[key]

    def save_artifacts(self, bundle, folder: Path, root: Path | None = None) -> dict:  # noqa: ANN001
        """Persist the split this run trains and is scored on (``retrieval_split.json`` in ``folder``);
        returns the run-summary entry with its sha256 (path relative to the artifact root ``root``),
        which the hashing attack checks and reuses."""
        lists = getattr(bundle, "retrieval", None)
        record = split_record(bundle, None if isinstance(lists, ListRetrievalData) else self.split(bundle))
        return {"retrieval_split": save_split_record(record, Path(folder) / SPLIT_FILE, root)}

    def train_dataset(self, bundle) -> Dataset:  # noqa: ANN001
        """The hash-training set: ``train_per_class`` images per class of the bundle's train split
        (drawn from the database, never a query). List-file data: its train.txt."""
        lists = getattr(bundle, "retrieval", None)
        if isinstance(lists, ListRetrievalData):
            return lists.train
        split = self.split(bundle)
        start = split.offsets()["train"]
        return Subset(bundle.train, [i - start for i in split.train])

    # -- scores ------------------------------------------------------------------------------------
    def val_scores(self, model: nn.Module, bundle, device: torch.device) -> dict[str, float]:  # noqa: ANN001
        train = self.train_dataset(bundle)
        val = getattr(bundle, "val", None)
        if val is None or len(val) == 0:
            val = train  # no val split: self-retrieval on the training set (documented fallback)
        if len(val) > self.val_queries:
            g = torch.Generator().manual_seed(self.split_seed)
            val = Subset(val, sorted(torch.randperm(len(val), generator=g)[: self.val_queries].tolist()))
        qc, ql = encode(model, val, device, self.batch_size)
        dc, dl = encode(model, train, device, self.batch_size)
        return ranking_scores(qc, dc, ql, dl, map_at=(1000,))  # type: ignore[return-value]

    def test_scores(self, model: nn.Module, bundle, device: torch.device) -> dict[str, float]:  # noqa: ANN001
        qc, ql, dc, dl = self.query_database_codes(model, bundle, device)
        return ranking_scores(qc, dc, ql, dl, **TEST_METRICS)  # type: ignore[return-value]

    def query_database_codes(self, model: nn.Module, bundle, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: ANN001
        """(query codes, query labels, database codes, database labels) of the test protocol."""
        lists = getattr(bundle, "retrieval", None)
        if isinstance(lists, ListRetrievalData):
            qc, ql = encode(model, lists.query, device, self.batch_size)
            dc, dl = encode(model, lists.database, device, self.batch_size)
            return qc, ql, dc, dl
        parts, _ = bundle_pool(bundle)
        enc = [encode(model, p, device, self.batch_size) for p in parts]
        codes = torch.cat([c for c, _ in enc])
        labels = torch.cat([y for _, y in enc])
        split = self.split(bundle, labels)
        q = torch.tensor(split.query, dtype=torch.long)
        d = torch.tensor(split.database, dtype=torch.long)
        return codes[q], labels[q], codes[d], labels[d]


__all__ = ["HashingTask", "VAL_METRIC", "dataset_labels"]
