"""Hashing-based image retrieval: hash heads, hashing losses, the retrieval protocol, mAP@K, and how
a retrieval system is scored under attack (``scoring``; the attacks themselves, HAG, SDHA,
FGSM/PGD-hash and HopSkipJump on the retrieval label, are in ``ssbench.attacks`` with the others).

    from ssbench.retrieval import HashingTask, mean_average_precision
"""
from ssbench.retrieval.centers import hadamard, hash_centers, random_centers
from ssbench.retrieval.heads import HashHead, attach_hash_head, code_scale
from ssbench.retrieval.losses import HASH_LOSSES, make_hash_loss
from ssbench.retrieval.metrics import (
    average_precision,
    binarize,
    hamming_ranking,
    mean_average_precision,
    precision_at,
    ranking_scores,
    relevance,
    retrieval_scores,
)
from ssbench.data.lists import load_list_retrieval
from ssbench.retrieval.protocol import RetrievalSplit, class_balanced_split
from ssbench.retrieval.scoring import Reference, RetrievalLabeler, RetrievalScore
from ssbench.retrieval.task import HashingTask

__all__ = [
    "HASH_LOSSES", "HashHead", "HashingTask", "Reference", "RetrievalLabeler", "RetrievalScore",
    "RetrievalSplit", "attach_hash_head", "average_precision", "binarize", "class_balanced_split", "code_scale",
    "hadamard", "hamming_ranking", "hash_centers", "load_list_retrieval", "make_hash_loss", "mean_average_precision",
    "precision_at", "random_centers", "ranking_scores", "relevance", "retrieval_scores",
]
