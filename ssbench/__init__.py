"""ssbench: benchmark learning rules that avoid weight transport.

Library first; the `ssbench` CLI is a thin layer over it:

    import ssbench
    model = ssbench.convert(net, "usf")
    with ssbench.exact_gradients(model): ...

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
}
__all__ = ["SsbenchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssbench' has no attribute {name!r}")
