"""Training engine: the loop (:class:`Trainer`), checkpoints, schedules, logs, and a run built from its
configuration (build.py: RunConfig, build_trainer); what is trained is recogfast.tasks'."""

from recogfast.engine.checkpoint import atomic_save, load_checkpoint, seed_everything
from recogfast.engine.schedule import WarmupCosine, build_optimizer, build_scheduler
from recogfast.engine.build import RunConfig, build_trainer, run_train
from recogfast.engine.trainer import Diverged, ResumeError, StopTraining, Trainer, TrainerOptions

__all__ = [
    "RunConfig",
    "build_trainer",
    "run_train",
    "Trainer",
    "TrainerOptions",
    "StopTraining",
    "Diverged",
    "ResumeError",
    "atomic_save",
    "load_checkpoint",
    "seed_everything",
    "build_optimizer",
    "build_scheduler",
    "WarmupCosine",
]
