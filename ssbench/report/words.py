"""Variant labels in words, for figure titles: `lenet` -> "LeNet", `resnet18[pretrained]` ->
"ResNet-18 (pretrained)", `fashion-mnist[5-9, train=1500]` -> "Fashion-MNIST classes 5-9, 1,500
training images". Tables keep the labels themselves (what `--model` / `--dataset` filters take);
only figures, read without the CLI at hand, get words. Also what a dataset label says about its
classes (the chance level of an accuracy).

The label grammar is `ssbench.report.variants`: `name[option, option]`.
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

# Names whose spelling a rule cannot derive; any other name is shown as it is.
MODEL_NAMES = {"lenet": "LeNet", "lenet-unpadded": "LeNet (unpadded)", "lenet-cifar": "LeNet for CIFAR", "mlp": "MLP",
               "alexnet": "AlexNet", "googlenet": "GoogLeNet"}
# family + depth: resnet18 -> ResNet-18, vgg16_bn -> VGG-16 (batch norm)
MODEL_FAMILIES = {"resnet": "ResNet", "vgg": "VGG", "densenet": "DenseNet", "resnext": "ResNeXt", "wide_resnet": "Wide ResNet"}
DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "digits": "scikit-learn digits", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "imagenet": "ImageNet", "imagenet100": "ImageNet-100", "coco": "MS-COCO",
                 "nuswide": "NUS-WIDE", "list-retrieval": "retrieval lists"}
KIND_WORDS = {"finetune": "fine-tuning", "pretrain": "pre-training", "train": "training"}
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _split(label: Any) -> tuple[str, list[str]]:
    """`name[a, b]` -> ("name", ["a", "b"]); a bare name has no options."""
    m = re.fullmatch(r"(.*?)\[(.*)\]", str(label).strip())
    if not m:
        return str(label).strip(), []
    return m.group(1), [o.strip() for o in m.group(2).split(", ") if o.strip()]


def _model_name(name: str) -> str:
    if name.lower() in MODEL_NAMES:
        return MODEL_NAMES[name.lower()]
    m = re.fullmatch(r"([a-z_]+?)(\d+)(_bn)?(_\d+)?", name.lower())
    if m and m.group(1) in MODEL_FAMILIES:
        words = f"{MODEL_FAMILIES[m.group(1)]}-{m.group(2)}"
        words += f"-{m.group(4)[1:]}" if m.group(4) else ""
        return words + (" (batch norm)" if m.group(3) else "")
    return name


def _widths(opt: str) -> str | None:
    """`256x3` -> "3 hidden layers of 256", `512-256` -> "hidden layers 512, 256", `16` -> "1 hidden layer of 16"."""
    m = re.fullmatch(r"(\d+)x(\d+)", opt)
    if m:
        return f"{m.group(2)} hidden layers of {m.group(1)}"
    if re.fullmatch(r"\d+(-\d+)*", opt):
        widths = opt.split("-")
        return f"1 hidden layer of {widths[0]}" if len(widths) == 1 else f"hidden layers {', '.join(widths)}"
    return None


def model_words(label: Any) -> str:
    """`mlp[256x3]` -> "MLP (3 hidden layers of 256)", `resnet18[pretrained]` -> "ResNet-18 (pretrained)"."""
    name, opts = _split(label)
    shown = [_widths(o) or o for o in opts]
    return _model_name(name) + (f" ({', '.join(shown)})" if shown else "")


def _classes(opt: str) -> list[int] | None:
    """`5-9` -> [5, 6, 7, 8, 9], `0,2,4` -> [0, 2, 4]; None when `opt` is not a class list."""
    m = re.fullmatch(r"(\d+)-(\d+)", opt)
    if m:
        return list(range(int(m.group(1)), int(m.group(2)) + 1))
    if re.fullmatch(r"\d+(,\d+)+|\d+", opt):
        return [int(c) for c in opt.split(",")]
    return None


def dataset_words(label: Any) -> str:
    """`fashion-mnist[5-9, train=1500]` -> "Fashion-MNIST classes 5-9, 1,500 training images"."""
    name, opts = _split(label)
    words = DATASET_NAMES.get(name.lower(), name)
    for opt in opts:
        if _classes(opt) is not None:
            words += f" classes {opt.replace(',', ', ')}"
        elif opt.startswith("train="):
            words += f", {int(opt.removeprefix('train=')):,} training images"
        else:
            words += f", {opt}"
    return words


def subject_words(model: Any, dataset: Any, bits: Any = None) -> str:
    """"LeNet, Fashion-MNIST classes 5-9" (", 32-bit codes" for hashing runs)."""
    words = f"{model_words(model)}, {dataset_words(dataset)}"
    return words + ("" if bits is None or pd.isna(bits) else f", {int(bits)}-bit codes")


def class_count(label: Any) -> int | None:
    """How many classes a dataset label's runs classify: its class subset, else the full set's count
    (`ssbench.data.NUM_CLASSES`); None for a set whose classes live on disk (folders, lists)."""
    name, opts = _split(label)
    for opt in opts:
        classes = _classes(opt)
        if classes is not None:
            return len(classes)
    from ssbench.data import NUM_CLASSES  # imports torch: only for a label without a class subset

    return NUM_CLASSES.get(name.lower())
