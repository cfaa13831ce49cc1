"""Plain records that jobs hand to a `RunRecorder` (no SQLAlchemy here, so attack code imports cheaply)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SweepPoint:
    """One (attack, gradient mode, epsilon) point of a sweep.

    `robust` is the metric under attack (accuracy, or mAP for hashing) over `n` examples.
    `correct` holds one '0'/'1' character per attacked example, in a fixed example order shared by
    all sweeps of an attack run, so a report can take the per-example worst case across modes.
    """

    attack: str
    mode: str
    epsilon: float
    n: int
    robust: float
    metric: str = "accuracy"
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    correct: str | None = None


@dataclass
class SanityCheck:
    """One sanity check of an attack run; `passed=None` means "not applicable / not decided"."""

    name: str
    passed: bool | None
    value: float | None = None
    detail: str = ""
    attack: str | None = None
    mode: str | None = None


@dataclass
class AlignmentRow:
    """Alignment of one feedback layer: angle(W, B) in degrees, |B| / |W|, optional angle of gradients."""

    layer: str
    angle_deg: float | None
    norm_ratio: float | None
    grad_angle_deg: float | None = None
