"""Resume: a training job killed after epoch 2 of 4 and rerun continues at epoch 3, and with
`deterministic` its final weights equal an uninterrupted run's bit for bit (digits, CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sqlalchemy import update

from ssbench.specs import DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import Run, open_store
from ssbench.training import run_training
from ssbench.training.checkpoint import RESUME_FILE, RESUME_FORMAT, read_checkpoint
from ssbench.training.job import find_resumable

DIGITS = DataSpec(name="digits", val_fraction=0.2)


def _spec(rule: str, **kw) -> TrainSpec:  # noqa: ANN003
    optim = OptimSpec(lr=0.05, momentum=0.9, scheduler="step", step_size=1, gamma=0.7)
    return TrainSpec(kind="train", data=DIGITS, model=ModelSpec(name="mlp", hidden=(32, 32)), rule=RuleSpec(name=rule),
                     optim=optim, epochs=4, batch_size=64, seed=3, deterministic=True, device="cpu", **kw)


KILL_AFTER_EPOCH_2 = textwrap.dedent("""
    import os, signal, sys
    from ssbench.specs import TrainSpec
    from ssbench.store import Run, open_store
    from ssbench.training import run_training

    spec = TrainSpec.model_validate_json(sys.argv[2])
    def die(epoch):
        if epoch == 2:  # everything of epoch 2 is written; no Python cleanup runs after SIGKILL
            os.kill(os.getpid(), signal.SIGKILL)
    run_training(spec, open_store(sys.argv[1]), quiet=True, on_epoch=die)
""")


def _killed_run(url: str, spec: TrainSpec) -> None:
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_2, url, spec.model_dump_json()],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == -9, proc.stderr[-2000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def _curve(store, run_id: int):  # noqa: ANN001, ANN202
    m = store.frame_metrics()
    m = m[m.run_id == run_id]
    return {(int(e), s, n): v for e, s, n, v in zip(m.epoch, m.split, m.name, m.value)}


@pytest.mark.parametrize("rule", ["bp", "brsf"])  # brsf: the per-step redraw counter must carry over
def test_a_killed_run_resumes_and_ends_bit_for_bit_equal(rule: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _spec(rule)
    ref_store = open_store(f"sqlite:///{tmp_path / 'ref' / 'r.db'}")
    ref = run_training(spec, ref_store, quiet=True)

    url = f"sqlite:///{tmp_path / 'res' / 'r.db'}"
    _killed_run(url, spec)
    store = open_store(url)
    killed = store.get_run(1)
    assert killed.status == "running" and store.liveness(killed) == "gone"
    assert (store.checkpoint_dir(1) / RESUME_FILE).is_file()
    capsys.readouterr()

    new = run_training(spec, store, quiet=True)
    assert new == 2
    assert "resuming run 1 from epoch 2 (run 2)" in capsys.readouterr().err
    old = store.get_run(1)
    assert old.status == "failed" and "StaleRun" in old.error
    run = store.get_run(new)
    assert run.status == "finished" and run.summary["resumed_from"] == {"run": 1, "epoch": 2}

    # the whole curve: epochs 1-2 copied from the killed run, 3-4 trained now, equal to the reference's
    curve, killed_curve, ref_curve = _curve(store, new), _curve(store, 1), _curve(ref_store, ref)
    assert {e for e, _, _ in curve} == {1, 2, 3, 4} and {e for e, _, _ in killed_curve} == {1, 2}
    assert {k: v for k, v in curve.items() if k[0] <= 2} == killed_curve
    assert curve == ref_curve
    al = store.frame_alignment()
    assert set(al[al.run_id == new].epoch) == {0, 1, 2, 3, 4}

    # the final weights (rule buffers included: brsf's feedback_step) equal the uninterrupted run's
    for tag in ("last", "best"):
        got, expect = _weights(Path(store.checkpoint(new, tag).path)), _weights(Path(ref_store.checkpoint(ref, tag).path))
        assert got.keys() == expect.keys()
        for k in expect:
            assert torch.equal(got[k], expect[k]), (tag, k)
        assert store.checkpoint(new, tag).epoch == ref_store.checkpoint(ref, tag).epoch
        assert read_checkpoint(store.checkpoint(new, tag).path)["run_id"] == new
    if rule == "brsf":
        assert any(k.endswith("feedback_step") and int(v) > 0 for k, v in got.items())
    assert run.summary["test_accuracy"] == ref_store.get_run(ref).summary["test_accuracy"]
    # nothing large is left behind once the run finished
    assert not (store.checkpoint_dir(1) / RESUME_FILE).exists() and not (store.checkpoint_dir(new) / RESUME_FILE).exists()
    # a finished job is not resumed again: a rerun starts over
    assert find_resumable(store, spec.kind, store.get_run(new).config_hash) is None


def test_a_failed_run_resumes_and_resume_false_starts_over(tmp_path: Path) -> None:
    spec = _spec("bp").model_copy(update={"epochs": 3})
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(spec, store, quiet=True, on_epoch=stop)
    assert store.get_run(1).status == "failed"
    found = find_resumable(store, spec.kind, store.get_run(1).config_hash)
    assert found is not None and (found.run_id, found.epoch) == (1, 1)
    assert "resumed_from" not in store.get_run(run_training(spec, store, quiet=True, resume=False)).summary
    assert (store.checkpoint_dir(1) / RESUME_FILE).is_file()  # a fresh run leaves the old state alone
    resumed = run_training(spec, store, quiet=True)
    assert store.get_run(resumed).summary["resumed_from"] == {"run": 1, "epoch": 1}


def test_a_live_or_foreign_running_run_is_never_taken_over(tmp_path: Path) -> None:
    spec = _spec("bp")
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    with store.run(spec.kind, config=spec) as rec:  # this process: alive
        folder = store.checkpoint_dir(rec.run_id)
        folder.mkdir(parents=True)
        torch.save({"format": RESUME_FORMAT, "epoch": 1, "best_epoch": 0}, folder / RESUME_FILE)
        key = store.get_run(rec.run_id).config_hash
        assert find_resumable(store, spec.kind, key) is None
        assert store.get_run(rec.run_id).status == "running"
        with store.session() as s, s.begin():  # another host's run: its pid says nothing here
            s.execute(update(Run).where(Run.id == rec.run_id).values(host="another-host", pid=1))
        assert find_resumable(store, spec.kind, key) is None
        assert store.get_run(rec.run_id).status == "running"
        # ... unless the caller holds the job's claim (its holder there is gone)
        found = find_resumable(store, spec.kind, key, claimed=True)
        assert found is not None and found.run_id == rec.run_id and store.get_run(rec.run_id).status == "failed"
    # finished now: still nothing to resume
    assert find_resumable(store, spec.kind, key) is None


def test_a_finetune_resumes_from_its_source_run(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    mlp = ModelSpec(name="mlp", hidden=(32,))
    pre = run_training(TrainSpec(kind="pretrain", data=DIGITS, model=mlp, epochs=1, device="cpu"), store, quiet=True)
    spec = TrainSpec(kind="finetune", source=str(pre), data=DIGITS, model=mlp, rule=RuleSpec(name="frsf"), epochs=2,
                     optim=OptimSpec(lr=0.02, scheduler="cosine"), deterministic=True, device="cpu")

    def stop(epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(spec, store, quiet=True, on_epoch=stop)
    resumed = run_training(spec, store, quiet=True)
    run = store.get_run(resumed)
    assert run.summary["resumed_from"] == {"run": pre + 1, "epoch": 1} and run.parent_id == pre
    assert store.checkpoint(resumed, "last").epoch == 2


@pytest.mark.parametrize("scheduler", ["multistep", "cosine", "none"])
def test_the_resume_state_loads_weights_only(scheduler: str, tmp_path: Path) -> None:
    import random

    import numpy as np

    from ssbench.training.checkpoint import load_scheduler_state, read_resume_state, save_resume_state, set_rng_state
    from ssbench.training.optim import build_optimizer, build_scheduler

    spec = OptimSpec(name="adam", lr=0.01, scheduler=scheduler, **({"milestones": (1, 2)} if scheduler == "multistep" else {}))

    def fresh():  # noqa: ANN202
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = build_optimizer(model, spec)
        return model, opt, build_scheduler(opt, spec, 4)

    model, opt, sched = fresh()
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
    path = save_resume_state(tmp_path / RESUME_FILE, run_id=1, epoch=2, model=model, optimizer=opt, scheduler=sched,
                             best_score=float("-inf"), best_epoch=0, first_loss=None, diverged=None)
    draws = (torch.rand(3), np.random.rand(3), random.random())
    state = read_resume_state(path)  # torch.load(weights_only=True) inside
    assert state is not None and state["epoch"] == 2 and state["best_score"] == float("-inf")
    model2, opt2, sched2 = fresh()
    opt2.load_state_dict(state["optimizer"])
    load_scheduler_state(sched2, state["scheduler"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    if sched is not None:
        assert sched2.state_dict() == sched.state_dict()
    set_rng_state(state["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and (draws[1] == again[1]).all() and draws[2] == again[2]
    (tmp_path / "torn.pt").write_bytes(b"not a file")
    assert read_resume_state(tmp_path / "torn.pt") is None and read_resume_state(tmp_path / "none.pt") is None
