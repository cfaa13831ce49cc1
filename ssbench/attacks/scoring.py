"""Scorers: how the attack engine judges an adversarial, one per task.

The sweep, the sanity checks and the attack job never ask what the target is; they ask its scorer
for per-example scores of (adversarial) images. Classification scores correctness (0/1: an example
survives or is broken, so a sweep can walk epsilon upward on the survivors); retrieval scores each
query's AP@1000 (``ssbench.retrieval.scoring.RetrievalScore``: graded, every query is attacked at
every epsilon). The robust number of a sweep point is the mean score over all n examples.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.attacks.losses import margin_cotangent
from ssbench.attacks.starting import predict


class Scorer(Protocol):
    model: nn.Module  # the target: kept in eval mode while scoring
    metric: str  # name of the stored robust metric ("accuracy", "map@1000")
    binary: bool  # scores are 0/1: survivors, bitstrings and the per-example worst case apply
    chance: float  # the score of a guess (sanity check falls_to_chance)
    query_model: nn.Module | None  # what decision-based attacks query: a classifier (None: none exists)
    no_query_model: str  # why there is none

    def score(self, images: Tensor, idx: Tensor, *, reorder: bool = False) -> dict[str, Tensor]:
        """Per example of ``idx`` (rows of the attacked set; ``images`` are theirs): the metric first,
        then any others that ride along. ``reorder``: evaluate in reversed order and other chunks
        (sanity check eps0_equals_clean: a forward that depends on the batch shows up)."""
        ...

    def cotangent(self, outputs: Tensor, y: Tensor) -> Tensor:
        """A fixed output direction whose input gradient the gradient checks compare with finite differences."""
        ...

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per example: the loss a gradient attack follows (sanity check zero_gradients)."""
        ...


class Accuracy:
    """Classification: 1 where the target's label of the image is the true one."""

    metric = "accuracy"
    binary = True
    no_query_model = ""

    def __init__(self, target: nn.Module, y: Tensor, batch_size: int = 256, num_classes: int | None = None) -> None:
        self.model = self.query_model = target
        self.y, self.batch_size = y, batch_size
        self.chance = 1.0 / num_classes if num_classes else 0.0

    def score(self, images: Tensor, idx: Tensor, *, reorder: bool = False) -> dict[str, Tensor]:
        labels = repredict(self.query_model, images, self.batch_size) if reorder else predict(self.query_model, images, self.batch_size)
        return {self.metric: labels == self.y[idx]}

    def cotangent(self, outputs: Tensor, y: Tensor) -> Tensor:
        return margin_cotangent(outputs, y)

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y, reduction="none")


def repredict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``predict`` in reversed order and in chunks of another size than ``batch_size``: a forward
    that is a function of each image alone gives the same labels; one that depends on the batch
    (BatchNorm statistics or dropout active despite eval()) or on run-to-run randomness does not."""
    chunk = batch_size // 2 + 1 if batch_size > 2 else batch_size + 1
    rev = torch.arange(len(x) - 1, -1, -1, device=x.device)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    out[rev] = predict(model, x[rev], chunk)
    return out
