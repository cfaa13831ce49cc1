"""The loaded data set handed to training and attacks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    """Train / val / test splits plus what a model needs to know about the inputs.

    Splits yield ``(float image C x H x W in [0, 1], int label)``. ``val`` is None when
    ``val_fraction`` is 0. ``mean``/``std`` are per-channel statistics of the train split (for
    :class:`ssbench.models.Normalized`). ``image_size`` is the side of the (square) images served.
    Multi-label list data (``retrieval`` set) yield 0/1 float label vectors instead of ints.
    """

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    # list-file retrieval data (ssbench.data.lists.ListRetrievalData): queries / database /
    # hash-training lists used by the hashing task and attacks instead of a split of the pool
    retrieval: Any = None
