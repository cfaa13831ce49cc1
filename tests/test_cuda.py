"""CUDA checks of the GPU-scale features: they run where a CUDA device exists (the GPU machine's
`python3 -m pytest tests/test_cuda.py`) and skip elsewhere, because the component cannot exist on a
CPU-only machine. Their CPU counterparts (bf16 autocast, compile, the loaders' device path, data
parallel on gloo) run everywhere in test_rules_precision.py, test_training_compute.py,
test_pipeline.py and test_distributed.py."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ssbench.models import build_model
from ssbench.rules import RULES, convert
from ssbench.specs import ComputeSpec, DataSpec, ModelSpec, RuleSpec, TrainSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", DTYPES.get(precision, torch.bfloat16), enabled=precision in DTYPES):
        loss = F.cross_entropy(model(x), y)
    (loss * (1024.0 if precision == "fp16" else 1.0)).backward()  # a fixed scale keeps fp16 grads off zero
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("rule", RULES.names())
def test_every_rule_under_cuda_autocast_matches_fp32(rule: str, precision: str) -> None:
    """A rule's low-precision weight gradients are as close to its fp32 ones as plain autograd's are
    on the same network: on an untrained ResNet-18, bf16 alone moves plain BP's gradients to cosine
    ~0.988 in some layers (seen on an H200), so a fixed 0.99 would test the network, not the rule."""
    torch.manual_seed(0)
    net = build_model(ModelSpec(name="resnet18"), num_classes=10, in_channels=3, image_size=64)
    x = torch.rand(16, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device="cuda")
    plain = copy.deepcopy(net).cuda().to(memory_format=torch.channels_last).eval()
    plain_cos = _cosines(_grads(plain, x, y, "fp32"), _grads(plain, x, y, precision))
    model = convert(net, rule, seed=0).cuda().to(memory_format=torch.channels_last)
    model.eval()  # BatchNorm on running statistics: both passes see the same normalisation
    ref = _grads(model, x, y, "fp32")
    low = _grads(model, x, y, precision)
    assert ref.keys() == low.keys() == plain_cos.keys()
    for name, cos in _cosines(ref, low).items():
        assert low[name].dtype == torch.float32  # master weights get fp32 gradients
        assert cos > min(0.99, plain_cos[name] - 0.01), f"{rule} {precision} {name}: cosine {cos:.4f}, plain {plain_cos[name]:.4f}"


def _cosines(ref: dict[str, torch.Tensor], low: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float(F.cosine_similarity(g.flatten(), low[n].flatten(), dim=0)) for n, g in ref.items()}


def test_brsf_draws_on_the_device_reproducibly() -> None:
    torch.manual_seed(0)
    model = convert(build_model(ModelSpec(name="lenet"), num_classes=10, in_channels=1, image_size=28), "brsf", seed=3).cuda()
    x = torch.rand(4, 1, 28, 28, device="cuda")
    layer = next(m for m in model.modules() if hasattr(m, "step_draw_abs"))
    model.train()
    model(x)
    first = layer.step_draw_abs()
    assert first.device.type == "cuda"
    again = copy.deepcopy(model)
    assert torch.equal(again.get_submodule(_name(model, layer)).step_draw_abs(), first)


def _name(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is layer)


def test_tensor_loader_device_path_matches_cpu() -> None:
    from ssbench.data import load_data, make_loader

    bundle = load_data(DataSpec(name="digits", channels=3, image_size=64, augment=True, train_limit=64))
    cpu = list(make_loader(bundle.train, 16, shuffle=True, seed=1))
    gpu = list(make_loader(bundle.train, 16, shuffle=True, seed=1, device=torch.device("cuda")))
    assert len(cpu) == len(gpu)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda"
        assert torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-5)


@pytest.mark.parametrize(("precision", "compiled"), [("bf16", True), ("fp16", False)])
def test_training_on_cuda_with_precision_channels_last_and_compile(precision: str, compiled: bool, sqlite_store) -> None:  # noqa: ANN001
    from ssbench.training.job import run_training

    spec = TrainSpec(
        kind="train", rule=RuleSpec(name="frsf"), model=ModelSpec(name="resnet18"),
        data=DataSpec(name="digits", channels=3, image_size=32), epochs=2, batch_size=64, device="cuda",
        optim={"name": "sgd", "lr": 0.05}, compute=ComputeSpec(precision=precision, channels_last=True, compile=compiled),
    )
    run_id = run_training(spec, sqlite_store, quiet=True)
    run = sqlite_store.get_run(run_id)
    assert run.status == "finished"
    assert run.config["compute"]["precision"] == precision
    m = sqlite_store.frame_metrics()
    losses = m[(m.run_id == run_id) & (m.split == "train") & (m.name == "loss")].sort_values("epoch")["value"].tolist()
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert run.summary.get("test_accuracy", 0) > 0.3  # chance is 0.1; 2 epochs of frsf from scratch
    if compiled:
        assert run.summary["compiled"] is True, "torch.compile fell back to eager on CUDA"
