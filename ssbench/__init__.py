"""ssbench: benchmark learning rules that avoid weight transport.

Library first; the `ssbench` CLI is a thin layer over it:

    import ssbench
    model = ssbench.convert(net, "usf")               # in place; inplace=False converts a copy
    with ssbench.exact_gradients(model): ...
    result = ssbench.attack(model, x, y, "pgd", eps=8/255, mode="exact")   # no store needed

Heavy modules (torch) load on first use, so `ssbench runs` / `ssbench report` start fast.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from ssbench.errors import SsbenchError

__version__ = "0.1.0"

_LAZY = {
    "convert": "ssbench.rules",
    "exact_gradients": "ssbench.rules",
    "alignment_metrics": "ssbench.rules",
    "feedback_layers": "ssbench.rules",
    "model_rule": "ssbench.rules",
    "open_store": "ssbench.store",
    "load_data": "ssbench.data",
    "build_model": "ssbench.models",
    "run_training": "ssbench.training",
    "load_trained": "ssbench.training",
    "run_attack": "ssbench.attacks",
    "attack": "ssbench.attacks.bare",
    "ATTACKS": "ssbench.attacks",
    "RULES": "ssbench.rules",
}
__all__ = ["SsbenchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public API (the lazy names included), not this module's own imports: tab completion
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})
