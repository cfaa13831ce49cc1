"""Any torchvision classification model by name, adapted to our inputs.

- head resized to ``num_classes`` (built that way when not pretrained; replaced when pretrained);
- ``in_channels != 3``: the first conv is rebuilt (only without pretrained weights);
- auxiliary heads (GoogLeNet, Inception v3) are switched off: one logits tensor per forward;
- every ``inplace=True`` flag (ReLU, Dropout, ...) is switched off, because the rule engine's custom
  autograd functions must not see their saved tensors modified in place.
"""
from __future__ import annotations

import torch
from torch import nn

from ssbench.errors import SsbenchError


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


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


def build_torchvision(name: str, *, num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    from ssbench.models.heads import head_of, replace_head

    if pretrained:
        if in_channels != 3:
            raise SsbenchError(
                f"pretrained {name} expects 3-channel RGB input; set data.channels=3 (grey images are repeated)"
            )
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
        kwargs: dict = {"weights": None, "num_classes": num_classes}
        if name.startswith("vit_"):
            kwargs["image_size"] = image_size  # ViT's position embedding is sized at construction
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        model = tvm.get_model(name, **kwargs)
        _no_aux(model)
        if in_channels != 3:
            _swap_first_conv(model, in_channels)
    return no_inplace(model)
