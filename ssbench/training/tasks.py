"""What a training run optimises and how it is scored: classification here, hashing in retrieval."""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.data import DataBundle, make_loader
from ssbench.specs import TrainSpec


class Task(Protocol):
    name: str

    def prepare_model(self, net: nn.Module) -> nn.Module: ...

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor: ...

    def val_scores(self, model: nn.Module, bundle: DataBundle, device: torch.device) -> dict[str, float]:
        """First key is the selection metric (higher is better)."""
        ...

    def test_scores(self, model: nn.Module, bundle: DataBundle, device: torch.device) -> dict[str, float]: ...


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, dataset, device: torch.device, batch_size: int = 512  # noqa: ANN001
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on `dataset` (eval mode, restored after).

    Always fp32 and eager, whatever the run's compute.precision and compile: a model's scores do not
    depend on how it was trained, and its test accuracy is the clean accuracy an (fp32) attack job
    measures. Evaluation is a forward pass per epoch, a small share of the training cost."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in make_loader(dataset, batch_size, shuffle=False, device=device):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1)}


class ClassificationTask:
    name = "classification"

    def prepare_model(self, net: nn.Module) -> nn.Module:
        return net

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def batch_metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        return {"accuracy": float((outputs.argmax(1) == targets).float().mean())}

    def val_scores(self, model: nn.Module, bundle: DataBundle, device: torch.device) -> dict[str, float]:
        return evaluate_classifier(model, bundle.val, device) if bundle.val is not None else {}

    def test_scores(self, model: nn.Module, bundle: DataBundle, device: torch.device) -> dict[str, float]:
        return evaluate_classifier(model, bundle.test, device)


def make_task(spec: TrainSpec, num_classes: int) -> Task:
    if spec.task == "hashing":
        from ssbench.retrieval.task import HashingTask  # retrieval is optional weight at import time

        assert spec.hashing is not None
        return HashingTask(spec.hashing, num_classes, spec.seed)
    return ClassificationTask()
