"""Put a learning rule into any nn.Module, and take the true gradient back out of it."""
from __future__ import annotations

import copy

import fnmatch
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ssbench.errors import SpecError
from ssbench.rules.base import RULES, Init, Rule, reinit_
from ssbench.rules.functions import CaptureErrorFn, ErrorBox
from ssbench.rules.layers import FeedbackConv2d, FeedbackLayer, FeedbackLinear
from ssbench.specs import RuleSpec

# Exact types only: subclasses such as MultiheadAttention's out_proj are consumed by functional
# code that never calls their forward, so converting them would silently do nothing.
_SWAPS: dict[type[nn.Module], type[FeedbackLayer]] = {nn.Linear: FeedbackLinear, nn.Conv2d: FeedbackConv2d}


class ConversionWarning(UserWarning):
    """Some layers a rule would cover never run their own forward, so the rule cannot reach them."""


def make_rule(name: str, theta: float | None = None, init: Init = "default", weight_var: float | None = None,
              feedback_var: float | None = None) -> Rule:
    cls = RULES.get(name)
    if name.lower() == "ifa":
        return cls(theta=45.0 if theta is None else theta, init=init, weight_var=weight_var, feedback_var=feedback_var)  # type: ignore[call-arg]
    if theta is not None:
        raise SpecError(f"theta is an ifa option, not one of rule {name!r}")
    return cls(init=init, weight_var=weight_var, feedback_var=feedback_var)


def convert(
    model: nn.Module,
    rule: str | RuleSpec | Rule = "bp",
    *,
    seed: int = 0,
    theta: float | None = None,
    skip: Sequence[str] = (),
    example_input: Tensor | tuple[Any, ...] | None = None,
    from_scratch: bool = False,
    inplace: bool = True,
) -> nn.Module:
    """Make every nn.Linear / nn.Conv2d of `model` learn with `rule`; returns the converted model.

    In place by default (the layers' classes are swapped, so `model` itself is converted and
    returned, as BioTorch does); `inplace=False` converts a deep copy and leaves `model` as it was
    (e.g. to keep a BP network beside its rule-trained twin).

    Weights are kept (a pretrained W stays W). `skip` holds fnmatch patterns of module names left
    exact (plain backprop). The rule's random state is drawn from generators seeded by
    (seed, layer index), never from torch's global RNG.

    With `example_input` (one batch, or a tuple of forward arguments), one forward is run first
    and layers whose own forward never runs (code that calls F.linear(x, layer.weight) directly,
    e.g. torchvision's Swin attention) are left exact with a ConversionWarning and added to the
    skip list, so alignment metrics never list a layer the rule does not reach and a checkpoint
    rebuilds the same conversion without the example.

    `from_scratch=True` says W is a fresh init, not trained weights: a rule with init='xavier' then
    re-initialises every converted layer as BioTorch does (W xavier-uniform from a seeded stream of
    its own, bias 0) before B is derived; init='gaussian' likewise with W ~ N(0, weight_var / fan_in).
    Without it (fine-tuning, checkpoints) W is never touched.
    """
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(rule, RuleSpec):
        seed = rule.seed if rule.seed is not None else seed
        skip = tuple(skip) + tuple(rule.skip)
        rule = make_rule(rule.name, rule.theta, rule.init, rule.weight_var, rule.feedback_var)
    elif isinstance(rule, str):
        rule = make_rule(rule, theta)
    if feedback_layers(model):
        raise SpecError(f"model is already converted (rule {model_rule(model)!r}); convert a fresh model")
    skip = tuple(skip)
    targets = _targets(model, skip)
    if example_input is not None and targets:
        idle = layers_not_run(model, example_input, targets)
        if idle:
            warn_idle_layers(idle, len(targets), "left exact (plain backprop)")
            skip += tuple(_literal(n) for n in idle)
            targets = [(n, m) for n, m in targets if n not in idle]
    if not targets:
        raise SpecError("convert: the model has no nn.Linear or nn.Conv2d layer to convert")
    box = ErrorBox() if rule.direct else None
    for index, (_, module) in enumerate(targets):
        if from_scratch:
            rule.init_weight_(module, seed, index)  # before attach_rule: B is derived from this W
        module.__class__ = _SWAPS[type(module)]
        module.attach_rule(rule, seed, index, box, skip)  # type: ignore[attr-defined]
    if box is not None:
        model.register_forward_hook(CaptureOutputError(box))
    return model


def convert_from_config(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """Redo the conversion `rule_config(model)` describes (checkpoints store that dict). W is left
    as it is (the checkpoint's weights are loaded next); `init` (and its variances) restores how B is drawn."""
    rule = make_rule(str(config["name"]), config.get("theta"), config.get("init") or "default",
                     config.get("weight_var"), config.get("feedback_var"))
    return convert(model, rule, seed=int(config.get("seed") or 0), skip=tuple(config.get("skip") or ()))


def xavier_init(model: nn.Module, *, seed: int = 0, skip: Sequence[str] = ()) -> nn.Module:
    """BioTorch's from-scratch init without a conversion (a BP pretrain): every nn.Linear / nn.Conv2d
    `convert` would cover, in its order, gets W xavier-uniform and bias 0, exactly as
    `convert(..., from_scratch=True)` with init='xavier' would give it. Returns `model` (in place)."""
    return scratch_init(model, RuleSpec(init="xavier", skip=tuple(skip)), seed=seed)


def scratch_init(model: nn.Module, rule: RuleSpec, *, seed: int = 0) -> nn.Module:
    """The from-scratch re-init of `rule.init` (xavier, gaussian) without a conversion (a BP pretrain):
    every layer `convert` would cover, in its order, gets the W and bias 0 that `convert(...,
    from_scratch=True)` would give it. Default init: nothing changes. Returns `model` (in place)."""
    for index, (_, module) in enumerate(_targets(model, tuple(rule.skip))):
        reinit_(module, rule.init, rule.weight_var, seed, index)
    return model


def _targets(model: nn.Module, skip: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every exact nn.Linear / nn.Conv2d not matched by a skip pattern."""
    return [
        (name, m) for name, m in model.named_modules()
        if type(m) in _SWAPS and not any(fnmatch.fnmatchcase(name, p) for p in skip)
    ]


class CaptureOutputError:
    """Forward hook of a DFA model: routes the output through CaptureErrorFn into the ErrorBox.

    An object holding the box, not a closure over it: copy.deepcopy(model) then copies this box
    together with the layers that read it (one memo), so a copied model fills its own box.
    """

    def __init__(self, box: ErrorBox) -> None:
        self.box = box

    @torch.compiler.disable  # its backward fills the box, a side effect no compiled graph keeps
    def __call__(self, module: nn.Module, inputs: Any, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise SpecError("dfa needs a model whose forward returns one tensor (the output error e)")
        return CaptureErrorFn.apply(out, self.box)


def layers_not_run(
    model: nn.Module, example_input: Tensor | tuple[Any, ...], layers: Sequence[tuple[str, nn.Module]] | None = None
) -> list[str]:
    """Names of `layers` (default: the converted ones) whose own forward does not run when `model`
    runs on `example_input`. Their weight may still be used, functionally, bypassing any rule.

    The probe changes nothing: it runs without autograd, in the model's current mode (so modules
    used only in training, like auxiliary heads, count as used), and restores every buffer
    (BatchNorm statistics, brsf step counters) and the RNG states (dropout) afterwards.
    """
    if layers is None:
        layers = feedback_layers(model)
    ran: set[str] = set()
    handles = [m.register_forward_hook(lambda *_, name=name: ran.add(name)) for name, m in layers]
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    cuda = sorted({a.get_device() for a in args if isinstance(a, Tensor) and a.is_cuda})
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            model(*args)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
    return [name for name, _ in layers if name not in ran]


def check_conversion(model: nn.Module, example_input: Tensor | tuple[Any, ...]) -> list[str]:
    """Warn (ConversionWarning) about converted layers whose forward never runs on `example_input`,
    and return their names: their backward is plain backprop whatever the rule. Reconvert a fresh
    model with `example_input=` (or `skip=`) to leave them exact and out of the metrics."""
    layers = feedback_layers(model)
    idle = layers_not_run(model, example_input, layers)
    if idle:
        warn_idle_layers(idle, len(layers), "their backward is exact, not the rule's")
    return idle


def warn_idle_layers(idle: list[str], total: int, consequence: str) -> None:
    """One ConversionWarning naming the layers whose own forward never runs."""
    shown = ", ".join(idle[:8]) + (f", ... ({len(idle) - 8} more)" if len(idle) > 8 else "")
    warnings.warn(
        f"{len(idle)} of {total} layers never run their own forward (their weight is used "
        f"functionally, e.g. F.linear(x, layer.weight)); {consequence}: {shown}",
        ConversionWarning,
        stacklevel=3,
    )


def _literal(name: str) -> str:
    """An fnmatch pattern matching exactly `name` (module names can hold '[', '*', '?')."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    """(qualified name, layer) of every converted layer, in forward-registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayer)]


def model_rule(model: nn.Module) -> str | None:
    layers = feedback_layers(model)
    return layers[0][1].rule.name if layers else None


def rule_config(model: nn.Module) -> dict[str, Any] | None:
    """The rule's options plus seed and skip patterns: all `convert_from_config` needs to rebuild
    the same conversion (the skip list decides which layers own a `feedback_state`)."""
    layers = feedback_layers(model)
    if not layers:
        return None
    first = layers[0][1]
    return {**first.rule.config(), "seed": first.feedback_seed, "skip": list(getattr(first, "feedback_skip", ()))}


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
