"""The hash head: Linear(features, bits) + tanh, and the code scale used by attack continuation."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class HashHead(nn.Module):
    """``tanh(scale * fc(features))``: relaxed K-bit codes in (-1, 1); the binary code is its sign.

    ``scale`` is 1 for training and evaluation. HAG / SDHA raise it step by step (``code_scale``) so the
    relaxed code approaches the sign function while the attack optimises (continuation).
    The inner ``fc`` is a plain ``nn.Linear`` so ``ssbench.rules.convert`` puts the rule into it too.
    """

    def __init__(self, in_features: int, bits: int, *, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, bits, bias=bias)
        self.bits = bits
        self.scale = 1.0  # plain attribute, not state: only attacks change it, temporarily

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.scale * self.fc(x))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def hash_heads(model: nn.Module) -> list[HashHead]:
    return [m for m in model.modules() if isinstance(m, HashHead)]


def code_bits(model: nn.Module) -> int:
    heads = hash_heads(model)
    if not heads:
        raise ValueError("model has no HashHead; build it with HashingTask.prepare_model")
    return heads[-1].bits


@contextlib.contextmanager
def code_scale(model: nn.Module, scale: float) -> Iterator[None]:
    """Temporarily compute ``tanh(scale * z)`` in every HashHead of ``model`` (restored after)."""
    heads = hash_heads(model)
    before = [h.scale for h in heads]
    for h in heads:
        h.scale = float(scale)
    try:
        yield
    finally:
        for h, s in zip(heads, before):
            h.scale = s


def attach_hash_head(net: nn.Module, bits: int) -> nn.Module:
    """Replace the classifier head of ``net`` (found by ``ssbench.models.head_of``) by a HashHead.

    The backbone (everything before the head) is kept with its weights. Idempotent: a model whose
    head already is a HashHead of ``bits`` bits is returned unchanged (checkpoint reload path).
    Call before ``ssbench.rules.convert`` so the new layer learns with the rule as well.
    """
    existing = hash_heads(net)
    if existing:
        if existing[-1].bits != bits:
            raise ValueError(f"model already has a {existing[-1].bits}-bit hash head, not {bits}")
        return net
    from ssbench.models import head_of

    name, old = head_of(net)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"hash head needs a Linear classifier, found {type(old).__name__} at {name!r}")
    new = HashHead(old.in_features, bits, bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, new)
    return net


def remove_hash_head(net: nn.Module) -> nn.Module:
    """Put each HashHead's own ``fc`` (a plain Linear) back in its place, so ``head_of`` finds it:
    the way to a fresh hash head (``attach_hash_head``) or a classifier (``replace_head``)."""
    for name, module in list(net.named_modules()):
        if isinstance(module, HashHead):
            parent_name, _, attr = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, attr, module.fc)
    return net
