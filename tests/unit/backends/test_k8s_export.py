"""``kilowatt export k8s``: manifests checked against the Kubernetes API models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kilowatt.backends import JobRequest, read_job_file
from kilowatt.backends.k8s import manifests_for
from kilowatt.cli.main import main
from kilowatt.errors import SpecError

_MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("batch/v1", "Job"): "V1Job",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}

TRAIN_YAML = """\
name: Tiny_Regression.v2
model: examples.train.tiny:make_model
dataset: examples.train.tiny:make_dataset
loss: examples.train.tiny:loss_fn
workers: 2
device: cuda
backend: {max_attempts: 3, max_runtime_s: 3600.5, cpu_threads: 8}
"""
SERVE_YAML = """\
models: [{name: mlp, source: /models/mlp.pt}]
port: 0
drain_timeout_s: 20
backend: {kind: ray, ray: {min_replicas: 2, max_replicas: 5, cpus_per_worker: 0.5,
          gpus_per_worker: 1, downscale_delay_s: 30}}
"""


def _validated(manifest: dict[str, Any]) -> Any:
    """Deserialise with the Kubernetes client (which checks required fields) and check that
    serialising back gives the same document, so no field was unknown and dropped."""
    api = client.ApiClient()
    model = api._ApiClient__deserialize(manifest, _MODELS[manifest["apiVersion"], manifest["kind"]])
    assert api.sanitize_for_serialization(model) == manifest
    return model


def _export(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[Any]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    argv = ["export", "k8s", str(spec), "--image", "reg.example/kw:1", "--namespace", "ml"]
    assert main(argv) == 0
    return [_validated(doc) for doc in yaml.safe_load_all(capsys.readouterr().out)]


def test_training_exports_a_job_with_gpu_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, job = _export(tmp_path, TRAIN_YAML, capsys)
    assert isinstance(job, client.V1Job)
    assert job.metadata.name == "tiny-regression-v2"  # a DNS label from the spec's name
    assert job.metadata.namespace == "ml"
    assert job.spec.backoff_limit == 2  # three attempts
    assert job.spec.active_deadline_seconds == 3601
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never"
    container = pod.containers[0]
    assert container.image == "reg.example/kw:1"
    assert container.command == [
        "kilowatt", "train", "/etc/kilowatt/spec.yaml", "--resume", "auto", "--no-progress"
    ]  # fmt: skip
    # two CUDA workers: two GPUs, requested and limited alike
    assert container.resources.requests == {"cpu": "8", "nvidia.com/gpu": "2"}
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert pod.volumes[0].config_map.name == config.metadata.name
    assert yaml.safe_load(config.data["spec.yaml"])["workers"] == 2


def test_serving_exports_deployment_service_and_autoscaler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, deployment, service, hpa = _export(tmp_path, SERVE_YAML, capsys)
    assert isinstance(deployment, client.V1Deployment)
    assert isinstance(hpa, client.V2HorizontalPodAutoscaler)
    served = yaml.safe_load(config.data["spec.yaml"])
    assert (served["host"], served["port"]) == ("0.0.0.0", 8080)  # reachable in the pod
    assert deployment.spec.replicas == 2
    container = deployment.spec.template.spec.containers[0]
    assert container.ports[0].container_port == 8080
    assert container.readiness_probe.http_get.path == "/v2/health/ready"
    assert container.resources.requests == {"cpu": "500m", "nvidia.com/gpu": "1"}
    assert deployment.spec.template.spec.termination_grace_period_seconds == 25
    assert deployment.spec.selector.match_labels == service.spec.selector
    assert service.spec.ports[0].target_port == 8080
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert hpa.spec.scale_target_ref.name == deployment.metadata.name
    assert hpa.spec.metrics[0].resource.target.average_utilization == 70
    assert hpa.spec.behavior.scale_down.stabilization_window_seconds == 30


def test_cpu_training_requests_no_gpu(tmp_path: Path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text("name: cpu\nmodel: m:f\ndataset: m:d\nloss: m:l\n")
    _, job = manifests_for(read_job_file(spec), image="kw")
    resources = _validated(job).spec.template.spec.containers[0].resources
    assert resources.requests == {"cpu": "1"}
    assert resources.limits is None


def test_command_jobs_are_refused() -> None:
    job = JobRequest("command", {"name": "c", "command": ["true"]})
    with pytest.raises(SpecError, match="export k8s takes a train or serve spec"):
        manifests_for(job, image="kw")


def test_validation_catches_a_missing_required_field() -> None:
    # the check above is only worth something if the client rejects a broken manifest
    broken = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {}}}}
    with pytest.raises(ValueError, match="containers"):
        _validated(broken)
