"""Training: optimisers, the epoch loop, checkpoints, and the pretrain / train / finetune job."""
from ssbench.training.checkpoint import ModelMeta, TrainedModel, load_trained, read_checkpoint, save_checkpoint
from ssbench.training.device import resolve_device, seed_everything
from ssbench.training.job import run_training
from ssbench.training.tasks import ClassificationTask, evaluate_classifier, make_task

__all__ = [
    "ModelMeta", "TrainedModel", "load_trained", "read_checkpoint", "save_checkpoint", "resolve_device",
    "seed_everything", "run_training", "ClassificationTask", "evaluate_classifier", "make_task",
]
