"""Data-parallel training (compute.gpus > 1) on the CPU: gloo, two processes.

Spawning processes on a 2-core machine costs seconds each, so every test spawns once and the data
are tiny: the rules are looped inside one spawn.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ssbench.errors import SpecError
from ssbench.rules import convert
from ssbench.specs import ComputeSpec, DataSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import open_store
from ssbench.training import distributed, run_training
from ssbench.training.checkpoint import RESUME_FILE
from ssbench.training.distributed import ReplicaMismatch, World, check_same, process_group, replica_facts, replicate

RULES = ("bp", "fa", "frsf", "brsf", "dfa")
GLOBAL, STEPS = 8, 3  # global batch, SGD steps


def _mlp(rule: str, seed: int) -> nn.Module:
    torch.manual_seed(0)  # the same forward weights for every rule and process
    net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5))
    return convert(net, rule, seed=seed).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL, 12, generator=g, dtype=torch.float64), torch.randint(0, 5, (GLOBAL,), generator=g))
            for _ in range(STEPS)]


def _train(step_model: nn.Module, params: nn.Module, batches, lo: int, hi: int) -> None:  # noqa: ANN001
    opt = torch.optim.SGD(params.parameters(), lr=0.5, momentum=0.9)
    for x, y in batches:
        loss = F.cross_entropy(step_model(x[lo:hi]), y[lo:hi])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _replica_worker(rank: int, size: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    world = World(rank, size, rank)
    share = GLOBAL // size
    results: dict = {"facts": {}, "diff": {}, "moved": {}, "vs_bp": {}}
    with process_group(world, torch.device("cpu"), rendezvous):
        batches = _batches()
        bp_ref = None
        for rule in RULES:
            # the independent computation: one process, plain autograd through the rule, the global batch
            ref = _mlp(rule, seed=7)
            _train(ref, ref, batches, 0, GLOBAL)
            bp_ref = ref if rule == "bp" else bp_ref
            model = _mlp(rule, seed=7)
            results["facts"][rule] = replica_facts(model)
            start = [p.detach().clone() for p in model.parameters()]
            step_model = replicate(model, world, torch.device("cpu"))  # checks the replicas, wraps in DDP
            assert isinstance(step_model, nn.parallel.DistributedDataParallel)
            _train(step_model, model, batches, rank * share, (rank + 1) * share)
            pairs = list(zip(model.parameters(), ref.parameters()))
            results["diff"][rule] = max(float((p - q).abs().max()) for p, q in pairs)
            results["moved"][rule] = max(float((p.detach() - s).abs().max()) for p, s in zip(model.parameters(), start))
            results["vs_bp"][rule] = max(float((p - q).abs().max()) for p, q in zip(model.parameters(), bp_ref.parameters()))
        # a replica converted with another seed holds another B: caught before any step
        try:
            check_same(_mlp("fa", seed=rank), world)
            results["mismatch"] = None
        except ReplicaMismatch as err:
            results["mismatch"] = str(err)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def test_two_processes_step_like_one_on_the_global_batch(tmp_path: Path) -> None:
    """3 SGD steps (momentum) of a float64 MLP on 2 gloo processes, each on its half of every batch:
    the weights equal one process's on the whole batch, for every rule (B identical on both ranks)."""
    mp.spawn(_replica_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rule in RULES:
        for r in ranks:
            assert r["diff"][rule] < 1e-10, (rule, r["diff"][rule])
            assert r["moved"][rule] > 1e-2  # the steps did move the weights
            if rule != "bp":  # the rule's own backward ran, not backprop's
                assert r["vs_bp"][rule] > 1e-4, rule
        # the digests of every weight and feedback tensor agree between the processes
        assert ranks[0]["facts"][rule] == ranks[1]["facts"][rule]
    assert any("feedback_state" in k for k in ranks[0]["facts"]["fa"])
    assert ranks[0]["facts"]["fa"] != ranks[0]["facts"]["frsf"]  # the digests do tell models apart
    for r in ranks:  # both processes refuse the mismatch, with one line naming what differs
        assert r["mismatch"] is not None and "process 1 of 2" in r["mismatch"] and "feedback_state" in r["mismatch"]
        assert "\n" not in r["mismatch"]


DIGITS = DataSpec(name="digits", classes=(0, 1, 2, 3), val_fraction=0.2, train_limit=240, test_limit=80)


def _spec(gpus: int, epochs: int = 1) -> TrainSpec:
    return TrainSpec(kind="train", data=DIGITS, model=ModelSpec(name="mlp", hidden=(32,)), rule=RuleSpec(name="brsf"),
                     optim=OptimSpec(lr=0.05), epochs=epochs, batch_size=32, device="cpu", compute=ComputeSpec(gpus=gpus))


def _last_weights(store, run_id: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return torch.load(store.checkpoint_dir(run_id) / "last.pt", weights_only=True)["state_dict"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, float((a[k] - b[k]).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k


def test_run_training_on_two_processes_writes_one_run(tmp_path: Path) -> None:
    """run_training with compute.gpus=2 spawns the processes; rank 0 alone writes: one run row, its
    summary says the world size, and its weights are one process's (float32: all-reduce rounding)."""
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    single = run_training(_spec(1), store, quiet=True)
    epochs: list[int] = []
    pair = run_training(_spec(2), store, quiet=True, on_epoch=epochs.append)
    runs = store.list_runs()
    assert [r.id for r in runs] == [single, pair]  # one row for the two-process job
    run = store.get_run(pair)
    assert run.status == "finished" and run.summary["world_size"] == 2
    assert "world_size" not in store.get_run(single).summary
    assert epochs == [1]  # rank 0's callback, relayed to this process
    _assert_same_weights(_last_weights(store, pair), _last_weights(store, single))
    # the recorded training loss is the global batch's, as one process records it
    m = store.frame_metrics()
    loss = {rid: float(m[(m.run_id == rid) & (m.split == "train") & (m.name == "loss")].value.iloc[0]) for rid in (single, pair)}
    assert loss[pair] == pytest.approx(loss[single], rel=1e-5)


def test_resumed_two_process_run_continues_like_one_process(tmp_path: Path) -> None:
    """A two-process job resumes an interrupted run: every rank starts from its resume file (weights,
    momentum), and the final weights equal an uninterrupted single-process run's."""
    ref_store = open_store(f"sqlite:///{tmp_path / 'ref' / 'r.db'}")  # its own folder: checkpoints/<run id>
    reference = run_training(_spec(1, epochs=2), ref_store, quiet=True)

    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")

    def stop(epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # epoch 1 of the single-process job, then interrupted
        run_training(_spec(1, epochs=2), store, quiet=True, on_epoch=stop)
    (broken,) = store.list_runs()
    assert (store.checkpoint_dir(broken.id) / RESUME_FILE).is_file()
    # make it an interrupted run of the two-process job (the states are the same: one process's)
    from sqlalchemy import update

    from ssbench.store.models import Run

    spec2 = _spec(2, epochs=2)
    with store.session() as s, s.begin():
        s.execute(update(Run).where(Run.id == broken.id).values(config_hash=store.job_hash(spec2)))
    resumed = run_training(spec2, store, quiet=True)
    run = store.get_run(resumed)
    assert run.status == "finished" and run.summary["resumed_from"] == {"run": broken.id, "epoch": 1}
    _assert_same_weights(_last_weights(store, resumed), _last_weights(ref_store, reference))


def _fails_on_rank_1(spec: TrainSpec, store, *, world: World, **_) -> int:  # noqa: ANN001
    """A job whose rank 1 fails while rank 0 has a run open and waits for it in a collective."""
    if world.main:
        with store.run("train", config=spec, seed=spec.seed) as rec:
            dist.barrier()  # rank 1 never comes
        return rec.run_id
    raise SpecError("no such thing on rank 1")


def test_a_failing_process_ends_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process fails: the job ends (no hang), its error is raised here as one line, and rank 0's
    run is failed with it."""
    monkeypatch.setattr(distributed, "GRACE_S", 1.0)  # rank 0 may sit in the barrier until ended
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(SpecError, match="^no such thing on rank 1$"):
        distributed.spawn(_spec(2), store, _fails_on_rank_1, quiet=True)
    (run,) = store.list_runs()
    assert run.status == "failed" and run.error.startswith("SpecError: no such thing on rank 1 (process 1 of 2)")


def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a loss over pairs of a batch's examples does not split between processes
    with pytest.raises(SpecError, match="dpsh"):
        run_training(TrainSpec(task="hashing", hashing={"loss": "dpsh"}, compute=ComputeSpec(gpus=2)), None)
    # torchrun started 2 processes for a one-process job: each would record its own run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not distributed.main_process()
    with pytest.raises(SpecError, match="torchrun runs 2 processes but the job asks for --gpus 1"):
        run_training(_spec(1), None)
