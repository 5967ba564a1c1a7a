"""``kilowatt export prometheus|grafana``: targets from the store, rules that promtool accepts
and that fire on the series they watch, and queries over metrics kilowatt really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from kilowatt.api import create_app
from kilowatt.cli.main import main
from kilowatt.ops import metric_names
from kilowatt.ops.grafana import dashboard, panel_queries
from kilowatt.ops.prometheus import AlertOptions, TrainingTarget, alert_rules, to_yaml
from kilowatt.serve import ServeMetrics
from kilowatt.spec import Settings
from kilowatt.store import open_store
from kilowatt.train.callbacks import CheckpointEvent, FitStart
from kilowatt.train.metrics import PrometheusCallback

PROMTOOL = shutil.which("promtool")
# under CI=true a missing promtool fails the test (.ci/run installs Debian's prometheus)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="promtool is not installed (apt-get install prometheus)",
)
# a metric name: not a label name, which an (in)equality follows inside a selector
_METRIC = re.compile(r"\b(kilowatt_[a-z0-9_]+)\b(?!\s*(?:=|!=|=~|!~))")


def _series_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name the server, a training job and the API server export."""
    serve = ServeMetrics(CollectorRegistry())
    train_registry = CollectorRegistry()
    PrometheusCallback(registry=train_registry).on_fit_start(_fit_start())
    api_registry = CollectorRegistry()
    home = tmp_path_factory.mktemp("api-home")
    settings = Settings.from_env({"KILOWATT_HOME": str(home)})
    with open_store(settings) as store:
        create_app(settings, store, registry=api_registry)
    return set().union(*map(_series_names, (serve.registry, train_registry, api_registry)))


def _fit_start() -> FitStart:
    return FitStart(
        total_steps=100, start_step=40, world_size=1, global_batch_size=8, device="cpu",
        precision="fp32", params={}, parameter_count=10,
    )  # fmt: skip


def _rules_exprs(rules: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_metric_the_rules_and_dashboard_query_is_exported(exported: set[str]) -> None:
    rules = alert_rules(AlertOptions(), [TrainingTarget("clf", 9100, "steps", 50.0)])
    board = dashboard(grid_gco2e_per_kwh=290.0, region="us-east-1")
    queried = {
        name
        for expr in [*_rules_exprs(rules), *panel_queries(board)]
        for name in _METRIC.findall(expr)
    }
    assert queried - exported == set()
    assert len(queried) > 15
    names = [getattr(metric_names, name) for name in metric_names.__all__]
    for name in (n for n in names if isinstance(n, str)):
        assert name in exported or f"{name}_bucket" in exported, name


def test_the_slo_bucket_list_matches_the_server_histogram() -> None:
    metrics = ServeMetrics(CollectorRegistry())
    metrics.latency.labels("m", "1").observe(0.01)
    served = {
        sample.labels["le"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == f"{metric_names.SERVE_LATENCY}_bucket"
    }
    options = AlertOptions()
    ours = {AlertOptions(latency_slo_s=b).slo_bucket() for b in options.latency_buckets_s}
    assert ours | {"+Inf"} == served


def test_the_training_callback_exports_its_last_checkpoint() -> None:
    registry = CollectorRegistry()
    callback = PrometheusCallback(registry=registry)
    callback.on_fit_start(_fit_start())
    assert registry.get_sample_value(metric_names.TRAIN_LAST_CHECKPOINT_STEP) == 40.0
    started = registry.get_sample_value(metric_names.TRAIN_LAST_CHECKPOINT_TIME)
    callback.on_checkpoint(CheckpointEvent(60, "file:///ck", 0.01, True, "interval"))
    assert registry.get_sample_value(metric_names.TRAIN_LAST_CHECKPOINT_STEP) == 60.0
    assert registry.get_sample_value(metric_names.TRAIN_LAST_CHECKPOINT_TIME) >= started


def test_a_latency_slo_off_the_histogram_buckets_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["export", "prometheus", "--out", str(tmp_path / "p"), "--latency-slo-ms", "150"])
    assert code == 1
    assert "latency SLO 150 ms is not a bucket" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def _fill_store(tmp_path: Path) -> None:
    with open_store() as store:
        run = store.create_run("serve")
        model = tmp_path / "m.pt"
        model.write_bytes(b"weights")
        store.log_artifact(run.id, model)
        store.register_model("clf", run_id=run.id, artifact="m.pt")
        store.create_deployment(
            "clf:1", "http://127.0.0.1:8123/v2/models/clf/versions/1", "running"
        )
        gone = store.create_deployment("clf:1", "http://127.0.0.1:8124/v2/models/clf/versions/1")
        store.update_deployment(gone.id, "stopped")
        spec = {"name": "resnet", "metrics_port": 9400, "checkpoint": {"every": "50"}}
        store.submit_job({"kind": "train", "spec": spec, "workdir": "."}, name="resnet")
        store.claim_next_job("worker-1")
        store.create_run("train", name="bert", params={"metrics_port": 9401,
                                                       "checkpoint": {"every": "90s"}})  # fmt: skip


@needs_promtool
def test_export_scrapes_what_runs_and_promtool_accepts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_store(tmp_path)
    out = tmp_path / "prometheus"
    code = main(["export", "prometheus", "--out", str(out), "--latency-slo-ms", "100"])
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    jobs = {
        entry["job_name"]: [(c["targets"][0], c["labels"]) for c in entry["static_configs"]]
        for entry in config["scrape_configs"]
    }
    assert jobs == {
        "kilowatt-api": [("127.0.0.1:8765", {})],
        "kilowatt-serve": [("127.0.0.1:8123", {})],  # the stopped deployment is not scraped
        "kilowatt-train": [
            ("127.0.0.1:9400", {"kilowatt_job": "resnet"}),
            ("127.0.0.1:9401", {"kilowatt_job": "bert"}),
        ],
    }
    rules_text = (out / "kilowatt-rules.yml").read_text()
    assert 'kilowatt_train_step{kilowatt_job="resnet"}' in rules_text
    assert (
        'time() - kilowatt_train_last_checkpoint_timestamp_seconds{kilowatt_job="bert"} > 180'
        in (rules_text)
    )
    for check in (["check", "rules", str(out / "kilowatt-rules.yml")],
                  ["check", "config", str(out / "prometheus.yml")]):  # fmt: skip
        result = subprocess.run([PROMTOOL, *check], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def _expanded(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    def fill(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels[match.group(1)], text)

    return {key: fill(value) for key, value in rule["annotations"].items()}


def _firing(rules: dict[str, Any], name: str, **labels: str) -> dict[str, Any]:
    rule = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == name)
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": _expanded(rule, labels)}


_SERIES = {
    # every request slower than the 100 ms objective on m:1, every one faster on ok:1
    'kilowatt_serve_request_latency_seconds_count{model="m",version="1"}': "0+60x60",
    'kilowatt_serve_request_latency_seconds_bucket{model="m",version="1",le="0.1"}': "0x60",
    'kilowatt_serve_request_latency_seconds_count{model="ok",version="1"}': "0+60x60",
    'kilowatt_serve_request_latency_seconds_bucket{model="ok",version="1",le="0.1"}': "0+60x60",
    # half of m's answers are 429s
    'kilowatt_serve_requests_total{model="m",version="1",status="200"}': "0+30x60",
    'kilowatt_serve_requests_total{model="m",version="1",status="429"}': "0+30x60",
    'kilowatt_serve_queue_depth{model="m",version="1"}': "90x60",
    'kilowatt_serve_queue_capacity{model="m",version="1"}': "100x60",
    'kilowatt_serve_queue_depth{model="ok",version="1"}': "10x60",
    'kilowatt_serve_queue_capacity{model="ok",version="1"}': "100x60",
    # 2 J per request against a 1 J budget
    'kilowatt_serve_energy_per_request_joules_sum{model="m",version="1"}': "0+120x60",
    'kilowatt_serve_energy_per_request_joules_count{model="m",version="1"}': "0+60x60",
    # clf steps on but never checkpoints (every 50 steps); stuck never steps
    'kilowatt_train_step{kilowatt_job="clf"}': "0+10x60",
    'kilowatt_train_last_checkpoint_step{kilowatt_job="clf"}': "0x60",
    'kilowatt_train_step{kilowatt_job="stuck"}': "5x60",
}


@needs_promtool
def test_each_alert_fires_on_the_series_it_watches(tmp_path: Path) -> None:
    rules = alert_rules(
        AlertOptions(latency_slo_s=0.1, for_s=60.0),
        [TrainingTarget("clf", 9100, "steps", 50.0)],
    )
    (tmp_path / "rules.yml").write_text(to_yaml(rules))
    m1, stuck, clf = (
        {"model": "m", "version": "1"},
        {"kilowatt_job": "stuck"},
        {"kilowatt_job": "clf"},
    )
    firing = {
        "KilowattLatencySLOFastBurn": [m1],
        "KilowattServeShedding": [{"model": "m"}],
        "KilowattServeErrors": [],
        "KilowattServeQueueNearBound": [m1],
        "KilowattServeEnergyOverBudget": [m1],
        "KilowattCheckpointStale": [clf],
        "KilowattTrainingStalled": [stuck],
    }
    expected = {name: [_firing(rules, name, **labels) for labels in each]
                for name, each in firing.items()}  # fmt: skip
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in _SERIES.items()],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": name, "exp_alerts": alerts}
                    for name, alerts in expected.items()
                ],
            }
        ],
    }
    (tmp_path / "unit.yml").write_text(json.dumps(unit))
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tmp_path / "unit.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_a_provisionable_grafana_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dash" / "kilowatt.json"
    assert main(["export", "grafana", "--out", str(out), "--region", "eu-north-1"]) == 0
    board = json.loads(out.read_text())
    assert {"uid", "title", "panels", "schemaVersion", "templating", "time"} <= board.keys()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))  # Grafana keys panels by id
    titles = {panel["title"] for panel in board["panels"] if panel["type"] == "row"}
    assert titles == {"Serving", "Training", "Energy and carbon", "API server"}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for target in panel.get("targets", []):
            assert target["expr"] and target["refId"]
    grid = next(v for v in board["templating"]["list"] if v["name"] == "grid_gco2e_per_kwh")
    assert grid["query"] == "40"  # Stockholm's grid, from the catalog
    assert "$grid_gco2e_per_kwh" in " ".join(panel_queries(board))
