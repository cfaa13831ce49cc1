"""Specs of the analysis jobs (Hessian spectrum, curvature over training, corruption robustness);
unknown keys are errors."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ssbench.specs import Spec


class CurvatureSpec(Spec):
    """What every curvature analysis shares: the fixed example set the loss is averaged over and the
    estimators' budgets, so `analyze hessian` and `analyze trajectory` with the same values compute
    the same numbers on the same weights."""

    target: str = Field(description="run id (or checkpoint path) of the trained model")
    split: Literal["train", "test"] = Field(default="train", description="examples the loss is averaged over")
    n_examples: int = Field(default=512, ge=1, description="size of the fixed example set (seeded)")
    batch_size: int = Field(default=256, ge=1)
    probes: int = Field(default=100, ge=2, description="Hutchinson probes for the trace")
    iters: int = Field(default=50, ge=2, description="Lanczos (and power-iteration) steps")
    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    recipe: str | None = None
    tags: tuple[str, ...] = ()


class HessianSpec(CurvatureSpec):
    """Curvature of a trained run's loss w.r.t. its forward parameters (model in eval mode)."""

    top_k: int = Field(default=2, ge=1, description="top eigenvalues reported (Lanczos)")
    density: bool = Field(default=False, description="stochastic Lanczos quadrature eigenvalue density")
    density_probes: int = Field(default=4, ge=1)
    density_sigma: float | None = Field(default=None, gt=0, description="Gaussian smoothing width; default: range / 200")
    density_grid: int = Field(default=512, ge=16)
    surface: bool = Field(default=False, description="2-D loss surface along the top two eigenvectors")
    surface_points: int = Field(default=21, ge=3, description="points per axis (odd keeps 0 on the grid)")
    surface_radius: float = Field(default=1.0, gt=0, description="alphas, betas in [-r, r] (parameter-space distance)")


class CorruptionSpec(Spec):
    """Accuracy of a trained run under procedural corruptions of its test images."""

    target: str = Field(description="run id (or checkpoint path) of the trained model")
    corruptions: tuple[str, ...] | None = Field(default=None, description="names from CORRUPTIONS; default all")
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_examples: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=256, ge=1)
    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    recipe: str | None = None
    tags: tuple[str, ...] = ()

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s < 0 or s > 5 for s in v):
            raise ValueError("severities must be in 0..5")
        if len(set(v)) != len(v):
            raise ValueError("severities repeat")
        return tuple(sorted(v))


class TrajectorySpec(CurvatureSpec):
    """Curvature over training and the PCA weight trajectory of a run that kept its epochs."""

    target: str = Field(description="run id of a trained run with kept epoch checkpoints (keep_epochs)")
    hessian: bool = Field(default=True, description="trace and top eigenvalue at the analysed epochs")
    every: int = Field(default=1, ge=1, description="Hessian at every N-th kept epoch (always the first and last)")
    pca: bool = Field(default=True, description="weight trajectory on its first two principal directions")
    points: int = Field(default=21, ge=3, description="loss grid: points per axis of the PCA plane")
    margin: float = Field(default=0.25, ge=0, description="loss grid: extends the trajectory's extent by this share per side")
