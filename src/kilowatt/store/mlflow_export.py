"""Export a kilowatt run to an MLflow tracking server (any MLflow tracking URI).

Params, tags, environment, every metric point, usage figures and artifacts are copied;
the MLflow run carries the tag ``kilowatt.run_id`` pointing back. MLflow is imported only
when exporting.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from kilowatt.errors import StoreError
from kilowatt.store.store import Store

__all__ = ["export_run_to_mlflow"]

_STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics per call
_PARAM_BATCH = 100  # ... and at most 100 params


def export_run_to_mlflow(
    store: Store, run_id: str, tracking_uri: str, experiment: str | None = None
) -> str:
    """Copy run ``run_id`` to MLflow at ``tracking_uri``; return the MLflow run id.

    Args:
        store: the kilowatt store holding the run.
        run_id: the kilowatt run (id or unique prefix).
        tracking_uri: e.g. ``http://mlflow:5000`` or ``sqlite:///mlflow.db``.
        experiment: the MLflow experiment; default the run's project.
    """
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError:
        raise StoreError("MLflow is not installed; pip install mlflow to export runs") from None
    run = store.get_run(run_id)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment or run.project)
    tags = {**run.tags, "kilowatt.run_id": run.id, "kilowatt.user": run.user}
    tags |= {f"kilowatt.env.{k}": str(v) for k, v in run.environment.items() if v not in (None, [])}
    created = client.create_run(
        experiment_id, start_time=int(run.start_time * 1000), tags=tags, run_name=run.name
    )
    mlflow_id = created.info.run_id
    params = [Param(key, value) for key, value in run.params.items()]
    for start in range(0, len(params), _PARAM_BATCH):
        client.log_batch(mlflow_id, params=params[start : start + _PARAM_BATCH])
    metrics = list(_metrics(store, run.id, Metric)) + _usage(run, Metric)
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(mlflow_id, metrics=metrics[start : start + _BATCH])
    _copy_artifacts(store, run.id, client, mlflow_id)
    end_ms = int(run.end_time * 1000) if run.end_time else None
    client.set_terminated(mlflow_id, status=_STATUS[run.status], end_time=end_ms)
    return str(mlflow_id)


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id if found else client.create_experiment(name))


def _metrics(store: Store, run_id: str, metric_cls: Any) -> Any:
    for key in store.metric_keys(run_id):
        history = store.metric_history(run_id, key)
        for step, value, when in zip(
            history.step.tolist(), history.value.tolist(), history.time.tolist(), strict=True
        ):
            yield metric_cls(key, value, int(when * 1000), step)


def _usage(run: Any, metric_cls: Any) -> list[Any]:
    figures = {
        "kilowatt.time_s": run.time_s,
        "kilowatt.energy_j": run.energy_j,
        "kilowatt.cost_usd": run.cost_usd,
        "kilowatt.carbon_gco2e": run.carbon_gco2e,
    }
    stamp = int((run.end_time or run.start_time) * 1000)
    return [
        metric_cls(key, value, stamp, 0)
        for key, value in figures.items()
        if value is not None and math.isfinite(value)
    ]


def _copy_artifacts(store: Store, run_id: str, client: Any, mlflow_id: str) -> None:
    artifacts = store.list_artifacts(run_id)
    if not artifacts:
        return
    with tempfile.TemporaryDirectory(prefix="kw-export-") as folder:
        for artifact in artifacts:
            local = store.download_artifact(run_id, artifact.name, Path(folder) / artifact.name)
            parent = str(Path(artifact.name).parent)
            client.log_artifact(mlflow_id, str(local), None if parent == "." else parent)
