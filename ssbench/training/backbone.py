"""What a fine-tune takes from its backbone (the run or checkpoint it starts from) where left unset.

A network takes the images it was trained on: a backbone trained on digits (1x8 px) fine-tuned
without --dataset must not default to Fashion-MNIST (1x28 px), and a fine-tune of seed 3 is the
seed-3 fine-tune. So, where the user gives nothing:

    dataset      the backbone's data set (all its classes unless --classes says which, as for any run)
    image_size   the backbone's setting on its own data set; its input size on another (resized to fit)
    channels     the backbone's setting on its own data set (on another, --channels 3 repeats grey
                 images to RGB for a colour backbone: not done unasked)
    seed         the backbone's seed
    model        the backbone's architecture and hidden widths

A value given wins; an --image-size or --channels the backbone cannot take is refused here, in one
line, before any data loads. Without a backbone (pretrain, train, finetune --weights) the specs'
own defaults apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ssbench.errors import SpecError
from ssbench.specs import DataSpec, ModelSpec, TrainSpec

if TYPE_CHECKING:
    from ssbench.store import Store


@dataclass(frozen=True)
class Backbone:
    """The facts of a trained network a fine-tune inherits."""

    source: str  # how messages name it: "run 26" or the checkpoint path
    model: dict[str, Any]  # its architecture (ModelSpec fields)
    data: DataSpec  # what it was trained on
    in_channels: int  # the input its network takes
    image_size: int
    seed: int


def read_backbone(store: Store | None, ref: str) -> Backbone:
    """The backbone behind a run id or checkpoint path (its checkpoint is checked as a fine-tune's is)."""
    from ssbench.training.checkpoint import read_checkpoint, resolve_checkpoint

    path, _, source = resolve_checkpoint(store, ref)
    payload = read_checkpoint(path)  # validates meta and train_spec, one line when it cannot
    meta, spec = payload["meta"], TrainSpec.model_validate(payload["train_spec"])
    return Backbone(source=source, model=dict(meta["model"]), data=spec.data, in_channels=int(meta["in_channels"]),
                    image_size=int(meta["image_size"]), seed=spec.seed)


@dataclass(frozen=True)
class Inputs:
    """A training job's data set, input shape and seed: as given, else from the backbone, else the specs'
    defaults. `taken` names what came from the backbone (`{"--dataset": "digits", ...}`), to say so."""

    dataset: str
    image_size: int | None
    channels: int | None
    seed: int
    taken: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the backbone, as messages name it

    @property
    def note(self) -> str:
        """`taken from run 1: --dataset digits --seed 3`, or "" when nothing was."""
        if not self.taken:
            return ""
        return f"taken from {self.source}: " + " ".join(f"{k} {v}" for k, v in self.taken.items())


def _check_input(backbone: Backbone, image_size: int | None, channels: int | None) -> None:
    takes = f"{backbone.source} takes {backbone.in_channels}x{backbone.image_size}px images"
    if image_size is not None and image_size != backbone.image_size:
        raise SpecError(f"--image-size {image_size}: {takes}; leave --image-size unset "
                        "(a fine-tune takes its backbone's input, resizing another data set to it)")
    if channels is not None and channels != backbone.in_channels:
        raise SpecError(f"--channels {channels}: {takes}; give --channels {backbone.in_channels} or leave it unset")


def resolve_inputs(backbone: Backbone | None, *, dataset: str | None, image_size: int | None,
                   channels: int | None, seed: int | None) -> Inputs:
    """Fill the unset (None) values as the module docstring says."""
    if backbone is None:
        return Inputs(dataset=dataset if dataset is not None else DataSpec.model_fields["name"].default,
                      image_size=image_size, channels=channels,
                      seed=seed if seed is not None else TrainSpec.model_fields["seed"].default)
    _check_input(backbone, image_size, channels)
    src = backbone.data
    taken: dict[str, str] = {}
    if dataset is None:
        dataset = taken["--dataset"] = src.name
    same_data = dataset.lower() == src.name.lower()
    if image_size is None:
        image_size = src.image_size if same_data else backbone.image_size
        if image_size is not None:
            taken["--image-size"] = str(image_size)
    if channels is None and same_data:
        channels = src.channels
        if channels is not None:
            taken["--channels"] = str(channels)
    if seed is None:
        seed = backbone.seed
        taken["--seed"] = str(seed)
    return Inputs(dataset=dataset, image_size=image_size, channels=channels, seed=seed, taken=taken,
                  source=backbone.source)


def resolve_model(backbone: Backbone | None, name: str | None, hidden: tuple[int, ...] | None) -> ModelSpec:
    """The model as given; a fine-tune without --model takes its backbone's architecture (and widths,
    unless --hidden is given); else ModelSpec's default."""
    if name is not None:
        return ModelSpec(name=name, hidden=hidden)
    if backbone is not None:
        widths = hidden if hidden is not None else backbone.model.get("hidden")
        return ModelSpec(name=backbone.model["name"], hidden=widths)
    return ModelSpec(hidden=hidden)
