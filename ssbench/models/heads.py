"""Find and replace the final classifier layer of our models and of torchvision's."""
from __future__ import annotations

from torch import nn

from ssbench.models.normalized import Normalized

# Attribute paths torchvision (and our models) use for the classifier, most specific first.
_HEAD_PATHS = ("fc", "heads.head", "heads", "head", "classifier")


def _get(model: nn.Module, path: str) -> nn.Module | None:
    m: nn.Module | None = model
    for part in path.split("."):
        m = getattr(m, part, None) if m is not None else None
        if not isinstance(m, nn.Module):
            return None
    return m


def _last_layer(module: nn.Module, prefix: str) -> tuple[str, nn.Module] | None:
    """Last registered nn.Linear in ``module`` (else last nn.Conv2d, for SqueezeNet's conv classifier)."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [(n, m) for n, m in module.named_modules() if isinstance(m, kind)]
        if found:
            name, m = found[-1]
            return (f"{prefix}.{name}" if name else prefix).strip("."), m
    return None


def head_of(model: nn.Module) -> tuple[str, nn.Module]:
    """(qualified name in ``model``, module) of the final classifier layer.

    Looks through :class:`Normalized`, then at ``fc``, ``heads.head``, ``heads``, ``head``,
    ``classifier`` (last Linear inside a Sequential), else the last Linear registered in the model.
    """
    prefix, net = "", model
    while isinstance(net, Normalized):
        prefix, net = prefix + "net.", net.net
    for path in _HEAD_PATHS:
        sub = _get(net, path)
        if sub is None:
            continue
        found = _last_layer(sub, path)
        if found is not None:
            return prefix + found[0], found[1]
    found = _last_layer(net, "")
    if found is None:
        raise ValueError(f"{type(net).__name__} has no Linear or Conv2d layer to call its head")
    return prefix + found[0], found[1]


def replace_head(model: nn.Module, new_out_features: int) -> nn.Module:
    """Put a freshly initialised head with ``new_out_features`` outputs in place of the old one.

    Plain ``nn.Linear`` (or ``nn.Conv2d`` for conv classifiers), default init, same device/dtype and
    bias setting. Returns ``model`` (changed in place). A model converted to a learning rule must be
    converted again (the new head is a plain layer).
    """
    name, old = head_of(model)
    w = old.weight
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, new_out_features, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(
            old.in_channels, new_out_features, old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, groups=1, bias=old.bias is not None,
        )
    else:  # pragma: no cover - head_of returns only these
        raise TypeError(type(old))
    new = new.to(device=w.device, dtype=w.dtype)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return model
