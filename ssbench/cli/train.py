"""`ssbench pretrain | train | finetune`: build a TrainSpec from options and run it.

No `from __future__ import annotations` here: typer evaluates the option annotations, which close
over `kind` inside the command factory.
"""

from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError

from ssbench.cli.options import Artifacts, Db, Device, Quiet, parse_classes, parse_floats, parse_ints
from ssbench.errors import SpecError
from ssbench.printing import SafeConsole
from ssbench.specs import (
    TRAIN_KINDS,
    ComputeSpec,
    DataSpec,
    HashSpec,
    OptimSpec,
    RuleSpec,
    TrainKind,
    TrainSpec,
)

_HELP = {
    "pretrain": (
        "Train a backbone with backpropagation (BP) from scratch.\n\n"
        "Example (the offline transfer task): ssbench pretrain --dataset fashion-mnist --classes 0-4 --epochs 3"
    ),
    "train": (
        "Train a network from scratch with a learning rule (the BioTorch / IFA setting).\n\n"
        "Example: ssbench train --rule ifa --theta 30 --model mlp --epochs 5"
    ),
    "finetune": (
        "Fine-tune a pretrained network with a learning rule.\n\n"
        "--from takes a run id (see `ssbench runs`) or a checkpoint path. The forward weights are "
        "kept; the rule only changes which tensor carries the error backward "
        "(bp: W, fa: fixed random, usf: rms(W) sign(W), frsf: |R| sign(W), brsf: |R_t| sign(W) redrawn per "
        "step, ifa: fixed B at angle --theta to W, dfa: B_l e broadcast from the output).\n\n"
        "Left unset, the data set, the image size (another data set is resized to the source's input), "
        "the channels (on the source's data set), the seed and the model are the source's; the classes "
        "are all of the data set's unless --classes names some.\n\n"
        "Example: ssbench finetune --from 1 --rule frsf --classes 5-9 --epochs 2"
    ),
}


def _optim(name: str, lr: float, head_lr: float | None, momentum: float, nesterov: bool, betas: str | None,
           weight_decay: float, scheduler: str, step_size: int | None, milestones: str | None, gamma: float | None) -> OptimSpec:
    """Unset options keep OptimSpec's defaults; contradictions (multistep without milestones, ...)
    are the spec's one-line validation errors."""
    given: dict = {"step_size": step_size, "gamma": gamma}
    if betas is not None:
        b = parse_floats(betas)
        if len(b) != 2:
            raise SpecError(f"--betas {betas!r}: give two numbers, e.g. 0.9,0.999")
        given["betas"] = b
    if milestones is not None:
        given["milestones"] = parse_ints(milestones, "--milestones", example="30,60") or ()
    try:
        return OptimSpec(
            name=name, lr=lr, head_lr=head_lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,  # type: ignore[arg-type]
            scheduler=scheduler, **{k: v for k, v in given.items() if v is not None},  # type: ignore[arg-type]
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = {"name": "optimizer"}.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else ""
        raise SpecError(f"{'--' + where.replace('_', '-') + ': ' if where else ''}{first.get('ctx', {}).get('error', first['msg'])}") from None


def _default(kind: TrainKind, default: str, from_source: str = "the --from source's") -> str:
    # a fine-tune from a run or checkpoint takes these from it (training/backbone.py)
    return f" [default: {from_source}; else {default}]" if kind == "finetune" else f" [default: {default}]"


def make_command(kind: TrainKind):  # noqa: ANN201  (typer reads the returned function's signature)
    is_pretrain = kind == "pretrain"  # BP only: rule options hidden
    not_finetune = kind != "finetune"

    def command(
        dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="fashion-mnist, digits, mnist, cifar10, cifar100, imagenet; hashing only: list-retrieval, coco, nuswide, imagenet100 (DeepHash list files in --data-dir)" + _default(kind, "fashion-mnist"))] = None,
        data_dir: Annotated[Path | None, typer.Option(help="folder with the data set's files; it must exist, and is then the only place looked (a download goes there) [default: $SSBENCH_DATA, Debian's /usr/share/datasets, then ~/.cache/ssbench/data]")] = None,
        classes: Annotated[str | None, typer.Option(help="class subset of two or more classes, e.g. 0-4 or 5,6,7 (labels remapped to 0..k-1)")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="lenet, lenet-cifar, mlp, resnet20, resnet56, or a torchvision name (resnet18, vgg16, alexnet)" + (" [default: the source's]" if kind == "finetune" else " [default: lenet]"))] = None,
        hidden: Annotated[str | None, typer.Option(help="mlp hidden widths, e.g. 256,256")] = None,
        torchvision_weights: Annotated[bool, typer.Option("--torchvision-weights", help="start from torchvision's ImageNet weights (needs a network)")] = False,
        weights: Annotated[Path | None, typer.Option("--weights", help="start from a torchvision state_dict file (read weights_only): pretrained weights without a network; a finetune takes it in place of --from")] = None,
        rule: Annotated[str, typer.Option("--rule", "-r", hidden=is_pretrain, help="bp, fa, dfa, usf, frsf, brsf, ifa")] = "bp",
        theta: Annotated[float | None, typer.Option(hidden=is_pretrain, help="ifa: initial angle between W and B, degrees (0 = BP at start, 90 = FA)")] = None,
        init: Annotated[str, typer.Option(help="default, xavier: BioTorch's initialisation (W re-initialised Xavier-uniform when training from scratch, B drawn Xavier-uniform), or gaussian: W ~ N(0, --weight-var / fan_in) from scratch, B ~ N(0, --feedback-var / fan_in) (docs/rules.md)")] = "default",
        weight_var: Annotated[float | None, typer.Option(help="--init gaussian: variance x fan_in of W (1 = LeCun, 2 = He)")] = None,
        feedback_var: Annotated[float | None, typer.Option(hidden=is_pretrain, help="--init gaussian: variance x fan_in of the random feedback [default: --weight-var; not bp, ifa]")] = None,
        source: Annotated[str | None, typer.Option("--from", hidden=not_finetune, help="run id or checkpoint path to fine-tune")] = None,
        task: Annotated[str, typer.Option(help="classification or hashing")] = "classification",
        bits: Annotated[int, typer.Option(help="hashing: code length")] = 32,
        hash_loss: Annotated[str, typer.Option(help="hashing: csq (hash centers) or dpsh (pairwise)")] = "csq",
        epochs: Annotated[int, typer.Option("--epochs", "-e", min=1)] = 3,
        batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 128,
        optimizer: Annotated[str, typer.Option(help="sgd, adam, adamw")] = "sgd",
        lr: Annotated[float, typer.Option(help="learning rate (backbone)")] = 0.01,
        head_lr: Annotated[float | None, typer.Option(help="learning rate of the classifier head [default: --lr]")] = None,
        momentum: Annotated[float, typer.Option(help="sgd momentum")] = 0.9,
        nesterov: Annotated[bool, typer.Option(help="sgd: Nesterov momentum")] = False,
        betas: Annotated[str | None, typer.Option(help="adam/adamw: beta1,beta2 [default: 0.9,0.999]")] = None,
        weight_decay: Annotated[float, typer.Option()] = 0.0,
        scheduler: Annotated[str, typer.Option(help="lr schedule, stepped per epoch: none, cosine (to 0 over --epochs), step (x gamma every --step-size epochs), multistep (x gamma at each of --milestones)")] = "none",
        step_size: Annotated[int | None, typer.Option(min=1, help="step scheduler: epochs between decays [default: 30]")] = None,
        milestones: Annotated[str | None, typer.Option(help="multistep scheduler: epochs at which the lr decays, e.g. 30,60")] = None,
        gamma: Annotated[float | None, typer.Option(help="step / multistep: lr factor at each decay [default: 0.1]")] = None,
        seed: Annotated[int | None, typer.Option("--seed", "-s", help="seed of the weights, data order and rule" + _default(kind, "0"))] = None,
        deterministic: Annotated[bool, typer.Option(help="deterministic kernels (slower)")] = False,
        val_fraction: Annotated[float, typer.Option(help="share of train held out to choose the checkpoint")] = 0.1,
        train_limit: Annotated[int | None, typer.Option(help="use only N training images (quick runs)")] = None,
        test_limit: Annotated[int | None, typer.Option(help="evaluate on N test images (stratified, fixed)")] = None,
        image_size: Annotated[int | None, typer.Option(help="resize images (e.g. 32 for CIFAR models on 28px data)" + _default(kind, "the data set's", "the --from source's input size"))] = None,
        channels: Annotated[int | None, typer.Option(help="force 1 or 3 channels" + _default(kind, "the data set's", "the --from source's on its own data set"))] = None,
        download: Annotated[bool, typer.Option(help="let torchvision download a missing data set")] = True,
        select: Annotated[str, typer.Option(help="best (on validation) or last epoch")] = "best",
        reset_head: Annotated[bool | None, typer.Option("--reset-head/--keep-head", hidden=not_finetune, help="new classifier head [default: new when the classes differ from the source's (other data set or class list), kept when they are the same]")] = None,
        track_grad_alignment: Annotated[bool, typer.Option(help="per epoch, angle between the rule's weight update and the true gradient")] = False,
        keep_epochs: Annotated[int, typer.Option(min=0, help="keep the weights every N epochs (and before training, and the last epoch) for `ssbench analyze trajectory`; 0 = none")] = 0,
        precision: Annotated[Literal["fp32", "bf16", "fp16"], typer.Option(help="fp32; or bf16 / fp16: forward and loss under autocast, weights and optimiser state kept in fp32. Faster on tensor-core GPUs with about half the activation memory (bf16 on A100 / H100 and newer; fp16, with a loss scaler, on older ones; docs/gpu.md). Evaluation runs fp32, attacks by default too")] = "fp32",
        channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory format for the model and its image batches: faster convolutions on tensor cores, best with --precision bf16; no use for MLPs")] = False,
        compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model for the training steps: faster long GPU runs after a compile of a minute or so; where it fails, one warning line and eager steps (the run's summary records compiled)")] = False,
        workers: Annotated[int | None, typer.Option(min=0, help="data-loading processes for data sets read from files (ImageNet folders, DeepHash lists); 0 = in the training process; in-memory sets need none [default: the cores less one, shared between --gpus processes, at most 16]")] = None,
        gpus: Annotated[int, typer.Option(min=1, help="data-parallel processes, one per GPU (gloo processes on a CPU); --batch-size is the global batch, split evenly: one process's steps up to rounding. Under torchrun: its --nproc-per-node")] = 1,
        tag: Annotated[list[str] | None, typer.Option(help="label the run (repeatable)")] = None,
        device: Device = "auto",
        db: Db = None,
        artifacts: Artifacts = None,
        quiet: Quiet = False,
    ) -> None:
        from ssbench.store import open_store
        from ssbench.training import run_training
        from ssbench.training.backbone import read_backbone, resolve_inputs, resolve_model
        from ssbench.training.distributed import main_process

        from ssbench.rules import RULES

        RULES.get(rule)  # unknown rule: one line listing the choices
        if kind == "pretrain" and rule != "bp":
            raise SpecError("pretrain is backprop; use `ssbench train --rule R` to train a rule from scratch")
        # a fine-tune's unset data set, input shape, seed and model are its source's (training/backbone.py)
        backbone = read_backbone(open_store(db, artifacts=artifacts), source) if kind == "finetune" and source else None
        inputs = resolve_inputs(backbone, dataset=dataset, image_size=image_size, channels=channels, seed=seed)
        spec = TrainSpec(
            kind=kind,
            task=task,  # type: ignore[arg-type]
            data=DataSpec(
                # --classes '' names an empty subset: refused, not read as unset (all classes)
                name=inputs.dataset, data_dir=data_dir, classes=None if classes is None else parse_classes(classes) or (),
                val_fraction=val_fraction,
                train_limit=train_limit, test_limit=test_limit, image_size=inputs.image_size, channels=inputs.channels,
                download=download,
            ),
            model=resolve_model(backbone, model, parse_ints(hidden, "--hidden", example="256,256")).replace(
                pretrained=torchvision_weights, weights=weights),
            rule=RuleSpec(name=rule, theta=theta, init=init, weight_var=weight_var, feedback_var=feedback_var),  # type: ignore[arg-type]
            optim=_optim(optimizer, lr, head_lr, momentum, nesterov, betas, weight_decay, scheduler, step_size, milestones, gamma),
            hashing=HashSpec(bits=bits, loss=hash_loss) if task == "hashing" else None,  # type: ignore[arg-type]
            epochs=epochs, batch_size=batch_size, seed=inputs.seed, deterministic=deterministic, device=device,
            select=select, source=source, reset_head=reset_head,  # type: ignore[arg-type]
            track_grad_alignment=track_grad_alignment, keep_epochs=keep_epochs, tags=tuple(tag or ()),
            compute=ComputeSpec(precision=precision, channels_last=channels_last, compile=compile_,  # type: ignore[arg-type]
                                workers=workers, gpus=gpus),
        )
        # under torchrun only rank 0 holds the store; the other processes train (training/distributed.py)
        store = open_store(db, artifacts=artifacts) if main_process() else None
        console = SafeConsole(stderr=True)
        run_training(spec, store, console=console, quiet=quiet)
        if inputs.note and not quiet and main_process():
            console.print(inputs.note, highlight=False, markup=False)  # after the run: a failing command stays one line

    command.__doc__ = _HELP[kind]
    return command


def register(app: typer.Typer) -> None:
    for kind in TRAIN_KINDS:  # pipeline order
        app.command(kind)(make_command(kind))  # type: ignore[arg-type]
