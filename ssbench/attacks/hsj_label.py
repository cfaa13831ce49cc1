"""HopSkipJump on the retrieval label: the decision-based attack of a hashing system."""
from __future__ import annotations

from typing import Any

from ssbench.attacks.base import register
from ssbench.attacks.hopskipjump import HopSkipJump


@register
class HSJLabel(HopSkipJump):
    """HSJ-label: HopSkipJump (L-inf, decision-based) on the retrieval label; minimum-norm, query mode."""

    # The engine hands minimum-norm attacks the scorer's query model: for a hashing target that is
    # ssbench.retrieval.scoring.RetrievalLabeler (the class of the nearest database item), so this
    # is HopSkipJump itself, registered in the hashing suite.
    name = "hsj-label"
    suite = "hashing"

    def params(self, eps: float) -> dict[str, Any]:
        return {**super().params(eps), "label": "class of the nearest database item (ties: lowest index)"}
