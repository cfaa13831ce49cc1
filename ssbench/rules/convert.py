"""Put a learning rule into any nn.Module, and take the true gradient back out of it."""
from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from ssbench.errors import SpecError
from ssbench.rules.base import RULES, Rule
from ssbench.rules.functions import CaptureErrorFn, ErrorBox
from ssbench.rules.layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear
from ssbench.specs import RuleSpec

# Exact types only: subclasses such as MultiheadAttention's out_proj are consumed by functional
# code that never calls their forward, so converting them would silently do nothing.
_SWAPS: dict[type[nn.Module], type[FeedbackLayer]] = {nn.Linear: FeedbackLinear, nn.Conv2d: FeedbackConv2d}


def make_rule(name: str, theta: float | None = None) -> Rule:
    cls = RULES.get(name)
    if name.lower() == "ifa":
        return cls(theta=45.0 if theta is None else theta)  # type: ignore[call-arg]
    if theta is not None:
        raise SpecError(f"theta is an ifa option, not one of rule {name!r}")
    return cls()


def convert(
    model: nn.Module,
    rule: str | RuleSpec | Rule = "bp",
    *,
    seed: int = 0,
    theta: float | None = None,
    skip: Sequence[str] = (),
) -> nn.Module:
    """Make every nn.Linear / nn.Conv2d of `model` learn with `rule`; returns `model` (in place).

    Weights are kept (a pretrained W stays W). `skip` holds fnmatch patterns of module names left
    exact (plain backprop). The rule's random state is drawn from generators seeded by
    (seed, layer index), never from torch's global RNG.
    """
    if isinstance(rule, RuleSpec):
        seed = rule.seed if rule.seed is not None else seed
        skip = tuple(skip) + tuple(rule.skip)
        rule = make_rule(rule.name, rule.theta)
    elif isinstance(rule, str):
        rule = make_rule(rule, theta)
    if feedback_layers(model):
        raise SpecError(f"model is already converted (rule {model_rule(model)!r}); convert a fresh model")
    box = ErrorBox() if rule.direct else None
    index = 0
    for name, module in model.named_modules():
        swap = _SWAPS.get(type(module))
        if swap is None or any(fnmatch.fnmatchcase(name, p) for p in skip):
            continue
        module.__class__ = swap
        module.attach_rule(rule, seed, index, box)  # type: ignore[attr-defined]
        index += 1
    if index == 0:
        raise SpecError("convert: the model has no nn.Linear or nn.Conv2d layer to convert")
    if box is not None:
        model.register_forward_hook(lambda _m, _i, out: _capture(out, box))
    return model


def _capture(out: object, box: ErrorBox) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError("dfa needs a model whose forward returns one tensor (the output error e)")
    return CaptureErrorFn.apply(out, box)


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    """(qualified name, layer) of every converted layer, in forward-registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayer)]


def model_rule(model: nn.Module) -> str | None:
    layers = feedback_layers(model)
    return layers[0][1].rule.name if layers else None


def rule_config(model: nn.Module) -> dict[str, float | int | str | None] | None:
    layers = feedback_layers(model)
    if not layers:
        return None
    return {**layers[0][1].rule.config(), "seed": layers[0][1].feedback_seed}


@contextmanager
def exact_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes true gradients (plain F.linear / F.conv2d autograd).

    The forward function is unchanged, so logits are identical; only the backward differs. This is
    the honest white-box gradient of a rule-trained network.
    """
    layers = [m for _, m in feedback_layers(model)]
    before = [m.exact for m in layers]
    for m in layers:
        m.exact = True
    try:
        yield model
    finally:
        for m, flag in zip(layers, before):
            m.exact = flag
