"""The training job: spec -> model -> epochs -> checkpoints and metrics in the results store.

pretrain: BP from scratch (the backbone); train: any rule from scratch; finetune: start from a
source checkpoint's forward weights (or torchvision weights), convert to the rule, train.
The exported checkpoint is chosen on a validation split carved from train, never on test.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy import select, update
from torch import nn

from ssbench.data import DataBundle, load_data, make_loader
from ssbench.errors import CheckpointError, RunNotFoundError, SpecError
from ssbench.models import Normalized, build_model, head_of, replace_head
from ssbench.rules import alignment_metrics, convert
from ssbench.specs import DataSpec, TrainSpec
from ssbench.store import Store
from ssbench.store.models import Alignment, Metric, Run
from ssbench.store.records import AlignmentRow
from ssbench.training.checkpoint import (
    RESUME_FILE,
    ModelMeta,
    Resumable,
    load_scheduler_state,
    model_from_checkpoint,
    read_checkpoint,
    read_resume_state,
    resolve_checkpoint,
    rewrite_checkpoint,
    save_checkpoint,
    save_resume_state,
    set_rng_state,
)
from ssbench.training import distributed
from ssbench.training.device import memory_format, seed_everything
from ssbench.training.optim import build_optimizer, build_scheduler
from ssbench.training.step import TrainStep
from ssbench.training.tasks import Task, make_task


@dataclass
class Prepared:
    model: nn.Module
    meta: ModelMeta
    parent_id: int | None
    head: str | None = None  # finetune from a checkpoint: "new" or "kept"


# data sets defined by the folder they are read from: the same name may hold other classes
_FOLDER_DEFINED = ("imagenet", "list-retrieval", "coco", "nuswide", "imagenet100")


def same_classes(src_data: DataSpec, src_meta: ModelMeta, data: DataSpec, bundle: DataBundle) -> bool:
    """Whether the source head's outputs mean this run's labels: same data set, same classes, same order."""
    if src_data.name.lower() != data.name.lower():
        return False
    if data.name.lower() in _FOLDER_DEFINED:
        def folder(d: DataSpec) -> Path | None:
            return Path(d.data_dir).expanduser().resolve() if d.data_dir is not None else None

        if folder(src_data) != folder(data):
            return False
    if src_meta.class_names is not None:
        return list(src_meta.class_names) == list(bundle.class_names)
    # checkpoints written before class names were recorded: compare class ids (None = all, in order)
    src_ids = src_data.classes if src_data.classes is not None else tuple(range(src_meta.num_classes))
    ids = data.classes if data.classes is not None else tuple(range(bundle.num_classes))
    return tuple(src_ids) == tuple(ids)


def _transfer_head(net: nn.Module, spec: TrainSpec, src_meta: ModelMeta, src_data: DataSpec, bundle: DataBundle,
                   task: Task, source: str) -> tuple[nn.Module, str]:
    """Keep the source's head when it was trained on the same classes, else a new one (--reset-head /
    --keep-head override). A head trained on other classes would map new labels onto old outputs."""
    if src_meta.task != spec.task:  # classifier <-> hash head: nothing to keep
        if spec.reset_head is False:
            raise CheckpointError(f"--keep-head: {source} is a {src_meta.task} model; a {spec.task} run needs a new head")
        reset = True
    elif spec.reset_head is not None:
        reset = spec.reset_head
    else:
        reset = not same_classes(src_data, src_meta, spec.data, bundle)
    if spec.task == "hashing":
        from ssbench.retrieval.heads import code_bits, remove_hash_head

        if src_meta.task == "hashing":
            if reset:
                remove_hash_head(net)
            elif code_bits(net) != spec.hashing.bits:  # type: ignore[union-attr]
                raise CheckpointError(f"--keep-head: {source} emits {code_bits(net)}-bit codes, not {spec.hashing.bits}")  # type: ignore[union-attr]
        return task.prepare_model(net), "kept" if not reset else "new"
    if src_meta.task == "hashing":
        from ssbench.retrieval.heads import remove_hash_head

        remove_hash_head(net)
    if reset:
        replace_head(net, bundle.num_classes)
    elif src_meta.num_classes != bundle.num_classes:
        raise CheckpointError(f"--keep-head: {source} has {src_meta.num_classes} outputs, the data {bundle.num_classes} classes")
    return net, "new" if reset else "kept"


def prepare_model(spec: TrainSpec, bundle: DataBundle, task: Task, store: Store | None) -> Prepared:
    """Build (pretrain/train) or load (finetune) the network, then convert it to the spec's rule."""
    parent_id, head = None, None
    if spec.kind == "finetune" and spec.source:
        path, run, source = resolve_checkpoint(store, spec.source)
        payload = read_checkpoint(path)
        # forward weights only: the source's own rule state (if any) does not carry over
        model, src_meta, src_spec = model_from_checkpoint(payload, with_rule=False, expect_model=spec.model.name, source=source)
        if (src_meta.in_channels, src_meta.image_size) != (bundle.in_channels, bundle.image_size):
            raise CheckpointError(
                f"{source} takes {src_meta.in_channels}x{src_meta.image_size}px images, "
                f"data gives {bundle.in_channels}x{bundle.image_size}px"
            )
        if run is None and store is not None and payload.get("run_id") is not None:
            run = store.get_run(int(payload["run_id"])) if _has_run(store, payload["run_id"]) else None
        parent_id = run.id if run is not None else None
        if spec.model.hidden is not None and tuple(src_meta.model.get("hidden") or ()) != tuple(spec.model.hidden):
            raise CheckpointError(f"{source} has hidden widths {src_meta.model.get('hidden')}, not {list(spec.model.hidden)}")
        arch = dict(src_meta.model)  # the weights' architecture, whatever the spec left unset
        mean, std = list(src_meta.mean), list(src_meta.std)  # the backbone expects its own normalisation
        net, head = _transfer_head(model.net, spec, src_meta, src_spec.data, bundle, task, source)
    else:
        net = build_model(spec.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels, image_size=bundle.image_size)
        net = task.prepare_model(net)
        mean, std = list(bundle.mean), list(bundle.std)
        arch = spec.model.model_dump(mode="json")
    model = Normalized(net, mean, std)
    rule_seed = spec.rule.seed if spec.rule.seed is not None else spec.seed
    from_scratch = spec.kind != "finetune" and not spec.model.pretrained and spec.model.weights is None  # rule.init='xavier' re-inits W then
    if spec.kind != "pretrain":
        # two real images: layers whose own forward never runs (functional use of .weight, e.g.
        # torchvision Swin attention) are found now, left exact, and recorded in the checkpoint
        example = torch.stack([torch.as_tensor(bundle.train[i][0]) for i in range(min(2, len(bundle.train)))])
        convert(model, spec.rule, seed=rule_seed, example_input=example, from_scratch=from_scratch)
    elif from_scratch and spec.rule.init != "default":
        from ssbench.rules import scratch_init

        scratch_init(model, spec.rule, seed=rule_seed)  # xavier: BioTorch inits its BP baseline the same way
    meta = ModelMeta(
        model=arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
        image_size=bundle.image_size, mean=mean, std=std, task=spec.task, rule=None,
        class_names=list(bundle.class_names),
    )
    return Prepared(model, meta, parent_id, head)


DIVERGED_FACTOR = 100.0  # epoch training loss above this multiple of the first batch's: diverged


def _has_run(store: Store, run_id: int) -> bool:
    try:
        store.get_run(int(run_id))
    except RunNotFoundError:
        return False
    return True


def _progress(console: Console | None, quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False,
    )


def _log_alignment(rec, model: nn.Module, epoch: int, grad_angles: dict[str, float] | None = None) -> float | None:  # noqa: ANN001
    rows = alignment_metrics(model)
    if not rows:
        return None
    rec.log_alignment(epoch, [AlignmentRow(r.layer, r.angle_deg, r.norm_ratio, (grad_angles or {}).get(r.layer)) for r in rows])
    angles = [r.angle_deg for r in rows if r.angle_deg is not None and not math.isnan(r.angle_deg)]
    return sum(angles) / len(angles) if angles else None


# -- resume -------------------------------------------------------------------------------------

def _mark_gone_failed(store: Store, run: Run) -> None:
    """A 'running' run whose process ended (SIGKILL, out of memory) becomes 'failed', saying why.
    The status is compared in the UPDATE, so a concurrent `fail_stale` changes nothing."""
    error = (f"StaleRun: process {run.pid} on {run.host} ended without finishing the run (killed, out of "
             "memory or power loss); marked failed by a rerun of the same job, which resumes it")
    with store.session() as s, s.begin():
        s.execute(update(Run).where(Run.id == run.id, Run.status == "running")
                  .values(status="failed", finished_at=datetime.now(timezone.utc), error=error))


def _best_fits(store: Store, run_id: int, state: dict[str, Any]) -> bool:
    """The run's best.pt holds the state's best epoch. When the best epoch is the state's own epoch
    the state's weights are the best (best.pt is written after resume.pt), so no file is needed."""
    best = int(state.get("best_epoch") or 0)
    if best in (0, int(state["epoch"])):
        return True
    try:
        return int(read_checkpoint(store.checkpoint_dir(run_id) / "best.pt").get("epoch") or -1) == best
    except CheckpointError:
        return False


def find_resumable(store: Store, kind: str, config_hash: str, *, claimed: bool = False) -> Resumable | None:
    """The newest earlier run of this job (same kind and configuration hash) to continue: not
    finished, its process gone ('failed', or 'running' with liveness 'gone', which is marked failed
    here), with a readable resume state in its checkpoint folder. A 'running' run that may still be
    alive is never taken over: liveness 'alive', or 'unknown' (another host) unless `claimed`, i.e.
    the caller holds the job's claim, which says that host's worker is gone."""
    stmt = (select(Run).where(Run.kind == kind, Run.config_hash == config_hash, Run.status.in_(("failed", "running")))
            .order_by(Run.id.desc()))
    with store.session() as s:
        runs = list(s.scalars(stmt))
    for run in runs:
        if run.status == "running":
            live = store.liveness(run)
            if live == "alive" or (live == "unknown" and not claimed):
                continue
            _mark_gone_failed(store, run)
        state = read_resume_state(store.checkpoint_dir(run.id) / RESUME_FILE)
        if state is not None and _best_fits(store, run.id, state):
            return Resumable(run.id, int(state["epoch"]), state)
    return None


def copy_epoch_rows(store: Store, src: int, dst: int, up_to: int) -> None:
    """Metric and alignment rows of epochs <= `up_to` of run `src`, added to run `dst` in one
    transaction: a resumed run's curves start at its first epoch, as an uninterrupted run's do."""
    with store.session() as s, s.begin():
        metrics = s.scalars(select(Metric).where(Metric.run_id == src, Metric.epoch <= up_to).order_by(Metric.id)).all()
        aligns = s.scalars(select(Alignment).where(Alignment.run_id == src, Alignment.epoch <= up_to).order_by(Alignment.id)).all()
        s.add_all([Metric(run_id=dst, epoch=m.epoch, split=m.split, name=m.name, value=m.value, seconds=m.seconds)
                   for m in metrics])
        s.add_all([Alignment(run_id=dst, epoch=a.epoch, layer=a.layer, angle_deg=a.angle_deg, norm_ratio=a.norm_ratio,
                             grad_angle_deg=a.grad_angle_deg) for a in aligns])


@dataclass
class _Progress:
    """What the epoch loop carries from one epoch to the next (and a resume state restores)."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    first_loss: float | None = None
    diverged: dict[str, float] | None = None


def _take_over(prior: Resumable, store: Store, rec: Any, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
               meta: ModelMeta, spec: TrainSpec, ckpt_dir: Path) -> _Progress:
    """Continue `prior` in the run `rec`: weights, optimiser, scheduler, its epoch rows and its
    best.pt; the RNG states last, so nothing here can draw from them."""
    st, k = prior.state, prior.epoch
    _restore(st, model, opt, sched)
    copy_epoch_rows(store, prior.run_id, rec.run_id, k)
    save_checkpoint(ckpt_dir / "last.pt", model, meta, spec, epoch=k, run_id=rec.run_id)
    best = int(st["best_epoch"])
    if best == k:
        save_checkpoint(ckpt_dir / "best.pt", model, meta, spec, epoch=k, run_id=rec.run_id)
    elif best:
        rewrite_checkpoint(store.checkpoint_dir(prior.run_id) / "best.pt", ckpt_dir / "best.pt", run_id=rec.run_id)
    rec.set_summary(resumed_from={"run": prior.run_id, "epoch": k}, **({"diverged": st["diverged"]} if st["diverged"] else {}))
    if spec.keep_epochs:
        _take_over_kept(store, prior, rec, ckpt_dir)
    set_rng_state(st["rng"])
    return _Progress(k, float(st["best_score"]), best, st["first_loss"], st["diverged"])


def _restore(state: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> None:
    """Weights, optimiser and scheduler of a resume state (on every process of a data-parallel job)."""
    model.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    load_scheduler_state(sched, state["scheduler"])


# -- kept per-epoch checkpoints (keep_epochs): the weights an analysis over training reads -------

EPOCH_DIR = "epochs"


def epoch_tag(epoch: int) -> str:
    """Checkpoint tag of the weights kept after `epoch` (0: before training)."""
    return f"epoch-{epoch}"


def kept(spec: TrainSpec, epoch: int) -> bool:
    """Whether the weights after `epoch` are kept: every keep_epochs-th epoch, the initial weights
    and the last epoch (so a trajectory always ends where training ended)."""
    k = spec.keep_epochs
    return bool(k) and (epoch % k == 0 or epoch == spec.epochs)


def keep_epoch(rec: Any, ckpt_dir: Path, model: nn.Module, meta: ModelMeta, spec: TrainSpec, epoch: int) -> None:
    path = save_checkpoint(ckpt_dir / EPOCH_DIR / f"{epoch_tag(epoch)}.pt", model, meta, spec, epoch=epoch, run_id=rec.run_id)
    rec.add_checkpoint(epoch_tag(epoch), path, epoch=epoch)


def _take_over_kept(store: Store, prior: Resumable, rec: Any, ckpt_dir: Path) -> None:
    """The kept epochs <= the resumed epoch of the interrupted run, as this run's own."""
    for row in store.checkpoints(prior.run_id):
        if row.tag.startswith("epoch-") and row.epoch is not None and row.epoch <= prior.epoch:
            dst = rewrite_checkpoint(Path(row.path), ckpt_dir / EPOCH_DIR / f"{row.tag}.pt", run_id=rec.run_id)
            rec.add_checkpoint(row.tag, dst, epoch=row.epoch)


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)
    else:  # library use without a console: a resume is still worth a line
        print(text, file=sys.stderr)


def run_training(
    spec: TrainSpec,
    store: Store,
    *,
    console: Console | None = None,
    quiet: bool = False,
    resume: bool = True,
    claimed: bool = False,
    on_epoch: Callable[[int], None] | None = None,
    world: distributed.World | None = None,
) -> int | None:
    """Run one training job; returns its run id. The run is 'failed' in the store if anything raises.

    resume: continue an interrupted run of the same job (`find_resumable`) from its last epoch
    instead of starting over; with `deterministic` the final weights equal an uninterrupted run's.
    claimed: the caller holds the job's claim, so a 'running' run of another host is taken over too.
    on_epoch(epoch): called once an epoch's rows and files (last.pt, resume.pt, best.pt) are written.
    compute.gpus > 1 (or under torchrun): the job runs on several processes (`distributed`), which
    call back in with their `world`; rank 0 records the run, the others return None.
    """
    if world is None and distributed.wanted(spec):
        return distributed.run(spec, store, run_training, console=console, quiet=quiet, resume=resume,
                               claimed=claimed, on_epoch=on_epoch)
    world = world or distributed.SINGLE
    device = distributed.rank_device(spec.device, world)
    seed_everything(spec.seed, spec.deterministic)
    with distributed.main_first(world):  # a download happens once
        bundle = load_data(spec.data)
    if getattr(bundle, "retrieval", None) is not None and spec.task != "hashing":
        raise SpecError(f"{spec.data.name} is a multi-label retrieval data set: use --task hashing")
    task = make_task(spec, bundle.num_classes)
    prepared = prepare_model(distributed.shared_source(spec, store, world), bundle, task, store)
    model = memory_format(prepared.model.to(device), spec.compute.channels_last)
    head_name = head_of(model)[0] if spec.optim.head_lr is not None else None
    opt = build_optimizer(model, spec.optim, head_name)
    sched = build_scheduler(opt, spec.optim, spec.epochs)
    # hashing trains on the retrieval protocol's class-balanced training set, not all of train
    train_set = task.train_dataset(bundle) if hasattr(task, "train_dataset") else bundle.train
    loader = make_loader(train_set, spec.batch_size, shuffle=True, seed=spec.seed, drop_last=len(train_set) > spec.batch_size,
                         rank=world.rank, world=world.size, workers=spec.compute.workers, device=device)
    select = spec.select if bundle.val is not None else "last"
    grad_batch = None
    if spec.track_grad_alignment:
        from ssbench.analysis.gradient_alignment import gradient_alignment

        grad_batch = next(iter(make_loader(train_set, min(256, len(train_set)), shuffle=True, seed=spec.seed + 1)))
    # the key the store records runs under (job_hash: a source run named by its own hash, not its id)
    key = store.job_hash(spec) if world.main else ""
    prior = find_resumable(store, spec.kind, key, claimed=claimed) if resume and world.main else None
    prior = distributed.shared_resume(prior, world, store)  # the other processes continue from rank 0's choice

    # only rank 0 records the run; on the other processes of a data-parallel job rec is None
    with (store.run(
        spec.kind, config=spec, seed=spec.seed, parent_id=prepared.parent_id, recipe=spec.recipe, tags=spec.tags,
        rule=spec.rule.name, model=spec.model.name, dataset=spec.data.name, task=spec.task, device=str(device),
    ) if world.main else nullcontext()) as rec:
        if rec is None:  # another process of a data-parallel job: rank 0's starting point, nothing written
            done = _Progress()
            if prior is not None:
                _restore(prior.state, model, opt, sched)
                done = _Progress(prior.epoch)
            distributed.seed_rank(spec.seed, world, done.epoch)
        else:
            ckpt_dir = store.checkpoint_dir(rec.run_id)
            resume_path = ckpt_dir / RESUME_FILE
            if world.size > 1:
                rec.set_summary(world_size=world.size)
            if prepared.head is not None:
                rec.set_summary(head=prepared.head)
            if hasattr(task, "save_artifacts"):  # e.g. the retrieval split, so attacks reuse it exactly
                rec.set_summary(**task.save_artifacts(bundle, ckpt_dir, root=store.artifacts))
            if prior is not None:
                done = _take_over(prior, store, rec, model, opt, sched, prepared.meta, spec, ckpt_dir)
                _say(console, f"resuming run {prior.run_id} from epoch {prior.epoch} (run {rec.run_id})")
            else:
                done = _Progress()
                _log_alignment(rec, model, 0)
                if kept(spec, 0):
                    keep_epoch(rec, ckpt_dir, model, prepared.meta, spec, 0)
        # what the steps call: the model itself, or (several processes) checked and wrapped in DDP
        step_model = distributed.replicate(model, world, device, opt, sched, steps=len(loader))
        # precision, memory format of the batches, compiled or eager (training/step.py)
        step = TrainStep(model, task.loss, opt, spec.compute, device, forward=step_model, console=console)
        step.precision.load_state_dict(prior.state.get("scaler") if prior is not None else None)
        with _progress(console, quiet) as progress:
            epochs = progress.add_task(f"{spec.kind} {spec.rule.name} run {rec.run_id if rec else '-'}", total=spec.epochs,
                                       completed=done.epoch, info="")
            for epoch in range(done.epoch + 1, spec.epochs + 1):
                t0 = time.perf_counter()
                model.train()
                loader.set_epoch(epoch - 1)  # batches of (seed, epoch) alone: a resumed run draws what an uninterrupted one would
                batches = progress.add_task(f"  epoch {epoch}", total=len(loader), info="")
                loss_sum, n, metric_sums = 0.0, 0, {}
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    out, loss = step(x, y, epoch)  # forward, loss check, backward, optimiser step
                    if done.first_loss is None:
                        done.first_loss = float(loss.detach())
                    loss_sum += float(loss.detach()) * len(y)
                    n += len(y)
                    for k, v in getattr(task, "batch_metrics", lambda *_: {})(out.detach(), y).items():
                        metric_sums[k] = metric_sums.get(k, 0.0) + v * len(y)
                    progress.update(batches, advance=1, info=f"loss {loss_sum / n:.4f}")
                progress.remove_task(batches)
                loss_sum, n, metric_sums = distributed.epoch_totals(world, loss_sum, n, metric_sums)
                lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with, before the scheduler moves it
                if sched is not None:
                    sched.step()
                if rec is None:  # the other processes only train
                    continue
                train_metrics = {"loss": loss_sum / n, **{k: v / n for k, v in metric_sums.items()}, "lr": lr}
                rec.log_epoch(epoch, "train", train_metrics, seconds=time.perf_counter() - t0)
                first_loss = done.first_loss
                if done.diverged is None and first_loss is not None and loss_sum / n > DIVERGED_FACTOR * max(first_loss, 1e-12):
                    # argmax accuracy can still rise while the loss explodes (DFA, large lr): say so once
                    done.diverged = {"epoch": epoch, "train_loss": loss_sum / n, "first_batch_loss": first_loss}
                    rec.set_summary(diverged=done.diverged)
                    if console is not None:
                        console.print(f"[yellow]warning: run {rec.run_id} training loss {loss_sum / n:.3g} at epoch {epoch} "
                                      f"is > {DIVERGED_FACTOR:g}x its first batch's ({first_loss:.3g}): training diverged; "
                                      "lower the learning rate[/]")
                val = task.val_scores(model, bundle, device)
                if val:
                    rec.log_epoch(epoch, "val", val)
                grad_angles = None
                if grad_batch is not None:
                    grad_angles = dict(gradient_alignment(model, grad_batch[0].to(device), grad_batch[1].to(device), task.loss))
                angle = _log_alignment(rec, model, epoch, grad_angles)
                save_checkpoint(ckpt_dir / "last.pt", model, prepared.meta, spec, epoch=epoch, run_id=rec.run_id)
                if kept(spec, epoch):  # before resume.pt: a resumed run finds every kept epoch up to its own
                    keep_epoch(rec, ckpt_dir, model, prepared.meta, spec, epoch)
                score = next(iter(val.values())) if val else -math.inf
                improved = bool(val) and score > done.best_score
                if improved:
                    done.best_score, done.best_epoch = score, epoch
                done.epoch = epoch
                # resume.pt before best.pt: a kill between the two leaves a state whose best epoch is
                # its own, whose weights are then the best (see _best_fits)
                save_resume_state(resume_path, run_id=rec.run_id, epoch=epoch, model=model, optimizer=opt, scheduler=sched,
                                  best_score=done.best_score, best_epoch=done.best_epoch, first_loss=done.first_loss,
                                  diverged=done.diverged, scaler=step.precision.state_dict())
                if improved:
                    save_checkpoint(ckpt_dir / "best.pt", model, prepared.meta, spec, epoch=epoch, run_id=rec.run_id)
                if prior is not None:  # this run's own state supersedes its predecessor's (large: optimiser state)
                    (store.checkpoint_dir(prior.run_id) / RESUME_FILE).unlink(missing_ok=True)
                info = " ".join(f"val {k} {v:.4f}" for k, v in list(val.items())[:1])
                if angle is not None and spec.kind != "pretrain":
                    info += f" angle {angle:.1f}"
                progress.update(epochs, advance=1, info=info)
                if on_epoch is not None:
                    on_epoch(epoch)
        if rec is None:
            return None
        best_epoch, best_score = done.best_epoch, done.best_score
        rec.add_checkpoint("last", ckpt_dir / "last.pt", epoch=spec.epochs)
        if best_epoch:
            rec.add_checkpoint("best", ckpt_dir / "best.pt", epoch=best_epoch, metric=best_score)
        if select == "best" and best_epoch:
            state = torch.load(ckpt_dir / "best.pt", map_location=device, weights_only=True)["state_dict"]
            model.load_state_dict(state)
        test = task.test_scores(model, bundle, device)
        for metric, value in test.items():
            rec.log_evaluation(metric, value, split="test", params={"checkpoint": select})
        rec.set_summary(selected=select if best_epoch or select == "last" else "last", best_epoch=best_epoch or None, **{f"test_{k}": v for k, v in test.items()})
        if spec.compute.compile:  # False: torch.compile failed and the run trained eager (a warning said why)
            rec.set_summary(compiled=step.ran_compiled)
        # finished: nothing left to resume (the files hold optimiser state: large)
        resume_path.unlink(missing_ok=True)
        if prior is not None:
            (store.checkpoint_dir(prior.run_id) / RESUME_FILE).unlink(missing_ok=True)
        if console is not None and not quiet:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items())
            head = f", {prepared.head} head" if prepared.head else ""
            console.print(f"run {rec.run_id} ({spec.kind} {spec.rule.name}{head}) finished: test {shown}")
        return rec.run_id
