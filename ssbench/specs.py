"""Typed, validated configuration: recipe -> spec -> job.

Every job (pretrain, finetune, attack, analysis) is described by one pydantic object; the CLI and
recipes build these objects and nothing else. Unknown keys are errors (``extra="forbid"``) so a typo
in a recipe fails loudly instead of silently using a default.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

RULE_NAMES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "ifa")
RuleName = Literal["bp", "fa", "dfa", "usf", "frsf", "brsf", "ifa"]
GradientMode = Literal["feedback", "exact", "transfer"]
GRADIENT_MODES: tuple[GradientMode, ...] = ("feedback", "exact", "transfer")


TrainKind = Literal["pretrain", "finetune", "train"]
TRAIN_KINDS: tuple[str, ...] = get_args(TrainKind)  # the runs that produce a trained model
# every kind of run the store holds: the training kinds, then the jobs that read a trained model
RUN_KINDS: tuple[str, ...] = (*TRAIN_KINDS, "attack", "analysis")
RUN_STATUSES: tuple[str, ...] = ("running", "finished", "failed")


class Spec(BaseModel):
    """Base of every spec. `LATE_FIELDS` names fields added after runs were stored: they are left out
    of dumps while they hold their default, so the stored configs and config hashes of runs made
    before a field existed stay what they were (a missing field reads back as its default)."""

    # allow_inf_nan=False: an infinite or NaN float (--eps inf, --lr nan) is refused where it is read,
    # not found later as a crash or a meaningless run
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    LATE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``, validated like any spec (``model_copy(update=...)`` is not: it
        would let an override such as cpus=-1 or epochs=0 through unchecked)."""
        return type(self).model_validate({**dict(self), **changes})

    @model_serializer(mode="wrap")
    def _omit_late_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.LATE_FIELDS:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name)
        return data


class DataSpec(Spec):
    """Which data set, which classes, and how train is split into train/val."""

    name: str = "fashion-mnist"
    data_dir: Path | None = None
    classes: tuple[int, ...] | None = Field(
        default=None, description="class subset; labels are remapped to 0..k-1 in the given order"
    )
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    split_seed: int = Field(default=0, ge=0)
    train_limit: int | None = Field(default=None, ge=1, description="subsample train (after the split)")
    test_limit: int | None = Field(default=None, ge=1, description="subsample test, stratified, fixed seed")
    image_size: int | None = Field(default=None, ge=8, description="resize images (e.g. 224 for ImageNet backbones)")
    channels: int | None = Field(default=None, description="force 1 or 3 channels (grey -> RGB for torchvision models)")
    augment: bool = False
    download: bool = True

    @field_validator("classes")
    @classmethod
    def _two_distinct_classes(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        # here, not at load time: a recipe or a CLI call is refused before any run row exists.
        # One class trains a classifier that cannot be wrong and hash codes with nothing to rank.
        if v is None:
            return v
        if len(set(v)) != len(v):
            raise ValueError(f"{list(v)} repeats a class; list each class once")
        if len(v) < 2:
            raise ValueError(f"{list(v)} is {'one class' if v else 'empty'}; a subset needs at least two "
                             "classes (e.g. 0-4), or leave it unset for all")
        if min(v) < 0:
            raise ValueError(f"{list(v)}: class ids are 0 or more")
        return v


class ModelSpec(Spec):
    LATE_FIELDS = ("weights",)

    name: str = "lenet"
    pretrained: bool = Field(default=False, description="torchvision ImageNet weights (needs a network)")
    weights: Path | None = Field(default=None, description="a torchvision state_dict file (weights_only) to start "
                                 "from instead of downloading: pretrained weights without a network")
    hidden: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(default=None, min_length=1, description="hidden widths for the mlp model")


class RuleSpec(Spec):
    LATE_FIELDS = ("init", "weight_var", "feedback_var")

    name: RuleName = "bp"
    theta: float | None = Field(default=None, ge=0.0, le=180.0, description="ifa: initial angle(W, B) in degrees")
    seed: int | None = Field(default=None, ge=0, description="seed of the feedback weights; default: the run seed")
    skip: tuple[str, ...] = Field(default=(), description="module names (fnmatch patterns) kept exact")
    init: Literal["default", "xavier", "gaussian"] = Field(
        default="default",
        description="xavier: BioTorch's initialisation: W re-initialised Xavier-uniform (training from "
        "scratch only) and B drawn Xavier-uniform; gaussian: W ~ N(0, weight_var / fan_in) (from scratch "
        "only) and B ~ N(0, feedback_var / fan_in); default: B scaled to the converted W",
    )
    weight_var: float | None = Field(default=None, gt=0, description="init gaussian: W ~ N(0, weight_var / fan_in) "
                                     "(1 = LeCun, 2 = He)")
    feedback_var: float | None = Field(default=None, gt=0, description="init gaussian: the random feedback ~ "
                                       "N(0, feedback_var / fan_in); default: weight_var (not bp, ifa)")

    @model_validator(mode="after")
    def _theta_only_for_ifa(self) -> RuleSpec:
        if self.theta is not None and self.name != "ifa":
            raise ValueError(f"theta is an ifa option, not one of rule {self.name!r}")
        # filled in here, so a map cell given both variances and one given weight_var alone hash the same
        object.__setattr__(self, "feedback_var", gaussian_feedback_var(self.name, self.init, self.weight_var, self.feedback_var))
        return self



NO_RANDOM_FEEDBACK = ("bp", "ifa")  # B = W, and ifa's B: ||W_0|| at angle theta to W_0, whatever the init


def gaussian_feedback_var(rule: str, init: str, weight_var: float | None, feedback_var: float | None) -> float | None:
    """The feedback variance a rule with init gaussian draws from (default: weight_var; None for bp
    and ifa, whose B follows W). Raises ValueError where the variances do not fit the init."""
    if init != "gaussian":
        if weight_var is not None or feedback_var is not None:
            raise ValueError(f"weight_var and feedback_var are init gaussian options, not of init {init!r}")
        return None
    if weight_var is None:
        raise ValueError("init gaussian needs weight_var (> 0; 1 = LeCun, 2 = He)")
    if rule in NO_RANDOM_FEEDBACK:
        if feedback_var is not None:
            raise ValueError(f"feedback_var: rule {rule!r} has no random feedback to draw (its B follows W)")
        return None
    return weight_var if feedback_var is None else feedback_var


class OptimSpec(Spec):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    head_lr: float | None = Field(default=None, gt=0, description="learning rate of the classifier head")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["none", "cosine", "step", "multistep"] = "none"
    step_size: int = Field(default=30, ge=1, description="step: epochs between lr decays")
    milestones: tuple[int, ...] = Field(default=(), description="multistep: epochs at which the lr decays")
    gamma: float = Field(default=0.1, gt=0, description="step / multistep: lr factor at each decay")

    @model_validator(mode="after")
    def _check(self) -> OptimSpec:
        # options that would otherwise be silently ignored are errors
        if self.scheduler == "multistep" and not self.milestones:
            raise ValueError("scheduler multistep needs milestones (epochs, e.g. 30,60)")
        if self.milestones and self.scheduler != "multistep":
            raise ValueError(f"milestones are a multistep option, not one of scheduler {self.scheduler!r}")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones {list(self.milestones)} must be increasing epochs >= 1")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer sgd with momentum > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {list(self.betas)} must lie in [0, 1)")
        return self


Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class ComputeSpec(Spec):
    """How a training job uses the hardware. Precision, memory format and compilation change the
    numbers by rounding only; workers and processes change none of them (the same batches in the
    same order), but all are part of the job's configuration so a run says how it was made."""

    precision: Precision = Field(default="fp32", description="fp32, or autocast to bf16 / fp16 (fp16 with a "
                                 "gradient scaler); weights and optimiser state stay fp32")
    channels_last: bool = Field(default=False, description="NHWC memory format for conv networks (faster on "
                                "tensor cores)")
    compile: bool = Field(default=False, description="torch.compile the converted model; falls back to eager "
                          "with a one-line warning where it cannot")
    workers: int | None = Field(default=None, ge=0, description="data-loading processes for folder data sets; "
                                "default: from the core count")
    gpus: int = Field(default=1, ge=1, description="data-parallel processes, one per GPU (gloo processes on a "
                      "CPU); the global batch is split between them")


class HashSpec(Spec):
    bits: int = Field(default=32, ge=4, le=1024)
    loss: Literal["csq", "dpsh"] = "csq"
    quantization_weight: float = Field(default=1e-4, ge=0)


class TrainOptions(Spec):
    """How a model is trained: the options a recipe's training stage sets (`TrainStage`) and each of
    its jobs carries (`TrainSpec`). Declared once, here; the planner hands every field of this group
    from stage to spec, so a new training option is one field added here."""

    task: Literal["classification", "hashing"] = "classification"
    optim: OptimSpec = OptimSpec()
    hashing: HashSpec | None = None
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=128, ge=1)
    deterministic: bool = False
    select: Literal["best", "last"] = Field(default="best", description="which checkpoint the run exports (val accuracy)")
    track_grad_alignment: bool = False
    keep_epochs: int = Field(default=0, ge=0, description="keep a checkpoint every N epochs, and the initial "
                             "weights, for analyses over training (ssbench analyze trajectory); 0 = none")
    compute: ComputeSpec = ComputeSpec()


class TrainSpec(TrainOptions):
    """A training job: `pretrain` (BP backbone), `finetune` (rule, from a source), `train` (rule, from
    scratch): its `TrainOptions` and what names this one job."""

    LATE_FIELDS = ("keep_epochs", "compute")

    kind: TrainKind = "pretrain"
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    rule: RuleSpec = RuleSpec()
    eval_batch_size: int = Field(default=512, ge=1)
    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    source: str | None = Field(default=None, description="finetune: checkpoint path or run id to start from")
    reset_head: bool | None = Field(default=None, description="new head; default: when the classes differ from the source's (other data set or class list)")
    track_alignment: bool = True
    recipe: str | None = None
    tags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if self.kind == "pretrain" and self.rule.name != "bp":
            raise ValueError("pretrain is backprop; train a rule from scratch with kind 'train'")
        if self.kind == "finetune" and not self.source and not (self.model.pretrained or self.model.weights):
            raise ValueError("finetune needs a source (checkpoint path or run id), model.pretrained=true or model.weights")
        if self.compute.gpus > 1 and self.batch_size % self.compute.gpus:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly between {self.compute.gpus} processes")
        if self.source and self.model.weights is not None:
            raise ValueError("source and model.weights both name the starting weights; give one")
        if self.kind != "finetune" and self.source:
            raise ValueError(f"source is a finetune option, not one of {self.kind!r}")
        if self.task == "hashing" and self.hashing is None:
            object.__setattr__(self, "hashing", HashSpec())
        return self


EpsPreset = Literal["paper", "wide", "cifar", "hashing"]


class AttackOptions(Spec):
    """How a model is attacked: the options a recipe's attack stage sets (`AttackStage`) and each of
    its jobs carries (`AttackSpec`). Declared once, here, like `TrainOptions`."""

    suite: Literal["whitebox", "blackbox", "hashing", "autoattack", "all"] = "whitebox"
    attacks: tuple[str, ...] | None = Field(default=None, description="subset of the suite's attacks")
    modes: tuple[GradientMode, ...] | None = Field(
        default=None, description="gradient modes; unset: the suite's (exact for autoattack, else feedback and exact)")
    eps: tuple[float, ...] | EpsPreset | None = Field(
        default=None, description="budgets, a list or a preset; unset: the suite's (hashing for hashing, else paper)")
    n_examples: int = Field(default=500, ge=1)
    batch_size: int = Field(default=256, ge=1)
    steps: int | None = Field(default=None, ge=1, description="iterations of iterative attacks (default per attack)")
    transfer_optional: bool = Field(
        default=False, description="skip transfer (with a note) when no BP sibling exists instead of failing (--mode all)"
    )
    loss: Literal["ce", "margin"] = Field(
        default="ce", description="loss of fgsm/pgd: ce (the papers') or margin (CW, does not saturate)"
    )
    precision: Literal["fp32", "train"] = Field(
        default="fp32", description="fp32: gradients of the attack in full precision (a low-precision gradient "
        "can vanish or round to a weaker attack); train: autocast as the target was trained")

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("modes repeat")
        return v

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_fractions(cls, v: object) -> object:
        return coerce_eps(v)


class AttackSpec(AttackOptions):
    """An attack job against one trained run: its `AttackOptions` and what names this one job."""

    LATE_FIELDS = ("precision",)

    # never None on a spec: `_suite_defaults` fills an unset one in with the suite's
    modes: tuple[GradientMode, ...] = ("feedback", "exact")
    eps: tuple[float, ...] | EpsPreset = "paper"
    target: str = Field(description="run id (or checkpoint path) of the model to attack")
    surrogate: str | None = Field(default=None, description="transfer mode: run id of the BP surrogate")
    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    recipe: str | None = None
    tags: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _suite_defaults(cls, data: Any) -> Any:
        # the suite decides what an unnamed grid and unnamed modes mean, wherever the spec is built
        # (CLI, recipe, Python): hashing sweeps the hashing grid, autoattack runs in exact mode
        if isinstance(data, dict):
            suite = data.get("suite", "whitebox")
            if data.get("modes") is None:
                data = {**data, "modes": ("exact",) if suite == "autoattack" else ("feedback", "exact")}
            if data.get("eps") is None:
                data = {**data, "eps": "hashing" if suite == "hashing" else "paper"}
        return data


def first_error(err: ValidationError) -> str:
    """`where.in.the.file: message` of a validation error's first complaint (recipes, checkpoints);
    the message alone when a whole-object validator raised it (no location)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def parse_eps_value(v: object) -> float:
    """One budget: a number, or a fraction 'a/b' ('8/255'); >= 0. Raises ValueError."""
    if isinstance(v, str):
        num, sep, den = v.strip().partition("/")
        try:
            value = float(num) / float(den) if sep else float(num)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"epsilon {v!r} is not a number or a fraction like 8/255") from None
    else:
        value = float(v)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise ValueError(f"epsilon {v!r} is not a finite number")
    if value < 0:
        raise ValueError(f"epsilon {v!r} is negative")
    return value


def coerce_eps(v: object) -> object:
    """Validator body for eps fields: '8/255' and '0,2/255,4/255' (CLI, YAML) become floats;
    presets pass through; anything else is left for the field's type to judge."""
    if isinstance(v, str):
        return parse_eps(v)
    if isinstance(v, (list, tuple)):
        return tuple(parse_eps_value(e) for e in v)
    return v


def parse_eps(text: str) -> tuple[float, ...] | str:
    """A preset name (paper, wide, cifar, hashing) or a list like '0,2/255,4/255,0.05'."""
    if text.strip() in ("paper", "wide", "cifar", "hashing"):
        return text.strip()
    values = tuple(parse_eps_value(t) for t in text.split(",") if t.strip())
    if not values:
        raise ValueError(f"epsilon {text!r}: use paper, wide, cifar or a list like 0,2/255,8/255")
    return values


def resolve_eps(eps: tuple[float, ...] | str) -> tuple[float, ...]:
    """Named epsilon grids (pixel space, inputs in [0, 1])."""
    if not isinstance(eps, str):
        return tuple(sorted(set(float(e) for e in eps)))
    presets = {
        "paper": tuple(round(0.01 * i, 2) for i in range(11)),  # BioTorch: 0..0.1 step 0.01
        "wide": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
        "cifar": tuple(e / 255 for e in (0, 1, 2, 4, 8, 16)),
        "hashing": (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1),
    }
    return presets[eps]
