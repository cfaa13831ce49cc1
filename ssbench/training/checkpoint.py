"""Checkpoints: what a trained model is (architecture, rule, task, normalisation) plus its weights.

Files hold only tensors and plain containers, so they load with ``torch.load(weights_only=True)``
(no pickled code runs). Writes are atomic (temp file + rename): a crash never leaves half a file.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from ssbench.errors import CheckpointError
from ssbench.models import Normalized, build_model
from ssbench.rules import convert_from_config, rule_config
from ssbench.specs import TRAIN_KINDS, ModelSpec, TrainSpec, first_error
from ssbench.store.artifacts import verify
from ssbench.store.temporaries import write_atomic

if TYPE_CHECKING:
    from ssbench.store import Store

FORMAT = "ssbench-checkpoint/1"
RESUME_FORMAT = "ssbench-resume/1"
RESUME_FILE = "resume.pt"  # beside last.pt while a run trains; deleted when it finishes
_RULE_KEYS = ("feedback_state", "feedback_step")


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild the network a checkpoint's weights belong to."""

    model: dict[str, Any]
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    task: str
    rule: dict[str, Any] | None
    # what the head's outputs mean; None in checkpoints written before it was recorded
    class_names: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _save_atomic(payload: dict[str, Any], path: Path, what: str = "checkpoint") -> Path:
    # into a file object, not a path: torch then surfaces a refused write (no space) as the OSError
    return write_atomic(path, lambda f: torch.save(payload, f), what)


def save_checkpoint(path: Path, model: nn.Module, meta: ModelMeta, spec: TrainSpec, *, epoch: int, run_id: int | None) -> Path:
    payload = {
        "format": FORMAT,
        "meta": {**meta.as_dict(), "rule": rule_config(model)},
        "train_spec": spec.model_dump(mode="json"),
        "epoch": epoch,
        "run_id": run_id,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return _save_atomic(payload, path)


def rewrite_checkpoint(src: Path, dst: Path, *, run_id: int | None) -> Path:
    """Copy a checkpoint file to `dst` as belonging to `run_id` (a resumed run takes over its
    predecessor's best.pt: same weights and epoch, the new run's id)."""
    return _save_atomic({**read_checkpoint(src), "run_id": run_id}, dst)


# -- resume state: what an interrupted run needs beyond its weights to continue bit for bit -------

def rng_state() -> dict[str, Any]:
    """torch (CPU and initialised CUDA), numpy and python RNG states as tensors and plain
    containers, so the file loads with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_scheduler_state(sched: Any) -> dict[str, Any] | None:
    # MultiStepLR keeps its milestones in a Counter, which weights_only loading refuses
    if sched is None:
        return None
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in sched.state_dict().items()}


def load_scheduler_state(sched: Any, state: dict[str, Any] | None) -> None:
    if sched is None or state is None:
        return
    sched.load_state_dict({k: Counter(v) if isinstance(getattr(sched, k, None), Counter) else v for k, v in state.items()})


@dataclass(frozen=True)
class Resumable:
    """An interrupted run of the same job and the state it left after `epoch` (`save_resume_state`)."""

    run_id: int
    epoch: int
    state: dict[str, Any]


def save_resume_state(
    path: Path, *, run_id: int, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    best_score: float, best_epoch: int, first_loss: float | None, diverged: dict[str, float] | None,
    scaler: dict[str, Any] | None = None,
) -> Path:
    """Everything to continue after `epoch` (weights included, so the file is self-contained and one
    atomic write: no window where it and last.pt disagree). Call it after the epoch's RNG use.
    `scaler`: fp16's gradient scaler state (scale, growth tracker), None in other precisions."""
    return _save_atomic({
        "format": RESUME_FORMAT, "run_id": run_id, "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": _plain_scheduler_state(scheduler),
        "best_score": float(best_score), "best_epoch": int(best_epoch), "first_loss": first_loss,
        "diverged": diverged, "rng": rng_state(), "scaler": scaler,
    }, path, "resume state")


def read_resume_state(path: Path) -> dict[str, Any] | None:
    """The resume state at `path`; None when there is none or it is unreadable (then no resume)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (a torn or foreign file: start over rather than fail)
        return None
    return state if isinstance(state, dict) and state.get("format") == RESUME_FORMAT else None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling failure means: not ours / corrupt)
        raise CheckpointError(f"{path} is not a readable ssbench checkpoint ({type(err).__name__})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ssbench checkpoint (format {FORMAT} expected)")
    _read_meta(payload, str(path))  # every reader may then index meta / train_spec / state_dict
    return payload


def build_network(meta: ModelMeta, spec: TrainSpec) -> nn.Module:
    """The bare architecture of a checkpoint (hash head included), wrapped for [0, 1] inputs."""
    # the weights come from the checkpoint: torchvision's download would need a network, and the
    # run's weights file (model.weights) may be gone or changed since
    arch = ModelSpec(**{**meta.model, "pretrained": False, "weights": None})
    net = build_model(arch, num_classes=meta.num_classes, in_channels=meta.in_channels, image_size=meta.image_size)
    if meta.task == "hashing":
        from ssbench.training.tasks import make_task

        net = make_task(spec, meta.num_classes).prepare_model(net)
    return Normalized(net, meta.mean, meta.std)


def model_from_checkpoint(
    payload: dict[str, Any],
    *,
    with_rule: bool = True,
    expect_model: str | None = None,
    expect_rule: str | None = None,
    expect_task: str | None = None,
    source: str = "checkpoint",
) -> tuple[nn.Module, ModelMeta, TrainSpec]:
    """Rebuild the model a checkpoint was saved from.

    with_rule=False gives the plain (exact-backprop) network with the forward weights only: the
    starting point of a fine-tuning run, which then converts it with its own rule.
    """
    meta, spec = _read_meta(payload, source)
    arch = meta.model["name"]
    if expect_model is not None and expect_model.lower() != arch.lower():
        raise CheckpointError(f"{source} holds a {arch} model, not {expect_model}")
    stored_rule = (meta.rule or {}).get("name", "bp") if meta.rule else "bp"
    if expect_rule is not None and expect_rule != stored_rule:
        raise CheckpointError(f"{source} was trained with rule {stored_rule}, not {expect_rule}")
    if expect_task is not None and expect_task != meta.task:
        raise CheckpointError(f"{source} is a {meta.task} model, not {expect_task}")
    try:
        model = build_network(meta, spec)
    except (ValidationError, TypeError, ValueError, KeyError) as err:  # metadata of the right shape, wrong values
        raise _invalid(source, f"its metadata does not describe a network ({_line(err)})") from None
    state = payload["state_dict"]
    if with_rule and meta.rule:
        convert_from_config(model, meta.rule)  # name, seed, theta and skip patterns
    else:
        state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _RULE_KEYS}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{source} does not fit a {arch} ({first[0] if first else err})") from err
    return model, meta, spec


def _line(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return first_error(err)
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _invalid(source: str, what: str) -> CheckpointError:
    return CheckpointError(f"{source} is not a valid ssbench checkpoint: {what}")


def _read_meta(payload: dict[str, Any], source: str) -> tuple[ModelMeta, TrainSpec]:
    """The metadata and training spec of a payload in our format, or one line saying what is wrong
    (a hand-made or truncated file must not surface as a TypeError deep in model building)."""
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise _invalid(source, "it has no model metadata ('meta')")
    known = {f.name for f in fields(ModelMeta)}
    missing = [f.name for f in fields(ModelMeta) if f.default is MISSING and f.name not in meta]
    if missing:
        raise _invalid(source, f"its metadata lacks {', '.join(missing)}")
    if set(meta) - known:
        raise _invalid(source, f"its metadata has unknown fields {', '.join(sorted(set(meta) - known))}")
    if not isinstance(meta["model"], dict) or not isinstance(meta["model"].get("name"), str):
        raise _invalid(source, "its metadata names no model")
    if not isinstance(payload.get("state_dict"), dict):
        raise _invalid(source, "it holds no weights ('state_dict')")
    if not isinstance(payload.get("train_spec"), dict):
        raise _invalid(source, "it has no training configuration ('train_spec')")
    try:
        spec = TrainSpec.model_validate(payload["train_spec"])
    except ValidationError as err:
        raise _invalid(source, f"its training configuration does not validate ({_line(err)})") from None
    return ModelMeta(**meta), spec


@dataclass
class TrainedModel:
    """A trained run, ready to evaluate or attack: inputs in [0, 1], eval mode, on its device."""

    model: nn.Module
    spec: TrainSpec
    meta: ModelMeta
    run: Any | None  # store Run row, when the model came from the results store
    path: Path
    artifacts: Path | None = None  # the store's artifact root: where the run's other files resolve


def resolve_checkpoint(store: Store | None, ref: int | str, tag: str | None = None) -> tuple[Path, Any | None, str]:
    """(checkpoint path, run row or None, how to name it in errors) for a run id or a file path.

    A run's checkpoint is resolved against the store's artifact root and its sha256 checked against
    the recorded one (ArtifactError when it is missing or another file)."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        if store is None:
            raise CheckpointError("a run id needs a results store")
        run = store.get_run(int(ref))
        if run.kind not in TRAIN_KINDS:
            raise CheckpointError(f"run {run.id} is a {run.kind} run, not a trained model")
        if run.status != "finished":
            raise CheckpointError(f"run {run.id} is {run.status}; only finished runs have a final checkpoint")
        chosen = tag or (run.summary or {}).get("selected", "best")
        row = store.checkpoint(run.id, chosen)
        path = verify(Path(row.path), row.sha256, f"checkpoint {row.path} of run {run.id}")
        return path, run, f"run {run.id}"
    return Path(ref), None, str(ref)


def load_trained(store: Store | None, ref: int | str, device: torch.device | str = "cpu", *, tag: str | None = None) -> TrainedModel:
    """Load a run's exported checkpoint by run id, or a checkpoint file by path."""
    path, run, source = resolve_checkpoint(store, ref, tag)
    payload = read_checkpoint(path)
    if run is None and store is not None and payload.get("run_id") is not None:
        try:
            run = store.get_run(int(payload["run_id"]))
        except Exception:  # noqa: BLE001  (a checkpoint copied from another store is still usable)
            run = None
    model, meta, spec = model_from_checkpoint(payload, source=source)
    model.to(device).eval()
    root = getattr(store, "artifacts", None)
    return TrainedModel(model=model, spec=spec, meta=meta, run=run, path=path, artifacts=root)
