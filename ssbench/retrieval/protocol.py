"""Retrieval protocol: which images are queries, which form the database, which train the hash.

Single-label data sets (Fashion-MNIST, digits, CIFAR, MNIST) follow the convention of the deep
hashing literature for CIFAR-10 (DPSH, HashNet, CSQ) that the sign-symmetry paper uses:

* the **pool** is every image of the bundle, in the order test, train, val (val may be absent);
* **query**: ``queries_per_class`` (100) images per class drawn from the *test* split with a fixed
  seed, in round-robin class order (so any prefix of the list is class-balanced);
* **database**: every pool image that is not a query (remaining test + train + val);
* **train**: ``train_per_class`` (500) images per class drawn from the database, restricted to the
  bundle's *train* split (so val stays held out for model selection).

Indices are pool indices; :class:`RetrievalSplit` round-trips through ``to_dict`` / JSON so a run
can persist exactly which images it used. Classes with too few images give what they have (small
tests, class subsets).

Multi-label sets (MS-COCO, NUS-WIDE) and ImageNet-100 come as list files in the DeepHash layout:
``<root>/train.txt``, ``<root>/test.txt`` (queries), ``<root>/database.txt``, each line
``relative/path.jpg l1 l2 ... lC`` with 0/1 labels; relevance = at least one shared label.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ssbench.data.lists import ListFileDataset, ListRetrievalData, list_rows
from ssbench.errors import ArtifactError, CheckpointError
from ssbench.store.artifacts import resolve, to_stored, verify
from ssbench.store.temporaries import write_atomic

POOL_ORDER = ("test", "train", "val")


@dataclass(frozen=True)
class RetrievalSplit:
    """Pool indices of queries, database and hash-training images, plus the pool layout."""

    query: tuple[int, ...]
    database: tuple[int, ...]
    train: tuple[int, ...]
    sizes: dict[str, int] = field(default_factory=dict)  # pool layout: split name -> length, in POOL_ORDER
    seed: int = 0

    def to_dict(self) -> dict:
        return {"query": list(self.query), "database": list(self.database), "train": list(self.train),
                "sizes": dict(self.sizes), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> RetrievalSplit:
        return cls(tuple(d["query"]), tuple(d["database"]), tuple(d["train"]), dict(d.get("sizes", {})), int(d.get("seed", 0)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> RetrievalSplit:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def offsets(self) -> dict[str, int]:
        out, start = {}, 0
        for name in POOL_ORDER:
            if name in self.sizes:
                out[name] = start
                start += self.sizes[name]
        return out

    def locate(self, index: int) -> tuple[str, int]:
        """Pool index -> (split name, index within that split)."""
        for name, start in self.offsets().items():
            if start <= index < start + self.sizes[name]:
                return name, index - start
        raise IndexError(index)


def class_balanced_split(
    labels: Tensor,
    sizes: dict[str, int],
    *,
    queries_per_class: int = 100,
    train_per_class: int = 500,
    seed: int = 0,
) -> RetrievalSplit:
    """Split a single-label pool (``labels`` in pool order, layout ``sizes``) as documented above."""
    labels = labels.long().cpu()
    layout = {n: int(sizes[n]) for n in POOL_ORDER if n in sizes and sizes[n] > 0}
    if sum(layout.values()) != len(labels):
        raise ValueError(f"pool sizes {layout} do not add up to {len(labels)} labels")
    split0 = RetrievalSplit((), (), (), layout, seed)
    off = split0.offsets()
    source = torch.empty(len(labels), dtype=torch.long)
    for i, name in enumerate(layout):
        source[off[name] : off[name] + layout[name]] = POOL_ORDER.index(name)
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels).tolist()

    per_class_q: list[list[int]] = []
    for c in classes:
        cand = ((labels == c) & (source == POOL_ORDER.index("test"))).nonzero().flatten()
        pick = cand[torch.randperm(len(cand), generator=g)[:queries_per_class]]
        per_class_q.append(pick.tolist())
    query = [q[r] for r in range(max((len(q) for q in per_class_q), default=0)) for q in per_class_q if r < len(q)]

    is_query = torch.zeros(len(labels), dtype=torch.bool)
    is_query[torch.tensor(query, dtype=torch.long)] = True
    database = (~is_query).nonzero().flatten().tolist()

    train: list[int] = []
    for c in classes:
        cand = ((labels == c) & ~is_query & (source == POOL_ORDER.index("train"))).nonzero().flatten()
        train += sorted(cand[torch.randperm(len(cand), generator=g)[:train_per_class]].tolist())
    return RetrievalSplit(tuple(query), tuple(database), tuple(sorted(train)), layout, seed)


def bundle_pool(bundle) -> tuple[list[Dataset], dict[str, int]]:  # noqa: ANN001
    """The bundle's splits in POOL_ORDER (absent/empty ones skipped) and their sizes."""
    parts, sizes = [], {}
    for name in POOL_ORDER:
        ds = getattr(bundle, name, None)
        if ds is not None and len(ds) > 0:
            parts.append(ds)
            sizes[name] = len(ds)
    return parts, sizes


# -- encoding -------------------------------------------------------------------------------------

def _loader(ds: Dataset, batch_size: int):  # noqa: ANN202
    try:
        from ssbench.data import make_loader

        return make_loader(ds, batch_size, shuffle=False)
    except ImportError:  # pragma: no cover - data package always present in the product
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def encode(model: nn.Module, ds: Dataset, device: torch.device | str, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(relaxed codes u (N, K) on CPU, labels (N,) or (N, C)) of ``ds`` under ``model`` in eval mode."""
    was = model.training
    model.eval()
    codes, labels = [], []
    try:
        for x, y in _loader(ds, batch_size):
            codes.append(model(x.to(device)).float().cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was)
    if not codes:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(codes), torch.cat(labels)


def dataset_labels(ds: Dataset) -> Tensor:
    """Labels of ``ds`` without decoding images where the data set keeps them in memory."""
    index = None
    while isinstance(ds, Subset):
        sub = torch.as_tensor(list(ds.indices), dtype=torch.long)
        index = sub if index is None else sub[index]
        ds = ds.dataset
    labels = getattr(ds, "labels", None)
    if isinstance(labels, Tensor):
        return labels if index is None else labels[index]
    if isinstance(ds, ListFileDataset):
        return ds.label_matrix if index is None else ds.label_matrix[index]
    ys = [torch.as_tensor(y) for _, y in _loader(ds if index is None else Subset(ds, index.tolist()), 512)]
    return torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)


def pool_labels(parts: Sequence[Dataset]) -> Tensor:
    return torch.cat([dataset_labels(p) for p in parts])


# -- the split a hashing run used, persisted next to its checkpoint --------------------------------

SPLIT_FILE = "retrieval_split.json"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def labels_digest(labels: Tensor) -> str:
    """sha256 of a label tensor's values (int64, C order): detects data that changed under a split."""
    return _sha256_bytes(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())


def split_record(bundle, split: RetrievalSplit | None = None) -> dict[str, Any]:  # noqa: ANN001
    """What a hashing run trained and is scored on, as JSON-ready data.

    Single-label pools: the split's pool indices plus a digest of the pool labels. List-file data:
    the sha256 of each list file and the rows of it in use (after val / limits).
    """
    lists = getattr(bundle, "retrieval", None)
    if isinstance(lists, ListRetrievalData):
        files, rows = {}, {}
        for name, ds in (("train", lists.train), ("query", lists.query), ("database", lists.database)):
            base, used = list_rows(ds)
            files[name] = {"file": base.list_file.name, "sha256": _sha256_bytes(base.list_file.read_bytes())}
            rows[name] = used
        return {"kind": "lists", "files": files, "rows": rows}
    if split is None:
        raise ValueError("a single-label bundle needs its RetrievalSplit")
    parts, _ = bundle_pool(bundle)
    return {"kind": "split", "split": split.to_dict(), "labels_sha256": labels_digest(pool_labels(parts))}


def save_split_record(record: dict[str, Any], path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Write ``record`` atomically; returns the run-summary entry (path, sha256, sizes). The path is
    recorded relative to the store's artifact root ``root`` (absolute without one), so the results
    folder can move."""
    path = Path(path)
    write_atomic(path, lambda f: f.write(json.dumps(record, sort_keys=True).encode()), "retrieval split")
    body = record["split"] if record["kind"] == "split" else record["rows"]
    stored = to_stored(path, Path(root)) if root is not None else str(path.resolve())
    return {"path": stored, "sha256": _sha256_bytes(path.read_bytes()), "kind": record["kind"],
            "queries": len(body["query"]), "database": len(body["database"]), "train": len(body["train"])}


def split_path(entry: dict[str, Any], root: str | Path | None = None) -> Path:
    """The file a run-summary entry means now: a relative path under the artifact root ``root``; an
    absolute one (older runs) where it exists, else its ``checkpoints/<run>/`` tail under ``root``."""
    if root is None:
        return Path(entry["path"])
    return resolve(entry["path"], Path(root))


def load_split_record(entry: dict[str, Any], source: str, root: str | Path | None = None) -> dict[str, Any]:
    """Read the file a run-summary entry points at (resolved against ``root``), checking its sha256
    (ArtifactError naming the file, the stored and the actual hash)."""
    path = split_path(entry, root)
    if not path.is_file():
        raise ArtifactError(f"retrieval split {path} of {source} is missing; re-run the fine-tune or restore the file")
    verify(path, entry.get("sha256"), f"retrieval split {path} of {source}")
    return json.loads(path.read_text())


def split_from_record(record: dict[str, Any], bundle, source: str) -> RetrievalSplit | None:  # noqa: ANN001
    """Check a recorded split against the data loaded now; the RetrievalSplit to reuse (None for
    list-file data, whose bundle already serves the recorded rows once they are checked)."""
    now = split_record(bundle, RetrievalSplit((), (), ()))
    if record.get("kind") != now["kind"]:
        raise CheckpointError(f"{source} recorded a {record.get('kind')} retrieval split, the data now gives {now['kind']}")
    if record["kind"] == "lists":
        for name, info in record["files"].items():
            if now["files"][name]["sha256"] != info["sha256"]:
                raise CheckpointError(f"{source}: list file {info['file']} changed since fine-tuning (sha256 mismatch)")
        if now["rows"] != record["rows"]:
            raise CheckpointError(f"{source}: the data spec now selects other list rows than fine-tuning used")
        return None
    split = RetrievalSplit.from_dict(record["split"])
    _, sizes = bundle_pool(bundle)
    if dict(split.sizes) != sizes or now["labels_sha256"] != record["labels_sha256"]:
        raise CheckpointError(f"{source}: the data differs from what its retrieval split was drawn on (sizes {dict(split.sizes)} vs {sizes} or labels)")
    return split
