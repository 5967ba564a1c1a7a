"""Training: kilowatt's loop over user PyTorch code, with checkpoints, resume and metering.

    >>> from kilowatt.train import Trainer
    >>> trainer = Trainer(model, optimizer, train_data=ds, loss_fn=mse)  # doctest: +SKIP
    >>> result = trainer.fit()  # doctest: +SKIP

The trainer emits events to callbacks and never touches the tracking store; a composer
plugs in a recorder (``kilowatt.backends.recorder``).
"""

from kilowatt.train.callbacks import (
    Callback,
    CallbackRunner,
    CheckpointEvent,
    EvalEvent,
    EventLog,
    FitResult,
    FitStart,
    ProgressCallback,
    StepEvent,
)
from kilowatt.train.checkpoint import (
    CheckpointInfo,
    CheckpointManager,
    CheckpointWarning,
    SaveReport,
)
from kilowatt.train.trainer import EXIT_PREEMPTED, Trainer

__all__ = [
    "EXIT_PREEMPTED",
    "Callback",
    "CallbackRunner",
    "CheckpointEvent",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointWarning",
    "EvalEvent",
    "EventLog",
    "FitResult",
    "FitStart",
    "ProgressCallback",
    "SaveReport",
    "StepEvent",
    "Trainer",
]
