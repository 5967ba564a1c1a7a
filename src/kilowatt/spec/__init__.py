"""Workload specs and settings (pydantic v2): validated at the boundary, passed down frozen."""

from kilowatt.spec.base import Spec, format_validation_error, load_spec, read_yaml
from kilowatt.spec.plan import (
    Parallelism,
    PlanConstraints,
    PlanModel,
    PlanSpec,
    ServingWorkload,
    TrainingWorkload,
)
from kilowatt.spec.serve import BatchingSpec, ModelSpec, ServeSLO, ServeSpec
from kilowatt.spec.settings import Settings
from kilowatt.spec.train import (
    CheckpointSpec,
    EarlyStopSpec,
    KeepBestSpec,
    TrainOptions,
    TrainSpec,
)

__all__ = [
    "BatchingSpec",
    "CheckpointSpec",
    "EarlyStopSpec",
    "KeepBestSpec",
    "ModelSpec",
    "Parallelism",
    "PlanConstraints",
    "PlanModel",
    "PlanSpec",
    "ServeSLO",
    "ServeSpec",
    "ServingWorkload",
    "Settings",
    "Spec",
    "TrainOptions",
    "TrainSpec",
    "TrainingWorkload",
    "format_validation_error",
    "load_spec",
    "read_yaml",
]
