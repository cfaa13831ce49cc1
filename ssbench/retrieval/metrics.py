"""Hamming ranking, AP@K / mAP@K and precision@K (vectorised torch, chunked over queries).

Conventions (the ones every number in ssbench uses):

* binary codes are ``sign(u)`` with ``sign(0) = +1`` (:func:`binarize`);
* the database is ranked by Hamming distance with a **stable** sort: ties keep database order,
  i.e. among equally distant items the lower database index ranks first;
* ``AP@K = (1 / R_K) * sum_{k <= K} P(k) rel(k)``, ``R_K`` = number of relevant items in the top K,
  ``P(k)`` = precision of the top k; a query with no relevant item in its top K has AP 0 (it still
  counts in the mean). ``K = None`` (or ``K >= database size``) is mAP over the whole ranking;
* ``precision@K`` = relevant items in the top K divided by K (K capped at the database size);
* relevance: single-label (int labels, shape N) = same label; multi-label (0/1 matrix N x C) =
  at least one shared label.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def binarize(u: Tensor) -> Tensor:
    """+-1 codes with sign(0) -> +1 (float, same device)."""
    return torch.where(u >= 0, 1.0, -1.0).to(torch.float32)


def hamming_distance(query_codes: Tensor, db_codes: Tensor) -> Tensor:
    """(Q, N) Hamming distances of +-1 codes; exact integers in float32 for K < 2**24."""
    k = query_codes.shape[1]
    return 0.5 * (k - query_codes.float() @ db_codes.float().T)


def relevance(query_labels: Tensor, db_labels: Tensor) -> Tensor:
    """(Q, N) bool: same label (1-D int labels) or at least one shared label (2-D 0/1 labels)."""
    if query_labels.dim() == 1:
        return query_labels[:, None] == db_labels[None, :]
    return (query_labels.float() @ db_labels.float().T) > 0


def hamming_ranking(query_codes: Tensor, db_codes: Tensor) -> Tensor:
    """(Q, N) database indices by increasing Hamming distance, ties by database index (stable sort)."""
    d = hamming_distance(binarize(query_codes), binarize(db_codes))
    return torch.sort(d, dim=1, stable=True).indices


def _k(topk: int | None, n: int) -> int:
    return n if topk is None or topk >= n else int(topk)


def _key(prefix: str, topk: int | None) -> str:
    return f"{prefix}@all" if topk is None else f"{prefix}@{topk}"


def ranking_scores(
    query_codes: Tensor,
    db_codes: Tensor,
    query_labels: Tensor,
    db_labels: Tensor,
    *,
    map_at: Sequence[int | None] = (1000,),
    precision_at: Sequence[int] = (),
    chunk: int = 128,
    per_query: bool = False,
) -> dict[str, float] | dict[str, Tensor]:
    """{"map@K": ..., "map@all": ..., "precision@K": ...} from one ranking per query chunk.

    ``per_query=True`` returns the (Q,) tensors of per-query AP / precision instead of their means.
    """
    qc, dc = binarize(query_codes), binarize(db_codes).to(query_codes.device)
    db_labels = db_labels.to(query_labels.device)
    n = dc.shape[0]
    out: dict[str, list[Tensor]] = {_key("map", k): [] for k in map_at}
    out.update({_key("precision", k): [] for k in precision_at})
    kmax = max([_k(k, n) for k in map_at] + [_k(k, n) for k in precision_at] + [1])
    for s in range(0, qc.shape[0], chunk):
        order = hamming_ranking(qc[s : s + chunk], dc)[:, :kmax]
        rel = relevance(query_labels[s : s + chunk], db_labels)
        rel = torch.gather(rel, 1, order).float()  # rel[i, r] = is the item at rank r+1 relevant
        hits = rel.cumsum(1)
        ranks = torch.arange(1, kmax + 1, device=rel.device, dtype=rel.dtype)
        prec_rel = hits / ranks * rel  # P(k) rel(k)
        for k in map_at:
            kk = _k(k, n)
            r_k = hits[:, kk - 1]
            ap = torch.where(r_k > 0, prec_rel[:, :kk].sum(1) / r_k.clamp_min(1), torch.zeros_like(r_k))
            out[_key("map", k)].append(ap)
        for k in precision_at:
            kk = _k(k, n)
            out[_key("precision", k)].append(hits[:, kk - 1] / kk)
    full = {key: torch.cat(v) if v else torch.zeros(0) for key, v in out.items()}
    if per_query:
        return full
    return {key: float(v.mean()) if len(v) else float("nan") for key, v in full.items()}


def average_precision(
    query_codes: Tensor, db_codes: Tensor, query_labels: Tensor, db_labels: Tensor, topk: int | None = 1000
) -> Tensor:
    """(Q,) AP@topk per query (``topk=None``: whole ranking)."""
    res = ranking_scores(query_codes, db_codes, query_labels, db_labels, map_at=(topk,), per_query=True)
    return res[_key("map", topk)]  # type: ignore[return-value]


def mean_average_precision(
    query_codes: Tensor, db_codes: Tensor, query_labels: Tensor, db_labels: Tensor, topk: int | None = 1000
) -> float:
    return float(average_precision(query_codes, db_codes, query_labels, db_labels, topk).mean())


def precision_at(query_codes: Tensor, db_codes: Tensor, query_labels: Tensor, db_labels: Tensor, k: int = 1000) -> float:
    res = ranking_scores(query_codes, db_codes, query_labels, db_labels, map_at=(), precision_at=(k,))
    return res[_key("precision", k)]  # type: ignore[return-value]


TEST_METRICS = {"map_at": (1000, 5000, None), "precision_at": (1000,)}


def retrieval_scores(query_codes: Tensor, db_codes: Tensor, query_labels: Tensor, db_labels: Tensor) -> dict[str, float]:
    """The protocol's test metrics: map@1000, map@5000, map@all, precision@1000."""
    return ranking_scores(query_codes, db_codes, query_labels, db_labels, **TEST_METRICS)  # type: ignore[return-value]
