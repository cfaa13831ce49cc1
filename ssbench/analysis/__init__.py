"""Analysis of trained runs: loss curvature (Hessian trace, top eigenvalues, spectral density, 2-D
loss surface), accuracy under procedural corruptions, and the rule-vs-true gradient angle.

    from ssbench.analysis import model_hessian, hutchinson_trace, lanczos_top, corrupt
    op = model_hessian(model, [(x, y)])          # exact HVPs, eval mode, true gradients
    hutchinson_trace(op, 100).mean; lanczos_top(op, k=2).values
    corrupt(x, "fog", severity=3, seed=0)
"""
from ssbench.analysis.corruptions import CORRUPTIONS, Corruption, corrupt, corruption_names
from ssbench.analysis.gradient_alignment import gradient_alignment
from ssbench.analysis.hessian import (
    HessianOperator,
    SpectralDensity,
    hutchinson_trace,
    lanczos,
    lanczos_top,
    loss_surface,
    model_hessian,
    power_iteration,
    slq_density,
)
from ssbench.analysis.specs import CorruptionSpec, HessianSpec

__all__ = [
    "CORRUPTIONS", "Corruption", "corrupt", "corruption_names", "gradient_alignment", "HessianOperator",
    "SpectralDensity", "hutchinson_trace", "lanczos", "lanczos_top", "loss_surface", "model_hessian",
    "power_iteration", "slq_density", "CorruptionSpec", "HessianSpec",
]
