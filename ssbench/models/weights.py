"""Start a network from a state_dict file (``model.weights``): pretrained weights without a network.

The file is read with ``torch.load(weights_only=True)`` (no pickled code runs) and may hold

- a bare state_dict, as ``torch.save(model.state_dict(), path)`` writes it (torchvision's published
  files, e.g. ``resnet18-f37072fd.pth``), or
- a dict holding one under ``"state_dict"`` (looked for first) or ``"model"``, as many training
  scripts save it; keys all prefixed ``module.`` (saved from DataParallel / DDP) lose the prefix.

Every tensor but the classifier head's must fit the network exactly (no missing, no unexpected key,
no other shape); the head loads when its shape is the network's, else the network gets a new head
(``replace_head``: as with ``pretrained=true``, so ImageNet's 1000 outputs become the data's
classes). A file without head weights is a backbone: it loads, and the head is new.
An ssbench checkpoint is refused: it is fine-tuned from with ``--from`` (it carries normalisation,
rule and task, which a state_dict does not).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from ssbench.errors import CheckpointError
from ssbench.models.heads import head_of, replace_head

_SHOWN = 3  # keys named per kind of misfit; the rest are counted


def read_state_dict(path: str | Path, *, hint: str = "") -> dict[str, Tensor]:
    """The state_dict a weights file holds (see the module docstring for the accepted layouts)."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise CheckpointError(f"weights {path} {what} (model.weights / --weights); {hint or 'name a state_dict file'}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling failure: not a torch file, or it holds code)
        raise CheckpointError(
            f"weights {path} is not a torch file readable with weights_only=True ({type(err).__name__}); "
            "save the weights with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("ssbench-"):
        raise CheckpointError(
            f"weights {path} is an ssbench checkpoint, not a state_dict; fine-tune from it with "
            f"`ssbench finetune --from {path}`"
        )
    state = payload
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                state = payload[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(
            f"weights {path} holds no state_dict (a dict of tensors, bare or under 'state_dict' / 'model')"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def _shape(t: Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def load_weights(model: nn.Module, path: str | Path, name: str, *, num_classes: int,
                 ignore: Iterable[str] = (), hint: str = "") -> str:
    """Load the weights file at `path` into `model` (a `name` network) in place; returns "kept"
    when the file's head was loaded, "new" when the head was replaced for `num_classes`.

    `ignore`: key prefixes of the file left out (auxiliary heads the network has switched off).
    Raises a one-line CheckpointError naming the first keys that do not fit."""
    path = Path(path).expanduser()
    state = read_state_dict(path, hint=hint)
    prefixes = tuple(ignore)
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    head, layer = head_of(model)
    head_keys = {f"{head}.{p}" for p, _ in layer.named_parameters(recurse=False)}
    own = model.state_dict()
    # BatchNorm fills in a missing step counter itself (files saved before torch 0.4.1 lack it)
    missing = [k for k in own if k not in state and k not in head_keys and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {_shape(state[k])} (the network's {_shape(own[k])})"
              for k in own if k in state and k not in head_keys and state[k].shape != own[k].shape]
    head_in_file = [k for k in head_keys if k in state]
    # the head's input side is part of the backbone: a head of another width means another network
    w = f"{head}.weight"
    if w in state and state[w].shape[1:] != own[w].shape[1:]:
        shapes.append(f"{w} {_shape(state[w])} (the network's {_shape(own[w])}, any number of outputs)")
    if missing or unexpected or shapes:
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else "",
                 f"other shapes {_few(shapes)}" if shapes else ""]
        raise CheckpointError(f"weights {path} do not fit {name}: {'; '.join(p for p in parts if p)}")
    keep_head = bool(head_in_file) and all(k in state and state[k].shape == own[k].shape for k in head_keys)
    body = {k: v for k, v in state.items() if k not in head_keys or keep_head}
    result = model.load_state_dict(body, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and (keep_head or k not in head_keys)]
    if left or result.unexpected_keys:  # pragma: no cover - the checks above found these already
        raise CheckpointError(f"weights {path} do not fit {name}: missing {_few(left)}")
    if keep_head:
        return "kept"
    replace_head(model, num_classes)
    return "new"
