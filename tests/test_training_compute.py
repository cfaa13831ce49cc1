"""The training job's compute options (TrainSpec.compute) on the CPU, scikit-learn digits: bf16 / fp16
autocast, channels_last, torch.compile and its fall back to eager; the attacks' precision option."""
from __future__ import annotations

import functools
import io
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from ssbench.specs import AttackSpec, ComputeSpec, DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import open_store
from ssbench.training import job, run_training
from ssbench.training.checkpoint import RESUME_FILE, read_checkpoint, read_resume_state
from ssbench.training.precision import MIN_SCALE, MixedPrecision
from ssbench.training.step import TrainStep

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = DataSpec(name="digits", classes=(0, 1, 2, 3, 4), val_fraction=0.2)
MLP = ModelSpec(name="mlp", hidden=(32,))


def _spec(rule: str = "fa", model: ModelSpec = MLP, data: DataSpec = DIGITS, epochs: int = 2, **compute) -> TrainSpec:  # noqa: ANN003
    return TrainSpec(kind="train", data=data, model=model, rule=RuleSpec(name=rule), optim=OptimSpec(lr=0.05),
                     epochs=epochs, batch_size=64, device="cpu", compute=ComputeSpec(**compute))


class Spy:
    """Replaces the job's TrainStep by a recording one: the loss of every step, the dtype of the
    model's outputs and the memory format of the batches its first layer receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.losses: list[float] = []
        self.out_dtypes: set[torch.dtype] = set()
        self.nhwc: set[bool] = set()
        self.steps: list[TrainStep] = []
        self.stepping = False
        spy = self

        class Recording(TrainStep):
            def __init__(self, model: nn.Module, *a, **kw) -> None:  # noqa: ANN002, ANN003
                super().__init__(model, *a, **kw)
                spy.steps.append(self)
                first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
                first.register_forward_pre_hook(spy.see_batch)

            def __call__(self, x, y, epoch):  # noqa: ANN001, ANN204
                spy.stepping = True
                try:
                    out, loss = super().__call__(x, y, epoch)
                finally:
                    spy.stepping = False
                spy.losses.append(float(loss.detach()))
                spy.out_dtypes.add(out.dtype)
                return out, loss

        monkeypatch.setattr(job, "TrainStep", Recording)

    def see_batch(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self.stepping:  # not evaluation's forwards
            x = args[0]
            self.nhwc.add(x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))

    def reset(self) -> None:
        """The records start over (the patch stays)."""
        self.losses, self.out_dtypes, self.nhwc, self.steps = [], set(), set(), []


def _train(store, spec: TrainSpec, **kw):  # noqa: ANN001, ANN003, ANN202
    run = store.get_run(run_training(spec, store, quiet=True, **kw))
    return run, read_checkpoint(store.checkpoint_dir(run.id) / "last.pt")["state_dict"]


def _epoch_losses(store, run_id: int) -> list[float]:  # noqa: ANN001
    m = store.frame_metrics()
    m = m[(m.run_id == run_id) & (m.split == "train") & (m.name == "loss")].sort_values("epoch")
    return list(m.value)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:  # noqa: ANN003
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# -- precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_bf16_autocast_trains_close_to_fp32(rule: str, sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    spy = Spy(monkeypatch)
    ref, ref_w = _train(sqlite_store, _spec(rule))
    assert spy.out_dtypes == {torch.float32}
    spy.reset()
    run, w = _train(sqlite_store, _spec(rule, precision="bf16"))
    assert run.status == "finished"
    assert spy.out_dtypes == {torch.bfloat16}  # the forward really ran in bf16 ...
    assert all(t.dtype == torch.float32 for t in w.values() if t.is_floating_point())  # ... on fp32 weights
    losses, ref_losses = _epoch_losses(sqlite_store, run.id), _epoch_losses(sqlite_store, ref.id)
    assert losses[-1] < losses[0] and spy.losses[-1] < spy.losses[0]
    # the same training, changed by bf16's rounding only (8 bits of mantissa: ~0.4% per op)
    assert losses == pytest.approx(ref_losses, rel=0.03)
    assert run.summary["test_accuracy"] == pytest.approx(ref.summary["test_accuracy"], abs=0.1)
    assert "compiled" not in run.summary  # recorded where --compile was asked only


def test_fp16_trains_on_the_cpu_with_a_gradient_scaler(sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    spy = Spy(monkeypatch)
    run, w = _train(sqlite_store, _spec("usf", precision="fp16"))
    assert spy.out_dtypes == {torch.float16}
    assert spy.steps[0].precision.scaler is not None
    assert all(t.dtype == torch.float32 for t in w.values() if t.is_floating_point())
    losses = _epoch_losses(sqlite_store, run.id)
    assert losses[-1] < losses[0]


def test_fp16_skipped_steps_are_normal_and_the_resume_state_carries_the_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scale of 2**24 overflows fp16 gradients: the first steps are skipped and the scale halved,
    and the run goes on. An interrupted run continues with the scale it had reached: it ends with an
    uninterrupted run's weights (starting again at 2**24 would skip other steps)."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**24))
    spec = _spec("fa", epochs=3, precision="fp16")
    ref_store = open_store(f"sqlite:///{tmp_path / 'ref' / 'r.db'}", artifacts=tmp_path / "ref")
    ref, ref_w = _train(ref_store, spec)
    assert ref.status == "finished"

    store = open_store(f"sqlite:///{tmp_path / 'res' / 'r.db'}", artifacts=tmp_path / "res")

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(spec, store, quiet=True, on_epoch=stop)
    state = read_resume_state(store.checkpoint_dir(1) / RESUME_FILE)
    assert state is not None and state["epoch"] == 1
    assert 1.0 <= state["scaler"]["scale"] < 2.0**24  # steps were skipped, and the scale moved down
    run, w = _train(store, spec)
    assert run.summary["resumed_from"] == {"run": 1, "epoch": 1}
    _close(w, ref_w, rtol=0, atol=0)


def test_fp16_gradients_that_overflow_at_every_scale_are_a_divergence() -> None:
    """sqrt at 0: a finite loss with an infinite gradient. Each step is skipped (the weight never
    moves) and the scale halved until it passes MIN_SCALE: then the run fails, saying why."""
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    mp = MixedPrecision("fp16", torch.device("cpu"))
    with pytest.raises(FloatingPointError, match="overflow even at loss scale"):
        for _ in range(100):
            opt.zero_grad()
            loss = torch.sqrt(p).sum()
            assert torch.isfinite(loss)
            mp.backward(loss)
            mp.step(opt)
    assert mp.scaler.get_scale() < MIN_SCALE <= 2 * mp.scaler.get_scale()
    assert torch.equal(p.detach(), torch.zeros(3))


def test_a_forward_that_overflows_fp16_fails_the_loss_check() -> None:
    """Logits beyond fp16's range (65504) are inf: a non-finite loss, which the scaler cannot mend."""
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(200.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, nn.functional.cross_entropy, opt, ComputeSpec(precision="fp16"), torch.device("cpu"))
    before = model.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="loss became .* at epoch 3"):
        step(torch.full((2, 4), 100.0), torch.tensor([0, 1]), 3)
    assert torch.equal(model.weight.detach(), before)  # refused before any step


# -- memory format ------------------------------------------------------------------------------


def test_channels_last_equals_contiguous(sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    spy = Spy(monkeypatch)
    small = DIGITS.replace(image_size=28, channels=3, train_limit=256)  # 3 channels: NCHW and NHWC differ
    lenet = ModelSpec(name="lenet")
    ref, ref_w = _train(sqlite_store, _spec("usf", model=lenet, data=small, epochs=1))
    assert spy.nhwc == {False}
    spy.reset()
    run, w = _train(sqlite_store, _spec("usf", model=lenet, data=small, epochs=1, channels_last=True))
    assert spy.nhwc == {True}  # the batches reach the first convolution in NHWC order
    assert spy.steps[0].model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # the same numbers up to the order of float sums
    _close(w, ref_w, rtol=1e-4, atol=1e-5)
    assert _epoch_losses(sqlite_store, run.id) == pytest.approx(_epoch_losses(sqlite_store, ref.id), rel=1e-5)


def test_the_compute_block_is_stored_with_the_run(sqlite_store) -> None:  # noqa: ANN001
    plain = sqlite_store.get_run(run_training(_spec(epochs=1), sqlite_store, quiet=True))
    assert "compute" not in plain.config  # a late field at its default: earlier configs keep their hash
    spec = _spec(epochs=1, precision="bf16", channels_last=True, workers=0)
    run = sqlite_store.get_run(run_training(spec, sqlite_store, quiet=True))
    assert run.config["compute"] == {"precision": "bf16", "channels_last": True, "compile": False, "workers": 0, "gpus": 1}
    assert run.config_hash != plain.config_hash
    assert TrainSpec.model_validate(run.config) == spec


# -- compile ------------------------------------------------------------------------------------


@pytest.fixture()
def fresh_dynamo() -> None:
    # each test compiles anew: dynamo's per-function cache limit is never what a test measures
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


FIVE_STEPS = DIGITS.replace(train_limit=320)  # 320 / 64: five steps in one epoch


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("rule", ["fa", "usf"])
def test_compiled_training_follows_the_eager_trajectory(rule: str, sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    spy = Spy(monkeypatch)
    ref, ref_w = _train(sqlite_store, _spec(rule, data=FIVE_STEPS, epochs=1))
    eager = spy.losses
    spy.reset()
    out = io.StringIO()
    run = sqlite_store.get_run(run_training(_spec(rule, data=FIVE_STEPS, epochs=1, compile=True), sqlite_store,
                                            quiet=True, console=Console(file=out, width=300)))
    w = read_checkpoint(sqlite_store.checkpoint_dir(run.id) / "last.pt")["state_dict"]
    assert len(eager) == len(spy.losses) == 5
    if shutil.which("gcc") or shutil.which("cc"):  # inductor's CPU code needs a C compiler
        assert run.summary["compiled"] is True and "warning" not in out.getvalue()
    else:  # then the fall back: one warning line, eager steps
        assert run.summary["compiled"] is False and out.getvalue().count("torch.compile failed") == 1
    assert spy.losses == pytest.approx(eager, rel=1e-5)
    _close(w, ref_w, rtol=1e-5, atol=1e-6)  # plain keys: the checkpoint holds the uncompiled module's state


def _failing_backward(gm, example_inputs):  # noqa: ANN001, ANN202
    raise RuntimeError("no backward compiler here\nsecond line")


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_compile_failure_falls_back_to_eager_with_one_warning(where: str, sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The failing step is undone and rerun eager: the run equals an eager one bit for bit. brsf: its
    per-step counter is a buffer the compiled forward had already advanced (backward failure)."""
    from torch._dynamo.backends.common import aot_autograd

    from ssbench.training import compiled

    def refuse(gm, example_inputs):  # noqa: ANN001, ANN202
        raise RuntimeError("backend refuses")

    backend = refuse if where == "forward" else aot_autograd(fw_compiler=lambda gm, _: gm.forward, bw_compiler=_failing_backward)
    real_compile = torch.compile
    monkeypatch.setattr(compiled.torch, "compile", lambda m: real_compile(m, backend=backend))
    spec = _spec("brsf", data=FIVE_STEPS, epochs=1)
    ref, ref_w = _train(sqlite_store, spec)
    out = io.StringIO()
    run = sqlite_store.get_run(run_training(spec.replace(compute=ComputeSpec(compile=True)), sqlite_store, quiet=True,
                                            console=Console(file=out, width=300)))
    w = read_checkpoint(sqlite_store.checkpoint_dir(run.id) / "last.pt")["state_dict"]
    warned = [line for line in out.getvalue().splitlines() if "warning" in line]
    why = "backend refuses" if where == "forward" else "RuntimeError: no backward compiler here"
    assert len(warned) == 1 and "torch.compile failed" in warned[0] and why in warned[0] and "second line" not in warned[0]
    assert run.summary["compiled"] is False
    _close(w, ref_w, rtol=0, atol=0)
    assert _epoch_losses(sqlite_store, run.id) == _epoch_losses(sqlite_store, ref.id)


# -- attacks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "train"])
def test_attack_precision_sets_the_dtype_of_the_targets_logits(precision: str, sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A bf16-trained target: attacked in fp32 by default, in bf16 with precision 'train'; the
    gradient modes both differentiate through it either way."""
    from ssbench.attacks.job import run_attack
    from ssbench.training import checkpoint

    target = run_training(_spec("fa", epochs=1, precision="bf16"), sqlite_store, quiet=True)
    dtypes: set[torch.dtype] = set()
    real_load = checkpoint.load_trained

    def load_and_watch(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        trained = real_load(*a, **kw)
        trained.model.net.fc.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
        return trained

    monkeypatch.setattr(checkpoint, "load_trained", load_and_watch)
    spec = AttackSpec(target=str(target), attacks=("fgsm",), eps=(0.0, 0.1), n_examples=32, precision=precision)
    attack = sqlite_store.get_run(run_attack(spec, sqlite_store, quiet=True, console=Console(file=io.StringIO())))
    assert attack.status == "finished"
    assert torch.float64 in dtypes  # the gradient-consistency check's float64 copy (a deepcopy keeps the hook) ...
    dtypes.discard(torch.float64)
    assert dtypes == ({torch.bfloat16} if precision == "train" else {torch.float32})
    # exact mode's gradient still agrees with the target's finite differences
    checks = sqlite_store.frame_sanity()
    exact = checks[(checks.run_id == attack.id) & (checks.name == "gradient_consistency") & (checks["mode"] == "exact")]
    assert len(exact) == 1 and bool(exact.passed.iloc[0])


# -- command line -------------------------------------------------------------------------------


def test_cli_compute_options_reach_the_stored_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ssbench.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    db = ["--db", f"sqlite:///{tmp_path / 'cli.db'}"]
    common = ["-d", "digits", "--classes", "0-4", "-m", "mlp", "--hidden", "16", "-e", "1", "-b", "64", "-q", *db]
    result = runner.invoke(app, ["train", "--rule", "fa", "--precision", "bf16", "--channels-last", "--workers", "0", *common])
    assert result.exit_code == 0, result.output
    run = open_store(db[1]).get_run(1)
    assert run.config["compute"] == {"precision": "bf16", "channels_last": True, "compile": False, "workers": 0, "gpus": 1}

    bad = runner.invoke(app, ["train", "--precision", "fp8", *common])
    lines = [ln for ln in bad.output.strip().splitlines() if ln.strip()]
    assert bad.exit_code != 0 and len(lines) == 1 and "precision" in lines[0] and "'fp8'" in lines[0]
    # --weights stands in for --from: a finetune given it alone is a valid job (the file is what fails here)
    missing = runner.invoke(app, ["finetune", "--rule", "fa", "--weights", str(tmp_path / "none.pt"), *common])
    lines = [ln for ln in missing.output.strip().splitlines() if ln.strip()]
    assert missing.exit_code != 0 and len(lines) == 1 and "none.pt" in lines[0] and "needs a source" not in lines[0]


def test_the_autocast_wrapper_returns_fp32_and_leaves_float64_alone() -> None:
    """Logits computed in bf16 come back fp32 (the attack's loss and gradient arithmetic); a float64
    copy (the gradient-consistency check's finite differences) is not rounded to fp32."""
    from ssbench.training.precision import Autocast

    inner = nn.Linear(4, 3)
    seen: list[torch.dtype] = []
    inner.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    wrapped = Autocast(inner, "bf16")
    x = torch.randn(2, 4)
    assert wrapped(x).dtype == torch.float32 and seen == [torch.bfloat16]
    torch.testing.assert_close(wrapped(x), inner(x), rtol=2e-2, atol=2e-2)
    assert wrapped.double()(x.double()).dtype == torch.float64 and seen[-1] == torch.float64
