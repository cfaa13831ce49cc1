"""The learning-rule engine: which tensor carries the error backward through each layer.

    from ssbench.rules import convert, exact_gradients, alignment_metrics
    model = convert(model, "frsf", seed=0)       # same weights, sign-symmetric backward
    with exact_gradients(model): ...             # same forward, true gradients
"""
from ssbench.rules import bp, brsf, dfa, fa, frsf, ifa, usf  # noqa: F401  (register the rules)
from ssbench.rules.alignment import LayerAlignment, alignment_metrics, angle_deg, mean_angle
from ssbench.rules.base import RULES, Rule
from ssbench.rules.convert import (
    ConversionWarning,
    check_conversion,
    convert,
    convert_from_config,
    exact_gradients,
    feedback_layers,
    layers_not_run,
    make_rule,
    model_rule,
    rule_config,
    scratch_init,
    xavier_init,
)
from ssbench.rules.layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear

__all__ = [
    "RULES", "Rule", "convert", "convert_from_config", "check_conversion", "layers_not_run",
    "ConversionWarning", "exact_gradients", "feedback_layers", "make_rule", "model_rule", "rule_config",
    "xavier_init", "scratch_init",
    "alignment_metrics", "angle_deg", "mean_angle", "LayerAlignment",
    "FeedbackLayer", "FeedbackLinear", "FeedbackConv2d",
]
