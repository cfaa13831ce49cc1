"""Any torchvision classification model by name, adapted to our inputs.

- head resized to ``num_classes`` (built that way when not pretrained; replaced when pretrained);
- pretrained weights come from torchvision's download (``pretrained``), or from a state_dict file
  (``weights``: no network; see :mod:`ssbench.models.weights`), which wins when both are given;
- ``in_channels != 3``: the first conv is rebuilt (only without pretrained weights);
- auxiliary heads (GoogLeNet, Inception v3) are switched off: one logits tensor per forward;
- every ``inplace=True`` flag (ReLU, Dropout, ...) is switched off, because the rule engine's custom
  autograd functions must not see their saved tensors modified in place.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssbench.errors import SpecError, SsbenchError


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def default_weights_url(name: str) -> str | None:
    """Where torchvision downloads `name`'s default pretrained weights from (None: it has none)."""
    import torchvision.models as tvm

    try:
        return str(tvm.get_model_weights(name).DEFAULT.url)
    except (ValueError, KeyError, AttributeError):
        return None


def cached_weights(name: str) -> Path | None:
    """torchvision's default weights file for `name` in torch's hub cache ($TORCH_HOME), where
    ``pretrained=true`` reads it without a network; None when it is not there."""
    url = default_weights_url(name)
    if url is None:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:160]


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def _swap_first_conv(model: nn.Module, in_channels: int) -> None:
    found = _first_conv(model)
    if found is None:
        raise SsbenchError(f"{type(model).__name__} has no Conv2d input layer to adapt to {in_channels} channels")
    name, old = found
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
        dilation=old.dilation, groups=1, bias=old.bias is not None, padding_mode=old.padding_mode,
    )
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")  # auxiliary heads in torchvision's files; switched off here


def _no_aux(model: nn.Module) -> None:
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)


def no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


def _arch_kwargs(name: str, num_classes: int, image_size: int, *, for_weights: bool) -> dict:
    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size  # ViT's position embedding is sized at construction
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=not for_weights)
        if for_weights:  # as torchvision builds them for its weights, which expect inputs mapped this way
            kwargs["transform_input"] = True
    return kwargs


def build_torchvision(name: str, *, num_classes: int, in_channels: int, image_size: int, pretrained: bool,
                      weights: Path | None = None) -> nn.Module:
    import torchvision.models as tvm

    from ssbench.models.heads import head_of, replace_head

    if pretrained or weights is not None:
        if in_channels != 3:
            raise SpecError(
                f"pretrained {name} expects 3-channel RGB input; set data.channels=3 (grey images are repeated)"
            )
    if weights is not None:
        from ssbench.models.weights import load_weights

        model = tvm.get_model(name, **_arch_kwargs(name, num_classes, image_size, for_weights=True))
        _no_aux(model)
        url = default_weights_url(name)
        hint = f"download {url} where a network is and copy it there" if url else ""
        load_weights(model, weights, name, num_classes=num_classes, ignore=_AUX_PREFIXES, hint=hint)
    elif pretrained:
        try:
            model = tvm.get_model(name, weights="DEFAULT")
        except (ValueError, KeyError) as exc:  # no weights published for this name
            raise SsbenchError(f"torchvision has no pretrained weights for {name} ({_one_line(exc)}); set model.pretrained=false") from exc
        except Exception as exc:  # URLError, timeouts, HTTP errors, corrupt downloads
            hub = torch.hub.get_dir()
            raise SsbenchError(
                f"could not fetch torchvision's pretrained weights for {name} ({_one_line(exc)}); "
                f"run once with a network, copy the weight file into {hub}/checkpoints, or set model.pretrained=false"
            ) from exc
        _no_aux(model)
        if head_of(model)[1].weight.shape[0] != num_classes:
            replace_head(model, num_classes)
    else:
        model = tvm.get_model(name, **_arch_kwargs(name, num_classes, image_size, for_weights=False))
        _no_aux(model)
        if in_channels != 3:
            _swap_first_conv(model, in_channels)
    return no_inplace(model)
