"""The training job: spec -> model -> epochs -> checkpoints and metrics in the results store.

pretrain: BP from scratch (the backbone); train: any rule from scratch; finetune: start from a
source checkpoint's forward weights (or torchvision weights), convert to the rule, train.
The exported checkpoint is chosen on a validation split carved from train, never on test.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ssbench.data import DataBundle, load_data, make_loader
from ssbench.errors import CheckpointError, RunNotFoundError, SpecError
from ssbench.models import Normalized, build_model, head_of, replace_head
from ssbench.rules import alignment_metrics, convert
from ssbench.specs import DataSpec, TrainSpec
from ssbench.store import Store
from ssbench.store.records import AlignmentRow
from ssbench.training.checkpoint import (
    ModelMeta,
    model_from_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from ssbench.training.device import resolve_device, seed_everything
from ssbench.training.optim import build_optimizer, build_scheduler
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


def prepare_model(spec: TrainSpec, bundle: DataBundle, task: Task, store: Store) -> Prepared:
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
        if run is None and payload.get("run_id") is not None:
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
    if spec.kind != "pretrain":
        # two real images: layers whose own forward never runs (functional use of .weight, e.g.
        # torchvision Swin attention) are found now, left exact, and recorded in the checkpoint
        example = torch.stack([torch.as_tensor(bundle.train[i][0]) for i in range(min(2, len(bundle.train)))])
        convert(model, spec.rule, seed=spec.rule.seed if spec.rule.seed is not None else spec.seed, example_input=example)
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


def run_training(spec: TrainSpec, store: Store, *, console: Console | None = None, quiet: bool = False) -> int:
    """Run one training job; returns its run id. The run is 'failed' in the store if anything raises."""
    device = resolve_device(spec.device)
    seed_everything(spec.seed, spec.deterministic)
    bundle = load_data(spec.data)
    if getattr(bundle, "retrieval", None) is not None and spec.task != "hashing":
        raise SpecError(f"{spec.data.name} is a multi-label retrieval data set: use --task hashing")
    task = make_task(spec, bundle.num_classes)
    prepared = prepare_model(spec, bundle, task, store)
    model = prepared.model.to(device)
    head_name = head_of(model)[0] if spec.optim.head_lr is not None else None
    opt = build_optimizer(model, spec.optim, head_name)
    sched = build_scheduler(opt, spec.optim, spec.epochs)
    # hashing trains on the retrieval protocol's class-balanced training set, not all of train
    train_set = task.train_dataset(bundle) if hasattr(task, "train_dataset") else bundle.train
    loader = make_loader(train_set, spec.batch_size, shuffle=True, seed=spec.seed, drop_last=len(train_set) > spec.batch_size)
    select = spec.select if bundle.val is not None else "last"
    grad_batch = None
    if spec.track_grad_alignment:
        from ssbench.analysis.gradient_alignment import gradient_alignment

        grad_batch = next(iter(make_loader(train_set, min(256, len(train_set)), shuffle=True, seed=spec.seed + 1)))

    with store.run(
        spec.kind, config=spec, seed=spec.seed, parent_id=prepared.parent_id, recipe=spec.recipe, tags=spec.tags,
        rule=spec.rule.name, model=spec.model.name, dataset=spec.data.name, task=spec.task, device=str(device),
    ) as rec:
        ckpt_dir = Path(store.home) / "checkpoints" / str(rec.run_id)
        if prepared.head is not None:
            rec.set_summary(head=prepared.head)
        if hasattr(task, "save_artifacts"):  # e.g. the retrieval split, so attacks reuse it exactly
            rec.set_summary(**task.save_artifacts(bundle, ckpt_dir))
        _log_alignment(rec, model, 0)
        best_score, best_epoch = -math.inf, 0
        first_loss: float | None = None
        diverged: dict[str, float] | None = None
        with _progress(console, quiet) as progress:
            epochs = progress.add_task(f"{spec.kind} {spec.rule.name} run {rec.run_id}", total=spec.epochs, info="")
            for epoch in range(1, spec.epochs + 1):
                t0 = time.perf_counter()
                model.train()
                batches = progress.add_task(f"  epoch {epoch}", total=len(loader), info="")
                loss_sum, n, metric_sums = 0.0, 0, {}
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    out = model(x)
                    loss = task.loss(out, y)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {float(loss.detach())} at epoch {epoch}; lower the learning rate")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if first_loss is None:
                        first_loss = float(loss.detach())
                    loss_sum += float(loss.detach()) * len(y)
                    n += len(y)
                    for k, v in getattr(task, "batch_metrics", lambda *_: {})(out.detach(), y).items():
                        metric_sums[k] = metric_sums.get(k, 0.0) + v * len(y)
                    progress.update(batches, advance=1, info=f"loss {loss_sum / n:.4f}")
                progress.remove_task(batches)
                lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with, before the scheduler moves it
                if sched is not None:
                    sched.step()
                train_metrics = {"loss": loss_sum / n, **{k: v / n for k, v in metric_sums.items()}, "lr": lr}
                rec.log_epoch(epoch, "train", train_metrics, seconds=time.perf_counter() - t0)
                if diverged is None and first_loss is not None and loss_sum / n > DIVERGED_FACTOR * max(first_loss, 1e-12):
                    # argmax accuracy can still rise while the loss explodes (DFA, large lr): say so once
                    diverged = {"epoch": epoch, "train_loss": loss_sum / n, "first_batch_loss": first_loss}
                    rec.set_summary(diverged=diverged)
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
                score = next(iter(val.values())) if val else -math.inf
                if val and score > best_score:
                    best_score, best_epoch = score, epoch
                    save_checkpoint(ckpt_dir / "best.pt", model, prepared.meta, spec, epoch=epoch, run_id=rec.run_id)
                info = " ".join(f"val {k} {v:.4f}" for k, v in list(val.items())[:1])
                if angle is not None and spec.kind != "pretrain":
                    info += f" angle {angle:.1f}"
                progress.update(epochs, advance=1, info=info)
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
        if console is not None and not quiet:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items())
            head = f", {prepared.head} head" if prepared.head else ""
            console.print(f"run {rec.run_id} ({spec.kind} {spec.rule.name}{head}) finished: test {shown}")
        return rec.run_id
