"""RuleSpec.init='xavier' (BioTorch's initialisation) against independent computations: torch's own
fan computation and xavier_uniform_, closed-form moments of U(-b, b), and BioTorch's DFA kernel
construction for conv layers."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ssbench.rules import angle_deg, convert, feedback_layers, rule_config, xavier_init
from ssbench.rules.base import layer_generator
from ssbench.specs import DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec

SEED = 5


# ------------------------------------------------------------------ helpers (independent of ssbench)


def _fans(w: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(w)  # torch's own, not ssbench's


def _bound(w: torch.Tensor) -> float:
    fan_in, fan_out = _fans(w)
    return math.sqrt(6.0 / (fan_in + fan_out))


def _small_net(kind: str) -> nn.Module:
    torch.manual_seed(3)
    if kind == "linear":
        return nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 7))
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 4, 3, stride=2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 5))


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(4, 20, generator=g) if kind == "linear" else torch.randn(4, 3, 8, 8, generator=g)


def _big(kind: str) -> nn.Module:
    """One layer with ~1e6 (linear) / ~6e5 (conv) entries: moments to a fraction of a percent."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(1000, 1000)) if kind == "linear" else nn.Sequential(nn.Conv2d(256, 256, 3))


def _spec(rule: str, init: str = "xavier") -> RuleSpec:
    return RuleSpec(name=rule, init=init)


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    model.zero_grad()
    model(x).square().sum().backward()


def _assert_uniform(t: torch.Tensor, b: float, *, signed: bool = True) -> None:
    """t looks like U(-b, b) (signed) or |U(-b, b)|: in range, mean and second moment within 5
    standard errors of the closed forms."""
    t = t.detach().double().flatten()
    n = t.numel()
    assert float(t.abs().max()) <= b * (1 + 1e-6)
    if signed:
        # E x = 0, sd(x) = b / sqrt(3); E x^2 = b^2 / 3, sd(x^2) = b^2 sqrt(4 / 45)
        assert abs(float(t.mean())) < 5 * b / math.sqrt(3 * n)
        assert abs(float(t.square().mean()) - b * b / 3) < 5 * b * b * math.sqrt(4 / 45 / n)
    else:
        # |x| ~ U(0, b): mean b / 2, sd b / sqrt(12)
        assert abs(float(t.mean()) - b / 2) < 5 * b / math.sqrt(12 * n)


# ------------------------------------------------------------------ B statistics per rule


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_usf_B_is_sign_of_W_times_xavier_std_exactly(kind: str) -> None:
    model = convert(_small_net(kind), _spec("usf"), seed=SEED)
    _train_step(model, _input(kind))
    for _, layer in feedback_layers(model):
        w = layer.weight.detach()
        fan_in, fan_out = _fans(w)
        expected = torch.sign(w) * math.sqrt(2.0 / (fan_in + fan_out))  # BioTorch's scaling_factor
        assert torch.equal(layer.feedback_tensor(), expected)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("rule", ["frsf", "brsf"])
def test_sign_rules_have_sign_of_W_and_xavier_magnitudes(rule: str, kind: str) -> None:
    model = convert(_small_net(kind), _spec(rule), seed=SEED)
    _train_step(model, _input(kind))
    for _, layer in feedback_layers(model):
        w, b = layer.weight.detach(), layer.feedback_tensor()
        assert torch.equal(torch.sign(b), torch.sign(w))
        assert float(b.abs().max()) <= _bound(w) * (1 + 1e-6)
    big = convert(_big(kind), _spec(rule), seed=SEED)
    big.train()
    (_, layer), = feedback_layers(big)
    layer.feedback_step += 1  # brsf: the draw of training step 1
    _assert_uniform(layer.feedback_tensor().abs(), _bound(layer.weight), signed=False)


def test_brsf_xavier_redraws_per_step() -> None:
    model = convert(_small_net("linear"), _spec("brsf"), seed=SEED)
    layer = feedback_layers(model)[0][1]
    model.train()
    layer.feedback_step += 1
    b1 = layer.feedback_tensor()
    layer.feedback_step += 1
    b2 = layer.feedback_tensor()
    assert not torch.equal(b1, b2) and torch.equal(b1.sign(), b2.sign())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fa_B_is_xavier_uniform(kind: str) -> None:
    model = convert(_small_net(kind), _spec("fa"), seed=SEED)
    for _, layer in feedback_layers(model):
        assert float(layer.feedback_tensor().abs().max()) <= _bound(layer.weight) * (1 + 1e-6)
    (_, layer), = feedback_layers(convert(_big(kind), _spec("fa"), seed=SEED))
    _assert_uniform(layer.feedback_tensor(), _bound(layer.weight))
    # not scaled to W (the default): the pretrained scale of W plays no part
    w_scaled = _big(kind)
    with torch.no_grad():
        w_scaled[0].weight.mul_(1000)
    (_, again), = feedback_layers(convert(w_scaled, _spec("fa"), seed=SEED))
    assert torch.equal(again.feedback_tensor(), layer.feedback_tensor())


def _dfa_matrices(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    _train_step(model, x.requires_grad_())  # the first layer draws B_l only when its input needs a gradient
    return [(layer, layer.feedback_tensor()) for _, layer in feedback_layers(model)]


def test_dfa_linear_B_l_is_xavier_of_its_shape() -> None:
    torch.manual_seed(6)
    model = convert(nn.Sequential(nn.Linear(800, 600), nn.Tanh(), nn.Linear(600, 10)), _spec("dfa"), seed=SEED)
    (_, b1), (_, b2) = _dfa_matrices(model, torch.randn(3, 800))
    assert b1.shape == (10, 800) and b2.shape == (10, 600)
    _assert_uniform(b1, _bound(b1))  # torch's xavier of B_l's own shape: BioTorch's Linear B
    _assert_uniform(b2, _bound(b2))


def _biotorch_dense(c_in: int, k_out: int, ksize: int, stride: int, padding: int, h: int, draws: int) -> torch.Tensor:
    """`draws` dense feedback matrices as BioTorch's DFA conv applies them: a xavier_uniform_ kernel
    (K, C_in, k, k) and conv2d_input(kernel, e broadcast to every output position); row k of the
    dense matrix is that input gradient for e = one-hot(k)."""
    g = torch.Generator().manual_seed(12)
    ho = (h + 2 * padding - ksize) // stride + 1
    e = torch.eye(k_out, dtype=torch.float64)[:, :, None, None].expand(k_out, k_out, ho, ho)
    rows = []
    for _ in range(draws):
        kernel = nn.init.xavier_uniform_(torch.empty(k_out, c_in, ksize, ksize, dtype=torch.float64), generator=g)
        rows.append(torch.nn.grad.conv2d_input((k_out, c_in, h, h), kernel, e, stride=stride, padding=padding))
    return torch.stack(rows)


# (in channels, kernel, stride, padding, map size): a large map, stride 2, LeNet's conv3 on a 5x5 map
# (1x1 output: one tap per input position, where the interior formula assumed 25), and padding
@pytest.mark.parametrize("c_in, ksize, stride, padding, h", [
    (3, 3, 1, 0, 24), (3, 3, 2, 0, 24), (16, 5, 1, 0, 5), (6, 5, 1, 2, 8),
])
def test_dfa_conv_B_l_has_biotorch_mean_effective_variance(c_in: int, ksize: int, stride: int, padding: int, h: int) -> None:
    k_out = 10
    torch.manual_seed(7)
    conv = nn.Conv2d(c_in, 8, ksize, stride=stride, padding=padding)
    ho = (h + 2 * padding - ksize) // stride + 1
    model = convert(nn.Sequential(nn.Conv2d(1, c_in, 1), conv, nn.Flatten(), nn.Linear(8 * ho * ho, k_out)),
                    _spec("dfa"), seed=SEED)
    (_, _), (_, b), (_, _) = _dfa_matrices(model, torch.randn(2, 1, h, h))
    assert b.shape == (k_out, c_in * h * h)
    # independent: taps per input position = conv2d_input of an all-ones kernel and all-ones error
    ones = torch.ones(1, 1, ksize, ksize, dtype=torch.float64)
    taps = torch.nn.grad.conv2d_input((1, 1, h, h), ones, torch.ones(1, 1, ho, ho, dtype=torch.float64),
                                      stride=stride, padding=padding).mean()
    var = 2.0 * float(taps) / ((c_in + k_out) * ksize * ksize)  # BioTorch's mean entry variance, exactly
    _assert_uniform(b, math.sqrt(3.0 * var))
    # and BioTorch's own dense matrices, sampled, agree with it (entries are sums of uniforms: second moment)
    sampled = float(_biotorch_dense(c_in, k_out, ksize, stride, padding, h, draws=400 if h < 10 else 60).square().mean())
    assert sampled == pytest.approx(var, rel=0.06)


# ------------------------------------------------------------------ forward weights


def _xavier_reference(shape: torch.Size, seed: int, index: int) -> torch.Tensor:
    """The documented W stream: xavier_uniform_ from generator (seed, layer index, step -1)."""
    return nn.init.xavier_uniform_(torch.empty(shape), generator=layer_generator(seed, index, -1))


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf", "ifa", "dfa"])
def test_from_scratch_reinitialises_W_xavier_before_B(rule: str, kind: str) -> None:
    net = _small_net(kind)
    before = copy.deepcopy(net)
    state_before = torch.get_rng_state()
    model = convert(net, _spec(rule), seed=SEED, from_scratch=True)
    assert torch.equal(torch.get_rng_state(), state_before)  # private generators only
    for index, ((_, layer), old) in enumerate(zip(feedback_layers(model), [m for m in before if hasattr(m, "weight")])):
        w = layer.weight.detach()
        assert torch.equal(w, _xavier_reference(w.shape, SEED, index))
        assert not torch.equal(w, old.weight)
        assert float(w.abs().max()) <= _bound(w) * (1 + 1e-6)
        assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))  # BioTorch: bias 0
        if rule in ("usf", "frsf", "brsf"):
            assert torch.equal(layer.feedback_tensor().sign(), w.sign())  # B follows the new W
        if rule == "ifa":
            assert angle_deg(w, layer.feedback_tensor()) == pytest.approx(45.0, abs=0.01)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_from_scratch_W_is_xavier_not_torch_default(kind: str) -> None:
    default = _big(kind)
    (_, layer), = feedback_layers(convert(_big(kind), _spec("fa"), seed=SEED, from_scratch=True))
    w = layer.weight
    _assert_uniform(w, _bound(w))
    fan_in, _ = _fans(w)
    w = w.detach()
    # torch's default init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance 1/(3 fan_in), not xavier's
    assert float(default[0].weight.detach().abs().max()) <= 1 / math.sqrt(fan_in) * (1 + 1e-6)
    assert abs(float(w.double().square().mean()) - _bound(w) ** 2 / 3) < 0.01 * _bound(w) ** 2 / 3
    assert abs(_bound(w) ** 2 / 3 - 1 / (3 * fan_in)) > 0.1 / (3 * fan_in)  # the two inits do differ


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf", "dfa"])
def test_finetune_keeps_W_and_bias(rule: str) -> None:
    net = _small_net("conv")
    before = copy.deepcopy(net)
    model = convert(net, _spec(rule), seed=SEED)  # from_scratch defaults to False
    for (_, layer), old in zip(feedback_layers(model), [m for m in before if hasattr(m, "weight")]):
        assert torch.equal(layer.weight, old.weight) and torch.equal(layer.bias, old.bias)


def test_xavier_init_without_conversion_matches_convert_from_scratch() -> None:
    a = xavier_init(_small_net("conv"), seed=SEED)
    b = convert(_small_net("conv"), _spec("fa"), seed=SEED, from_scratch=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# ------------------------------------------------------------------ default unchanged, config, checkpoints


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf", "ifa", "dfa"])
def test_default_init_is_the_field_absent(rule: str) -> None:
    x = _input("conv").requires_grad_()  # every dfa layer draws its B_l
    absent = convert(_small_net("conv"), RuleSpec(name=rule), seed=SEED)
    explicit = convert(_small_net("conv"), RuleSpec(name=rule, init="default"), seed=SEED, from_scratch=True)
    plain = convert(_small_net("conv"), rule, seed=SEED)
    for m in (absent, explicit, plain):
        _train_step(m, x)
    for (_, a), (_, b), (_, c) in zip(feedback_layers(absent), feedback_layers(explicit), feedback_layers(plain)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight)
        assert torch.equal(a.feedback_tensor(), b.feedback_tensor())
        assert torch.equal(a.feedback_tensor(), c.feedback_tensor())
    assert "init" not in rule_config(absent)
    assert "init" not in RuleSpec(name=rule).model_dump()  # default runs hash as they always did
    assert TrainSpec(kind="train", rule=RuleSpec(name=rule, init="default")).model_dump() == \
        TrainSpec(kind="train", rule=RuleSpec(name=rule)).model_dump()


def test_xavier_is_recorded_in_spec_and_rule_config() -> None:
    from ssbench.store import config_hash

    a, b = TrainSpec(kind="train", rule=_spec("fa", "default")), TrainSpec(kind="train", rule=_spec("fa"))
    assert config_hash(a) != config_hash(b)
    assert TrainSpec.model_validate(b.model_dump(mode="json")) == b
    assert rule_config(convert(_small_net("linear"), _spec("ifa"), seed=SEED)) == {
        "name": "ifa", "init": "xavier", "theta": 45.0, "seed": SEED, "skip": []}


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf", "dfa"])
def test_checkpoint_of_xavier_run_reloads_the_same_B(rule: str, tmp_path: Path) -> None:
    from ssbench.training.checkpoint import ModelMeta, build_network, model_from_checkpoint, read_checkpoint, save_checkpoint

    spec = TrainSpec(kind="train", data=DataSpec(name="digits"), model=ModelSpec(name="lenet"), rule=_spec(rule))
    meta = ModelMeta(model=spec.model.model_dump(mode="json"), num_classes=10, in_channels=1, image_size=28,
                     mean=[0.5], std=[0.25], task="classification", rule=None)
    model = convert(build_network(meta, spec), spec.rule, seed=9, from_scratch=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_step(model, torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)).requires_grad_())
    opt.step()  # W moves: usf / frsf / brsf must follow the saved W, not the initial one
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", model, meta, spec, epoch=1, run_id=None)
    rebuilt, _, _ = model_from_checkpoint(read_checkpoint(path))
    rebuilt.eval()
    assert rule_config(rebuilt)["init"] == "xavier"
    for (_, a), (_, b) in zip(feedback_layers(model), feedback_layers(rebuilt)):
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(a.feedback_tensor(), b.feedback_tensor())


# ------------------------------------------------------------------ the training job


def test_training_job_inits_from_scratch_and_finetune_keeps_W(tmp_path: Path) -> None:
    from ssbench.store import open_store
    from ssbench.training import load_trained, run_training

    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    data, mlp = DataSpec(name="digits", classes=(0, 1, 2), val_fraction=0.2), ModelSpec(name="mlp", hidden=(32,))
    still = OptimSpec(lr=1e-12)  # W stays at its init to ~1e-12
    common = dict(data=data, model=mlp, optim=still, epochs=1, batch_size=64, select="last", seed=3)
    pre = run_training(TrainSpec(kind="pretrain", rule=RuleSpec(init="xavier"), **common), store, quiet=True)
    tr = run_training(TrainSpec(kind="train", rule=_spec("usf"), **common), store, quiet=True)
    for run_id in (pre, tr):
        linears = [m for m in load_trained(store, run_id).model.modules() if isinstance(m, nn.Linear)]
        for index, layer in enumerate(linears):
            ref = _xavier_reference(layer.weight.shape, 3, index)
            torch.testing.assert_close(layer.weight.detach(), ref, rtol=0, atol=1e-9)
            torch.testing.assert_close(layer.bias.detach(), torch.zeros_like(layer.bias), rtol=0, atol=1e-9)
    src = load_trained(store, pre).model
    ft_spec = TrainSpec(kind="finetune", source=str(pre), rule=_spec("frsf"), **{**common, "seed": 4})
    ft = load_trained(store, run_training(ft_spec, store, quiet=True)).model
    for (n, a), (_, b) in zip(src.named_parameters(), ft.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=n)  # the checkpoint's W, not a re-init
    for _, layer in feedback_layers(ft):
        assert float(layer.feedback_tensor().abs().max()) <= _bound(layer.weight) * (1 + 1e-6)


def test_cli_init_option_reaches_the_run(tmp_path) -> None:
    from typer.testing import CliRunner

    from ssbench.cli import app
    from ssbench.store import open_store

    url = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["train", "--dataset", "digits", "--model", "mlp", "--rule", "fa", "--epochs", "1", "-q", "--db", url,
            "--train-limit", "200"]
    ok = CliRunner().invoke(app, [*args, "--init", "xavier"])
    assert ok.exit_code == 0, ok.output
    assert open_store(url).list_runs()[0].config["rule"]["init"] == "xavier"
    bad = CliRunner().invoke(app, [*args, "--init", "he"])
    assert bad.exit_code == 2 and "init" in bad.output and bad.output.strip().count("\n") == 0
