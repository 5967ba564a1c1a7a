"""Calibration: achieved MFU measured on real hardware, by (accelerator, model class).

``kilowatt profile`` measures a model's step time on the machine at hand and records the
achieved fraction of peak here; the planner then uses it instead of the catalog default.
Stored as JSON at ``KILOWATT_HOME/calibration.json``::

    {"schema": 1, "entries": [{"accelerator": "cpu", "model_class": "cnn",
      "mfu": 0.21, "samples": 3, "updated": "2026-01-01T12:00:00+00:00"}]}

Serving records under ``serving_class(model_class)``; the serving planner prefers it. A
serving entry also holds ``prefill_mfu``: the fraction of peak reached while prefilling
prompts, measured apart from decoding, which sets the planner's time to first token::

    {"accelerator": "cpu", "model_class": "transformer-serving", "mfu": 0.012,
     "samples": 2, "prefill_mfu": 0.09, "prefill_samples": 2, "updated": "..."}

Usage (what ``kilowatt profile`` does after measuring 20 GFLOP/s on a 100 GFLOP/s part)::

    record_measurement(None, "cpu", "cnn", achieved_flops=2.0e10, peak_flops=1.0e11)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kilowatt.errors import SpecError
from kilowatt.spec import Settings

__all__ = [
    "Calibration",
    "CalibrationEntry",
    "default_calibration_path",
    "load_calibration",
    "record_measurement",
    "save_calibration",
    "serving_class",
]


class CalibrationEntry(BaseModel):
    """Achieved MFU of one (accelerator, model class), averaged over ``samples`` runs;
    for serving, also the prefill fraction averaged over the ``prefill_samples`` runs that
    measured one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accelerator: str
    model_class: str
    mfu: float = Field(gt=0, le=1)
    samples: int = Field(default=1, gt=0)
    prefill_mfu: float | None = Field(default=None, gt=0, le=1)
    prefill_samples: int = Field(default=0, ge=0)
    updated: dt.datetime


class Calibration(BaseModel):
    """Measured MFU by (accelerator name, model class).

    >>> cal = Calibration().with_measurement("cpu", "cnn", 0.2)
    >>> cal.mfu("cpu", "cnn"), cal.mfu("cpu", "transformer")
    (0.2, None)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(default=1, alias="schema")
    entries: list[CalibrationEntry] = Field(default_factory=list)

    def entry(self, accelerator: str, model_class: str) -> CalibrationEntry | None:
        """The entry for ``accelerator`` and ``model_class``, if one was measured."""
        for item in self.entries:
            if item.accelerator == accelerator and item.model_class == model_class:
                return item
        return None

    def mfu(self, accelerator: str, model_class: str) -> float | None:
        """Measured MFU, or ``None`` when this pair was never measured."""
        found = self.entry(accelerator, model_class)
        return found.mfu if found else None

    def prefill_mfu(self, accelerator: str, model_class: str) -> float | None:
        """Measured prefill fraction of peak, or ``None`` when none was measured."""
        found = self.entry(accelerator, model_class)
        return found.prefill_mfu if found else None

    def with_measurement(
        self,
        accelerator: str,
        model_class: str,
        mfu: float,
        *,
        prefill_mfu: float | None = None,
        now: dt.datetime | None = None,
    ) -> Calibration:
        """A copy with ``mfu`` (and ``prefill_mfu``, if given) folded into the running
        means of this pair."""
        for name, value in (("MFU", mfu), ("prefill MFU", prefill_mfu)):
            if value is not None and not 0 < value <= 1:
                raise SpecError(
                    f"measured {name} must be in (0, 1], got {value!r}; check the peak FLOP/s"
                )
        now = now or dt.datetime.now(dt.UTC)
        old = self.entry(accelerator, model_class)
        base = old or CalibrationEntry(
            accelerator=accelerator, model_class=model_class, mfu=mfu, samples=1, updated=now
        )
        samples = old.samples if old else 0
        update: dict[str, object] = {
            "mfu": _running_mean(base.mfu, samples, mfu),
            "samples": samples + 1,
            "updated": now,
        }
        if prefill_mfu is not None:
            update["prefill_mfu"] = _running_mean(
                base.prefill_mfu or 0.0, base.prefill_samples, prefill_mfu
            )
            update["prefill_samples"] = base.prefill_samples + 1
        rest = [e for e in self.entries if e is not old]
        return Calibration(entries=[*rest, base.model_copy(update=update)])


def _running_mean(mean: float, count: int, value: float) -> float:
    """The mean of ``count`` values that averaged ``mean``, and ``value``."""
    return mean + (value - mean) / (count + 1)


def serving_class(model_class: str) -> str:
    """The calibration key of ``model_class`` when served (``transformer-serving``).

    Serving measures its own fraction of peak (``kilowatt generate serve`` records
    2 x parameters x tokens per busy second over the peak): a decode step is a different
    workload from a training step, so the two are kept apart, and the serving planner reads
    this key first.
    """
    return f"{model_class}-serving"


def default_calibration_path(settings: Settings | None = None) -> Path:
    """``KILOWATT_HOME/calibration.json``."""
    return (settings or Settings.from_env()).home / "calibration.json"


def load_calibration(path: Path | None = None) -> Calibration:
    """Read calibration from ``path`` (default: ``KILOWATT_HOME/calibration.json``).

    A missing file is an empty calibration; a corrupt one is a ``SpecError``.
    """
    path = path or default_calibration_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Calibration()
    try:
        return Calibration.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise SpecError(
            f"{path}: not a valid calibration file ({exc}); delete it to start afresh"
        ) from None


def save_calibration(path: Path | None, calibration: Calibration) -> Path:
    """Write ``calibration`` atomically (temp file, fsync, rename); returns the path."""
    path = path or default_calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = calibration.model_dump_json(by_alias=True, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record_measurement(
    path: Path | None,
    accelerator: str,
    model_class: str,
    *,
    mfu: float | None = None,
    achieved_flops: float | None = None,
    peak_flops: float | None = None,
    prefill_mfu: float | None = None,
) -> Calibration:
    """Fold one measurement into the stored calibration and save it.

    Give ``mfu`` directly, or ``achieved_flops`` (FLOP/s measured) and ``peak_flops``
    (the device's peak, e.g. ``catalog.accelerator("cpu").peak_flops("fp32") * cores``);
    a serving measurement adds ``prefill_mfu`` (prefill FLOP/s over the same peak).
    """
    if mfu is None:
        if not achieved_flops or not peak_flops:
            raise SpecError("record_measurement needs mfu, or achieved_flops and peak_flops")
        mfu = min(achieved_flops / peak_flops, 1.0)
    updated = load_calibration(path).with_measurement(
        accelerator, model_class, mfu, prefill_mfu=prefill_mfu
    )
    save_calibration(path, updated)
    return updated
