"""Data-parallel training: one job on several processes (`TrainSpec.compute.gpus` > 1).

Every process trains a replica of the same converted model on its contiguous share of each global
batch (`make_loader`'s rank / world); DistributedDataParallel averages the gradients, so each step is
the single-process step on the global batch, up to the rounding of the all-reduce. Three ways in,
all through `run_training`:

* compute.gpus = N and no process group: ssbench spawns the N processes itself, waits for them,
  relays rank 0's epoch callbacks, and raises the first failure (any rank) as the job's error;
* `torchrun --nproc-per-node N -m ssbench train ... --gpus N`: each process joins from torchrun's
  environment (RANK, WORLD_SIZE, LOCAL_RANK); torchrun ends the others when one fails;
* a caller that set up the default process group itself.

NCCL on CUDA (the process of local rank r on cuda:r), gloo on the CPU. Rank 0 is the job: it alone
holds the results store (one run row, metrics, evaluations, checkpoints, resume state; the run's
summary records `world_size`); the other processes get no store, never open the database, skip
evaluation and checkpoints, and only train.

Nothing about a rule's feedback is sent between processes: B comes from generators seeded by (seed,
layer[, step]) and brsf's step counters advance alike, so every replica holds the same B. That is
checked once (`check_same`): digests of every weight and buffer (feedback_state included) and the
rule's configuration, gathered from all processes; a difference is a one-line `ReplicaMismatch`.
DFA's B_l is drawn at the first backward, from the checked seed, so its digest cannot be taken yet.

BatchNorm: SyncBatchNorm on CUDA, so batch statistics are the global batch's as in one process.
torch has no CPU SyncBatchNorm: on the CPU each process normalises by its own share (a warning says
so). Dropout masks of ranks > 0 come from their own seeded streams (rank 0's is the single process's).
"""
from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import queue
import shutil
import signal
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ssbench.errors import CheckpointError, SpecError, SsbenchError, raise_terminated
from ssbench.rules.base import mixed_seed
from ssbench.specs import TrainSpec
from ssbench.training.checkpoint import RESUME_FILE, Resumable, read_resume_state, resolve_checkpoint
from ssbench.training.device import resolve_device

# How long a process waits in a collective for the others. Rank 0 evaluates and writes checkpoints
# between epochs while the others wait in the next step's all-reduce, so this bounds a validation
# pass too; it only matters for a process that hangs (a failed one ends the job at once).
TIMEOUT = timedelta(minutes=30)
GRACE_S = 10.0  # after one process fails, how long the others get to end on their own before SIGTERM
POLL_S = 0.5  # how often the spawning process looks at its children and relays rank 0's epochs


class ReplicaMismatch(SsbenchError):
    """The processes of a data-parallel job do not start from the same model."""


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU index on this machine

    @property
    def main(self) -> bool:
        """Rank 0: the process that holds the store and records the run."""
        return self.rank == 0


SINGLE = World()


def from_environment() -> World | None:
    """The world torchrun (or any launcher using its variables) started this process in."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return World(rank, int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", rank)))


def main_process() -> bool:
    """False in a launched process of rank > 0: the CLI opens no store there."""
    env = from_environment()
    return env is None or env.main


def wanted(spec: TrainSpec) -> bool:
    """Whether `run_training` must launch or join processes for this job."""
    env = from_environment()
    return spec.compute.gpus > 1 or (env is not None and env.size > 1)


def rank_device(name: str, world: World) -> torch.device:
    """The device of this process: `resolve_device` in one process; with several, cuda:LOCAL_RANK
    (so --device cuda:K is refused: CUDA_VISIBLE_DEVICES picks GPUs) or the CPU."""
    device = resolve_device(name)
    if world.size == 1 or device.type == "cpu":
        return device
    if device.type != "cuda":
        raise SpecError(f"--gpus runs on cuda or cpu devices, not {device.type}")
    if device.index is not None:
        raise SpecError(f"--device {name} with --gpus {world.size}: process r uses cuda:r; "
                        "choose the GPUs with CUDA_VISIBLE_DEVICES and give --device cuda")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise SpecError(f"--gpus {world.size} needs {world.local_rank + 1} GPUs on this machine; torch sees {count}")
    return torch.device("cuda", world.local_rank)


def _refuse_unsplittable(spec: TrainSpec) -> None:
    # a loss over pairs of the batch's examples is not the mean of per-share losses
    if spec.task == "hashing" and spec.hashing is not None and spec.hashing.loss == "dpsh":
        raise SpecError(f"--hash-loss dpsh pairs the examples of a whole batch; with --gpus {spec.compute.gpus} "
                        "each process holds only its share: use --hash-loss csq or --gpus 1")


def run(spec: TrainSpec, store: Any, train: Callable[..., int | None], **options: Any) -> int | None:
    """`train(spec, store, world=..., **options)` (run_training) on every process of the job;
    rank 0's run id (None on the other ranks of a launched job)."""
    _refuse_unsplittable(spec)
    n = spec.compute.gpus
    if dist.is_available() and dist.is_initialized():  # the caller's own process group
        rank = dist.get_rank()
        world = World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
        _same_size(world, n, "the process group")
        rank_device(spec.device, world)
        return train(spec, store if world.main else None, world=world, **_options_for(world, options))
    env = from_environment()
    if env is not None:
        _same_size(env, n, "torchrun")
        with process_group(env, rank_device(spec.device, env)):
            return train(spec, store if env.main else None, world=env, **_options_for(env, options))
    if store is None:
        raise ValueError("run_training needs a store")
    return spawn(spec, store, train, **options)


def _same_size(world: World, gpus: int, who: str) -> None:
    if world.size != gpus:
        raise SpecError(f"{who} runs {world.size} processes but the job asks for --gpus {gpus}; give --gpus {world.size}")


def _options_for(world: World, options: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 keeps the caller's console and callbacks; the others show and call nothing."""
    if world.main:
        return options
    return {**options, "console": None, "quiet": True, "on_epoch": None}


@contextmanager
def process_group(world: World, device: torch.device, init_method: str | None = None) -> Iterator[None]:
    """The default process group for `world`: NCCL on `device` (CUDA), else gloo."""
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the communicator to this GPU at once
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method,
                            rank=world.rank, world_size=world.size, timeout=TIMEOUT, **kwargs)
    yield
    # not on an error: the others may still wait in a collective, and the launcher ends them
    dist.destroy_process_group()


# -- the collectives the job uses -------------------------------------------------------------------

def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every process (picklable objects)."""
    if world.size == 1:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block before the others (a data set it downloads is there for them)."""
    if world.size > 1 and not world.main:
        dist.barrier()
    yield
    if world.size > 1 and world.main:
        dist.barrier()


def shared_source(spec: TrainSpec, store: Any, world: World) -> TrainSpec:
    """The spec whose fine-tuning source every process can read: rank 0 resolves a run id against the
    store (the others have none) and every process reads the same checkpoint file."""
    if world.size == 1 or spec.kind != "finetune" or not spec.source:
        return spec
    path = str(resolve_checkpoint(store, spec.source)[0]) if world.main else None
    path = broadcast(path, world)
    return spec if world.main else spec.replace(source=path)


def shared_resume(prior: Any, world: World, store: Any) -> Any:
    """Rank 0's choice of an interrupted run to continue (`find_resumable`), on every process: the
    others read the very resume file rank 0 continues from (weights, optimiser, scheduler)."""
    if world.size == 1:
        return prior
    point = None if prior is None else (prior.run_id, prior.epoch, str(store.checkpoint_dir(prior.run_id) / RESUME_FILE))
    point = broadcast(point, world)
    if world.main or point is None:
        return prior

    run_id, epoch, path = point
    state = read_resume_state(Path(path))
    if state is None or int(state["epoch"]) != epoch:
        raise CheckpointError(f"process {world.rank} cannot read {path}, the resume state rank 0 continues from; "
                              "every process must see the same artifact folder")
    return Resumable(run_id, epoch, state)


def seed_rank(seed: int, world: World, epoch: int) -> None:
    """torch's global RNG (dropout) of a rank > 0: its own stream, so replicas do not repeat rank 0's
    masks; a function of (seed, rank, epoch it starts after), as a resumed run needs. Rank 0 keeps the
    single process's stream (and a resumed run's saved one)."""
    if not world.main:
        torch.manual_seed(mixed_seed(seed, world.rank, epoch))


def epoch_totals(world: World, loss_sum: float, n: int, metric_sums: dict[str, float]) -> tuple[float, int, dict[str, float]]:
    """The epoch's sums over every process's share: rank 0 records the global batch's loss and
    metrics, as one process would."""
    if world.size == 1:
        return loss_sum, n, metric_sums
    keys = sorted(metric_sums)
    t = torch.tensor([loss_sum, float(n), *(metric_sums[k] for k in keys)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    values = t.tolist()
    return values[0], round(values[1]), dict(zip(keys, values[2:]))


# -- the replica ------------------------------------------------------------------------------------

def _digest(t: Tensor) -> str:
    flat = t.detach().reshape(-1).contiguous().cpu()
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return f"{t.dtype} {tuple(t.shape)} {hashlib.sha256(data).hexdigest()[:16]}"


def _state_digests(prefix: str, state: Any) -> dict[str, str]:
    """Digests of the tensors of a nested state (an optimiser's), repr of everything else."""
    if isinstance(state, Tensor):
        return {prefix: _digest(state)}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _state_digests(f"{prefix}.{key}", value).items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in _state_digests(f"{prefix}.{i}", value).items()}
    return {prefix: repr(state)}


def replica_facts(model: nn.Module, optimizer: Any = None, scheduler: Any = None, **facts: Any) -> dict[str, str]:
    """What must be equal on every process: a digest of each weight and buffer (the rules' feedback
    state and step counters included), the rule's configuration (its seed pins DFA's lazily drawn
    B_l), the optimiser's and scheduler's state (a resumed run) and any `facts` (e.g. the number of
    steps per epoch: unequal counts would hang DDP)."""
    from ssbench.rules.convert import rule_config

    out = {f"{k}": repr(v) for k, v in facts.items()}
    out["rule"] = repr(rule_config(model))
    out.update({name: _digest(t) for name, t in model.state_dict().items()})
    if optimizer is not None:
        out.update(_state_digests("optimizer", optimizer.state_dict()))
    if scheduler is not None:
        out.update(_state_digests("scheduler", scheduler.state_dict()))
    return out


def check_same(model: nn.Module, world: World, optimizer: Any = None, scheduler: Any = None, **facts: Any) -> None:
    """Raise `ReplicaMismatch` on every process unless all hold the same `replica_facts`."""
    if world.size == 1:
        return
    mine = replica_facts(model, optimizer, scheduler, **facts)
    everyone: list[Any] = [None] * world.size
    dist.all_gather_object(everyone, mine)
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], start=1):
        differ = [k for k in list(first) + [k for k in theirs if k not in first] if first.get(k) != theirs.get(k)]
        if differ:
            shown = ", ".join(differ[:3]) + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else "")
            raise ReplicaMismatch(f"process {rank} of {world.size} does not start from process 0's model ({shown} "
                                  "differ): every process must build it alike (same code, seed, data and rule)")


def replicate(model: nn.Module, world: World, device: torch.device, optimizer: Any = None, scheduler: Any = None,
              **facts: Any) -> nn.Module:
    """The module the training steps call: `model` itself in one process; with several, `model`
    checked (`check_same`, with the optimiser and scheduler), its BatchNorm layers synchronised
    (CUDA) and wrapped in DDP. `model` stays the object evaluated and saved (no 'module.' prefix in
    checkpoints)."""
    if world.size == 1:
        return model
    check_same(model, world, optimizer, scheduler, **facts)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cuda":
        # in place below the top module (the Normalized wrapper): same parameters and buffers
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert synced is model
    elif has_bn and world.main:
        warnings.warn("BatchNorm on the CPU with --gpus: each process normalises by its own share of the "
                      "batch (SyncBatchNorm needs CUDA), so the steps differ from one process's", stacklevel=2)
    # Buffers are equal by construction (checked above) and evolve alike (SyncBatchNorm, the same
    # step counters): no per-step broadcast, and rank 0 can evaluate alone without a collective.
    renamed = "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters  # torch >= 2.13
    sync = {"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **sync)


# -- spawning the processes ourselves ----------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    """What a spawned process needs (picklable: the store travels as its location)."""

    spec: TrainSpec
    train: Callable[..., int | None]
    url: str
    artifacts: str
    rendezvous: str
    threads: int
    console: bool
    quiet: bool
    resume: bool
    claimed: bool
    relay_epochs: bool


def _portable(err: BaseException) -> bytes | None:
    try:
        data = pickle.dumps(err)
        pickle.loads(data)  # some exceptions pickle but do not rebuild
        return data
    except Exception:  # noqa: BLE001
        return None


def _relay_epoch(events: Any, epoch: int) -> None:
    events.put(("epoch", epoch))  # the spawning process calls the caller's on_epoch


def _worker(rank: int, job: _Job, events: Any) -> None:
    """One spawned process of the job (torch.multiprocessing calls it with its index)."""
    from ssbench.store.store import error_line

    signal.signal(signal.SIGTERM, raise_terminated)  # the parent ending the job after another process failed
    torch.set_num_threads(job.threads)
    world = World(rank, job.spec.compute.gpus, rank)
    try:
        device = rank_device(job.spec.device, world)
        with process_group(world, device, job.rendezvous):
            store, console = None, None
            if world.main:
                from ssbench.store import open_store

                store = open_store(job.url, artifacts=job.artifacts)
                if job.console:
                    from ssbench.printing import SafeConsole

                    console = SafeConsole(stderr=True)  # a console does not pickle: a new one on the same stderr
            relay = partial(_relay_epoch, events) if job.relay_epochs else None
            options = {"console": console, "quiet": job.quiet, "resume": job.resume, "claimed": job.claimed,
                       "on_epoch": relay}
            run_id = job.train(job.spec, store, world=world, **_options_for(world, options))
        if world.main:
            events.put(("done", run_id))
    except BaseException as err:
        events.put(("failed", rank, _portable(err), error_line(err)))
        raise


def _free_rendezvous() -> tuple[Path, str]:
    # a file in a fresh folder: no port to pick, so none can clash with another job's
    folder = Path(tempfile.mkdtemp(prefix="ssbench-ddp-"))
    return folder, f"file://{folder / 'rendezvous'}"


def spawn(spec: TrainSpec, store: Any, train: Callable[..., int | None], *, console: Any = None, quiet: bool = False,
          resume: bool = True, claimed: bool = False, on_epoch: Callable[[int], None] | None = None) -> int:
    """Run the job on compute.gpus new processes; returns rank 0's run id. The first failure of any
    process ends the others and is raised here (its own exception type: one line for a user error);
    rank 0's run is then marked failed with it."""
    import torch.multiprocessing as mp

    n = spec.compute.gpus
    rank_device(spec.device, World(n - 1, n, n - 1))  # too few GPUs: say so before starting anything
    folder, rendezvous = _free_rendezvous()
    job = _Job(spec, train, store.url, str(store.artifacts), rendezvous, max(1, torch.get_num_threads() // n),
               console is not None, quiet, resume, claimed, on_epoch is not None)
    events = mp.get_context("spawn").Queue()
    procs = None
    state: dict[str, Any] = {"run_id": None, "failures": [], "after": _last_run_id(store)}
    try:
        procs = mp.start_processes(_worker, args=(job, events), nprocs=n, join=False, start_method="spawn")
        while not procs.join(timeout=POLL_S, grace_period=GRACE_S):
            _drain(events, on_epoch, state)
        _drain(events, on_epoch, state)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        _drain(events, None, state, wait=1.0)
        raise _failure(err, state, n, store, procs) from (None if _is_user_error(state) else err)
    except BaseException as err:  # Ctrl-C, SIGTERM, a lost claim, an on_epoch that raised
        if procs is not None:
            _end(procs)
        _mark_failed(store, procs, _line(err), after=state["after"], root_elsewhere=False)
        raise
    finally:
        events.close()
        shutil.rmtree(folder, ignore_errors=True)
    if state["run_id"] is None:
        raise RuntimeError("the training processes ended without rank 0's run id")
    return int(state["run_id"])


def _line(err: BaseException) -> str:
    from ssbench.store.store import error_line

    return error_line(err)


def _drain(events: Any, on_epoch: Callable[[int], None] | None, state: dict[str, Any], wait: float = 0.0) -> None:
    while True:
        try:
            event = events.get(timeout=wait) if wait else events.get_nowait()
        except queue.Empty:
            return
        if event[0] == "epoch" and on_epoch is not None:
            on_epoch(event[1])
        elif event[0] == "done":
            state["run_id"] = event[1]
        elif event[0] == "failed":
            state["failures"].append(event[1:])


def _is_user_error(state: dict[str, Any]) -> bool:
    first = _first_failure(state)
    return first is not None and isinstance(first[1], SsbenchError)


def _first_failure(state: dict[str, Any]) -> tuple[int, BaseException | None, str] | None:
    """The first failure reported: the cause (the others' errors follow from it: a closed connection,
    the SIGTERM that ended them)."""
    if not state["failures"]:
        return None
    rank, data, line = state["failures"][0]
    return rank, (pickle.loads(data) if data is not None else None), line


def _failure(err: Exception, state: dict[str, Any], n: int, store: Any, procs: Any) -> BaseException:
    """The exception the job raises for the first failure, after marking rank 0's run failed."""
    first = _first_failure(state)
    if first is None:  # killed without a word (SIGKILL: out of memory?)
        rank = getattr(err, "error_index", None)
        line = f"training process {rank} of {n} ended: {str(err).strip().splitlines()[-1] if str(err).strip() else err}"
        _mark_failed(store, procs, line, after=state["after"], root_elsewhere=rank != 0)
        return RuntimeError(line)
    rank, exc, line = first
    _mark_failed(store, procs, line if rank == 0 else f"{line} (process {rank} of {n})", after=state["after"],
                 root_elsewhere=rank != 0)
    if exc is not None and isinstance(exc, Exception):
        return exc
    return RuntimeError(f"training process {rank} of {n} failed: {line}")


def _end(procs: Any) -> None:
    for p in procs.processes:
        if p.is_alive():
            p.terminate()
    for p in procs.processes:
        p.join(GRACE_S)
        if p.is_alive():
            p.kill()
            p.join()


def _last_run_id(store: Any) -> int:
    from sqlalchemy import func, select

    from ssbench.store.models import Run

    with store.session() as s:
        return int(s.scalar(select(func.max(Run.id))) or 0)


def _mark_failed(store: Any, procs: Any, line: str, *, after: int, root_elsewhere: bool) -> None:
    """Rank 0's run (rank 0's pid, a row newer than `after`), when the job failed: still 'running'
    (its process was ended before it could say so), it is marked failed; with the cause on another
    rank, that cause replaces rank 0's own error (a closed connection, the SIGTERM that ended it)."""
    if procs is None:
        return
    from sqlalchemy import update

    from ssbench.store.models import Run

    statuses = ("running", "failed") if root_elsewhere else ("running",)
    try:
        with store.session() as s, s.begin():
            s.execute(update(Run).where(Run.id > after, Run.pid == procs.processes[0].pid, Run.host == socket.gethostname(),
                                        Run.status.in_(statuses))
                      .values(status="failed", error=line, finished_at=datetime.now(timezone.utc)))
    except Exception as err:  # noqa: BLE001  (the job's own error matters more than this one)
        warnings.warn(f"could not mark the data-parallel run failed: {err}", stacklevel=2)
