"""Hashing-based image retrieval: hash heads, hashing losses, the retrieval protocol, mAP@K, and
attacks on Hamming-space search (HAG, SDHA, FGSM/PGD-hash, HopSkipJump on the retrieval label).

    from ssbench.retrieval import HashingTask, mean_average_precision
"""
from ssbench.retrieval.attacks import HASH_ATTACKS, HashAttack, Knowledge, RetrievalLabeler
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
from ssbench.retrieval.protocol import RetrievalSplit, class_balanced_split, load_list_retrieval
from ssbench.retrieval.task import HashingTask

__all__ = [
    "HASH_ATTACKS", "HASH_LOSSES", "HashAttack", "HashHead", "HashingTask", "Knowledge", "RetrievalLabeler",
    "RetrievalSplit", "attach_hash_head", "average_precision", "binarize", "class_balanced_split", "code_scale",
    "hadamard", "hamming_ranking", "hash_centers", "load_list_retrieval", "make_hash_loss", "mean_average_precision",
    "precision_at", "random_centers", "ranking_scores", "relevance", "retrieval_scores",
]
