"""The job request every backend accepts, and the file that carries it to a job's process.

A job spec file (``kilowatt submit train.yaml``) becomes a ``JobRequest``; the local worker
writes it, with the job's run id and prices, as ``JOB.json`` for
``python -m kilowatt.backends.child``, and a Ray job carries the same document in the
``KILOWATT_JOB`` environment variable.

    >>> job = JobRequest("command", {"name": "c", "command": ["true"]}, "/tmp")
    >>> decode_job(encode_job(job, run_id="r1", prices=None))[0] == job
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kilowatt.errors import SpecError
from kilowatt.spec import ServeSpec, TrainSpec, load_spec, read_yaml
from kilowatt.spec.backend import BackendSpec, CommandJobSpec

__all__ = [
    "JOB_ENV",
    "JobKind",
    "JobRequest",
    "decode_job",
    "encode_job",
    "read_job_file",
    "write_job_file",
]

#: The environment variable that carries the job document into a Ray job.
JOB_ENV = "KILOWATT_JOB"

JobKind = Literal["train", "serve", "command"]

_SPEC_MODELS: dict[str, type[TrainSpec | ServeSpec | CommandJobSpec]] = {
    "train": TrainSpec,
    "serve": ServeSpec,
    "command": CommandJobSpec,
}


@dataclass(frozen=True)
class JobRequest:
    """A workload to queue or send to a cluster, as plain values (it is stored and shipped).

    Attributes:
        kind: ``train`` (a TrainSpec), ``serve`` (a ServeSpec) or ``command`` (a
            CommandJobSpec).
        spec: the validated spec as JSON-ready values.
        workdir: the folder the user's entry points are imported from.
    """

    kind: JobKind
    spec: dict[str, Any]
    workdir: str = field(default_factory=os.getcwd)

    @property
    def name(self) -> str:
        """The job's name (a serve spec is named after its first model)."""
        if self.kind == "serve":
            return str(self.spec["models"][0]["name"])
        return str(self.spec["name"])

    @property
    def backend(self) -> BackendSpec:
        """The spec's ``backend`` section."""
        return BackendSpec.model_validate(self.spec.get("backend") or {})

    def typed_spec(self) -> TrainSpec | ServeSpec | CommandJobSpec:
        """The spec as its pydantic model."""
        return _SPEC_MODELS[self.kind].model_validate(self.spec)

    def to_dict(self) -> dict[str, Any]:
        """What the job queue stores."""
        return {"kind": self.kind, "spec": self.spec, "workdir": self.workdir}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JobRequest:
        """The inverse of ``to_dict``."""
        return cls(values["kind"], dict(values["spec"]), str(values["workdir"]))


def read_job_file(path: str | Path, workdir: str | None = None) -> JobRequest:
    """Read a spec file and tell its kind: ``command:`` -> command job, ``models:`` ->
    serving, otherwise training.

    Raises:
        SpecError: the file is not valid YAML or not a valid spec of its kind.
    """
    document = read_yaml(Path(path))
    if not isinstance(document, dict):
        raise SpecError(f"{path}: a job spec is a mapping; got {type(document).__name__}")
    kind: JobKind = (
        "command" if "command" in document else "serve" if "models" in document else "train"
    )
    spec = load_spec(_SPEC_MODELS[kind], Path(path))
    return JobRequest(kind, spec.model_dump(mode="json"), workdir or os.getcwd())


def encode_job(job: JobRequest, run_id: str | None, prices: Mapping[str, Any] | None) -> str:
    """The job document: the request, the run its events go to, the accountant's prices."""
    prices = dict(prices) if prices is not None else None
    return json.dumps({"job": job.to_dict(), "run_id": run_id, "prices": prices}, indent=2)


def decode_job(text: str) -> tuple[JobRequest, str | None, dict[str, Any] | None]:
    """The inverse of ``encode_job``: ``(job, run_id, prices)``."""
    document = json.loads(text)
    return JobRequest.from_dict(document["job"]), document.get("run_id"), document.get("prices")


def write_job_file(
    path: Path, job: JobRequest, run_id: str | None, prices: Mapping[str, Any] | None
) -> Path:
    """Write the job document for ``python -m kilowatt.backends.child PATH``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(encode_job(job, run_id, prices))
    return path
