"""Kubernetes manifests for a kilowatt workload (``kilowatt export k8s SPEC.yaml``).

Training becomes a ``ConfigMap`` (the spec) and a ``batch/v1 Job`` that runs ``kilowatt
train`` with accelerator requests (``nvidia.com/gpu``), retries (``backoffLimit``) and the
runtime limit (``activeDeadlineSeconds``). Serving becomes a ``ConfigMap``, an ``apps/v1
Deployment`` with readiness and liveness probes on the Open Inference Protocol health
routes, a ``Service`` and an ``autoscaling/v2 HorizontalPodAutoscaler``.

Store and artifact URLs come from an optional Secret named ``kilowatt``
(``KILOWATT_STORE_URL``, ``KILOWATT_ARTIFACTS_URL``); on Kubernetes they should point at
PostgreSQL and an object store, and a training spec's ``checkpoint.url`` at an object
store, so a retried pod resumes from the last checkpoint.

    >>> docs = manifests_for(read_job_file("train.yaml"), image="kilowatt:0.1")  # doctest: +SKIP
    >>> print(to_yaml(docs))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from kilowatt.backends.job import JobRequest
from kilowatt.errors import SpecError

__all__ = ["GPU_RESOURCE", "SPEC_MOUNT", "manifests_for", "to_yaml"]

#: The extended resource NVIDIA's device plugin advertises.
GPU_RESOURCE = "nvidia.com/gpu"
#: Where the spec is mounted in the container.
SPEC_MOUNT = "/etc/kilowatt"
_SECRET = "kilowatt"
_SERVE_PORT = 8080
_CPU_TARGET_PERCENT = 70


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """The manifests as one multi-document YAML stream (for ``kubectl apply -f -``)."""
    return yaml.safe_dump_all(manifests, sort_keys=False)


def manifests_for(
    job: JobRequest,
    *,
    image: str,
    namespace: str | None = None,
    spec_file: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Manifests that run ``job`` on Kubernetes.

    Args:
        job: a train or serve job (``read_job_file``).
        image: a container image with kilowatt and the user's code installed.
        namespace: set on every object (default: none, i.e. kubectl's current one).
        spec_file: the spec's file name, recorded in an annotation.

    Raises:
        SpecError: a command job (export the command's own image instead).
    """
    name = _dns_name(job.name)
    if job.kind == "train":
        spec = dict(job.spec)
        objects = [_config_map(name, spec), _training_job(name, spec, image)]
    elif job.kind == "serve":
        spec = {**job.spec, "host": "0.0.0.0", "port": job.spec.get("port") or _SERVE_PORT}
        objects = [
            _config_map(name, spec),
            _deployment(name, spec, image),
            _service(name, int(spec["port"])),
            _autoscaler(name, spec),
        ]
    else:
        raise SpecError(
            f"job {job.name!r} is a command job; export k8s takes a train or serve spec"
        )
    for manifest in objects:
        metadata = manifest["metadata"]
        if namespace:
            metadata["namespace"] = namespace
        if spec_file is not None:
            metadata.setdefault("annotations", {})["kilowatt/spec-file"] = str(spec_file)
    return objects


def _dns_name(name: str) -> str:
    """A DNS-1123 label from a kilowatt name (lower case, '-' for other characters)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].rstrip("-")
    if not label:
        raise SpecError(f"name {name!r} has no letters or digits to name Kubernetes objects")
    return label


def _labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "kilowatt",
    }


def _config_map(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec", "labels": _labels(name, "spec")},
        "data": {"spec.yaml": yaml.safe_dump(spec, sort_keys=False)},
    }


def _container(
    name: str, image: str, command: list[str], resources: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": command,
        "envFrom": [{"secretRef": {"name": _SECRET, "optional": True}}],
        "env": [{"name": "KILOWATT_HOME", "value": "/var/lib/kilowatt"}],
        "resources": resources,
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "home", "mountPath": "/var/lib/kilowatt"},
        ],
    }


def _volumes(name: str) -> list[dict[str, Any]]:
    return [
        {"name": "spec", "configMap": {"name": f"{name}-spec"}},
        {"name": "home", "emptyDir": {}},
    ]


def _resources(cpus: float, gpus: int) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": _cpu_quantity(cpus)}
    limits: dict[str, Any] = {}
    if gpus:
        # Extended resources must be requested and limited alike; they cannot overcommit.
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def _cpu_quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"


def _training_job(name: str, spec: dict[str, Any], image: str) -> dict[str, Any]:
    backend = spec.get("backend") or {}
    workers = int(spec.get("workers", 1))
    gpus = int(backend.get("accelerators") or 0)
    if not gpus and spec.get("device") == "cuda":
        gpus = workers  # one device per data-parallel worker
    cpus = float(backend.get("cpu_threads") or workers)
    command = ["kilowatt", "train", f"{SPEC_MOUNT}/spec.yaml", "--resume", "auto", "--no-progress"]
    job_spec: dict[str, Any] = {
        # the first run plus max_attempts - 1 retries, each resuming from its checkpoint
        "backoffLimit": int(backend.get("max_attempts", 1)) - 1,
        "template": {
            "metadata": {"labels": _labels(name, "train")},
            "spec": {
                "restartPolicy": "Never",
                "containers": [_container("train", image, command, _resources(cpus, gpus))],
                "volumes": _volumes(name),
            },
        },
    }
    if backend.get("max_runtime_s"):
        job_spec["activeDeadlineSeconds"] = math.ceil(float(backend["max_runtime_s"]))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": _labels(name, "train")},
        "spec": job_spec,
    }


def _deployment(name: str, spec: dict[str, Any], image: str) -> dict[str, Any]:
    ray = (spec.get("backend") or {}).get("ray") or {}
    port = int(spec["port"])
    cpus, gpus = float(ray.get("cpus_per_worker", 1.0)), math.ceil(ray.get("gpus_per_worker", 0))
    command = ["kilowatt", "serve", "--spec", f"{SPEC_MOUNT}/spec.yaml"]
    container = _container("serve", image, command, _resources(cpus, gpus))
    container["ports"] = [{"name": "http", "containerPort": port}]
    container["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    container["livenessProbe"] = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "initialDelaySeconds": 10,
    }
    selector = _labels(name, "serve")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": selector},
        "spec": {
            "replicas": max(1, int(ray.get("min_replicas", 1))),
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "containers": [container],
                    "volumes": _volumes(name),
                    # in-flight requests drain on SIGTERM; give them the spec's drain time
                    "terminationGracePeriodSeconds": math.ceil(
                        float(spec.get("drain_timeout_s", 30.0)) + 5
                    ),
                },
            },
        },
    }


def _service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(name, "serve")},
        "spec": {
            "selector": _labels(name, "serve"),
            "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _autoscaler(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    ray = (spec.get("backend") or {}).get("ray") or {}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": _labels(name, "serve")},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": max(1, int(ray.get("min_replicas", 1))),
            "maxReplicas": int(ray.get("max_replicas", 1)),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": _CPU_TARGET_PERCENT,
                        },
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": math.ceil(
                        float(ray.get("downscale_delay_s", 10.0))
                    )
                }
            },
        },
    }
