"""Gradient modes: whose autograd gradient the attacker receives.

Robust accuracy is always measured on the target's forward; the mode only decides which
``nn.Module``'s backward the gradient-based attacks differentiate:

* ``feedback`` - the target itself, through its rule's custom backward (the B pathway): what the
  papers did. For a non-BP rule this is a pseudo-gradient, i.e. gradient obfuscation.
* ``exact``    - the target inside ``ssbench.rules.exact_gradients``: the same forward function
  differentiated honestly (plain backprop through the same weights).
* ``transfer`` - a BP-fine-tuned surrogate (sibling of the same pretrained backbone); the
  adversarial examples are crafted on it and then evaluated on the target.

Black-box attacks only query the target's forward; they are stored with mode ``query``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ssbench.errors import SpecError

QUERY_MODE = "query"


@contextlib.contextmanager
def gradient_source(mode: str, target: nn.Module, surrogate: nn.Module | None = None) -> Iterator[nn.Module]:
    """Yield the module whose autograd gradients the attacker uses in ``mode``."""
    if mode in ("feedback", QUERY_MODE):
        yield target
    elif mode == "exact":
        from ssbench.rules import exact_gradients

        with exact_gradients(target) as m:
            yield m if m is not None else target
    elif mode == "transfer":
        if surrogate is None:
            raise SpecError("transfer mode needs a BP surrogate: pass --surrogate RUN or fine-tune one with rule bp")
        yield surrogate
    else:
        raise SpecError(f"unknown gradient mode {mode!r}; choose from: feedback, exact, transfer")
