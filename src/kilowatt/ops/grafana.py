"""A Grafana dashboard (JSON) over the metrics kilowatt exports: serving, training, energy
and carbon, and the API server.

The JSON is what Grafana's file provisioning loads (``providers: - type: file``): a
``prometheus`` data source picked by the ``datasource`` variable, a ``model`` variable over
the served models, and the region's grid intensity as a constant that the carbon panels
multiply energy by (joules -> kWh -> grams CO2e).

    >>> board = dashboard(grid_gco2e_per_kwh=290.0, region="us-east-1")
    >>> board["title"], board["schemaVersion"] >= 36
    ('kilowatt', True)
"""

from __future__ import annotations

from typing import Any

from kilowatt.ops import metric_names as m
from kilowatt.units import J_PER_KWH, SECONDS_PER_HOUR

__all__ = ["DASHBOARD_UID", "dashboard", "panel_queries"]

DASHBOARD_UID = "kilowatt-overview"
_SCHEMA_VERSION = 39
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_MODEL = 'model=~"$model"'
_WIDTH, _HEIGHT = 8, 8  # three panels per row of the 24-column grid


def _q(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend}


def _latency_quantile(q: float) -> dict[str, Any]:
    expr = (
        f"histogram_quantile({q}, sum by (le, model, version) "
        f"(rate({m.SERVE_LATENCY}_bucket{{{_MODEL}}}[$__rate_interval])))"
    )
    return _q(expr, f"p{round(q * 100)} {{{{model}}}}:{{{{version}}}}")


def _serving() -> list[tuple[str, str, list[dict[str, Any]]]]:
    by_status = f"sum by (model, status) (rate({m.SERVE_REQUESTS}{{{_MODEL}}}[$__rate_interval]))"
    share = (
        f'sum by (model) (rate({m.SERVE_REQUESTS}{{{_MODEL},status=~"STATUS"}}[$__rate_interval]))'
        f" / sum by (model) (rate({m.SERVE_REQUESTS}{{{_MODEL}}}[$__rate_interval]))"
    )
    batch, window = m.SERVE_BATCH_SIZE, f"{{{_MODEL}}}[$__rate_interval]"
    return [
        ("Requests per second by status", "reqps", [_q(by_status, "{{model}} {{status}}")]),
        ("Latency p50 / p95 / p99", "s", [_latency_quantile(q) for q in (0.5, 0.95, 0.99)]),
        (
            "Error and 429 share",
            "percentunit",
            [
                _q(share.replace("STATUS", "5.."), "5xx {{model}}"),
                _q(share.replace("STATUS", "429"), "429 {{model}}"),
            ],
        ),
        (
            "Queue depth and capacity",
            "short",
            [
                _q(
                    f"sum by (model, version) ({m.SERVE_QUEUE_DEPTH}{{{_MODEL}}})",
                    "depth {{model}}",
                ),
                _q(
                    f"sum by (model, version) ({m.SERVE_QUEUE_CAPACITY}{{{_MODEL}}})",
                    "capacity {{model}}",
                ),
                _q(f"sum by (model) ({m.SERVE_IN_FLIGHT}{{{_MODEL}}})", "in flight {{model}}"),
            ],
        ),
        (
            "Mean batch size",
            "short",
            [
                _q(
                    f"sum by (model, version) (rate({batch}_sum{window}))"
                    f" / sum by (model, version) (rate({batch}_count{window}))",
                    "{{model}}:{{version}}",
                )
            ],
        ),
        (
            "Queue wait and compute time (p99)",
            "s",
            [
                _q(
                    f"histogram_quantile(0.99, sum by (le, model) "
                    f"(rate({name}_bucket{{{_MODEL}}}[$__rate_interval])))",
                    f"{label} {{{{model}}}}",
                )
                for name, label in (
                    (m.SERVE_QUEUE_LATENCY, "queue"),
                    (m.SERVE_COMPUTE_LATENCY, "compute"),
                )
            ],
        ),
    ]


def _training() -> list[tuple[str, str, list[dict[str, Any]]]]:
    job = "{{kilowatt_job}}"
    return [
        ("Training step", "short", [_q(m.TRAIN_STEP, job)]),
        ("Training loss", "short", [_q(m.TRAIN_LOSS, job)]),
        ("Throughput", "short", [_q(m.TRAIN_SAMPLES_PER_S, f"{job} samples/s")]),
        ("Step time", "s", [_q(m.TRAIN_STEP_TIME, job)]),
        (
            "Steps since the last checkpoint",
            "short",
            [_q(f"{m.TRAIN_STEP} - {m.TRAIN_LAST_CHECKPOINT_STEP}", job)],
        ),
        ("Checkpoint age", "s", [_q(f"time() - {m.TRAIN_LAST_CHECKPOINT_TIME}", job)]),
    ]


def _energy() -> list[tuple[str, str, list[dict[str, Any]]]]:
    serve_w = f"sum by (model) (rate({m.SERVE_ENERGY}{{{_MODEL}}}[$__rate_interval]))"
    per_request = m.SERVE_ENERGY_PER_REQUEST
    grams_per_j = f"$grid_gco2e_per_kwh / {J_PER_KWH:g}"
    served_j = f"sum by (model) (increase({m.SERVE_ENERGY}{{{_MODEL}}}[$__range]))"
    return [
        ("Serving power (W)", "watt", [_q(serve_w, "{{model}}")]),
        (
            "Energy per request",
            "joule",
            [
                _q(
                    f"sum by (model) (rate({per_request}_sum{{{_MODEL}}}[$__rate_interval]))"
                    f" / sum by (model) (rate({per_request}_count{{{_MODEL}}}[$__rate_interval]))",
                    "{{model}}",
                )
            ],
        ),
        ("Training power (W)", "watt", [_q(m.TRAIN_POWER, "{{kilowatt_job}}")]),
        (
            "Carbon rate (gCO2e per hour)",
            "short",
            [
                _q(f"{serve_w} * {SECONDS_PER_HOUR:g} * {grams_per_j}", "serving {{model}}"),
                _q(
                    f"{m.TRAIN_POWER} * {SECONDS_PER_HOUR:g} * {grams_per_j}",
                    "training {{kilowatt_job}}",
                ),
            ],
        ),
        (
            "Serving energy over the range (J)",
            "joule",
            [_q(served_j, "{{model}}")],
        ),
        (
            "Serving carbon over the range (gCO2e)",
            "short",
            [_q(f"{served_j} * {grams_per_j}", "{{model}}")],
        ),
    ]


def _api() -> list[tuple[str, str, list[dict[str, Any]]]]:
    return [
        (
            "API requests per second",
            "reqps",
            [_q(f"sum by (status) (rate({m.API_REQUESTS}[$__rate_interval]))", "{{status}}")],
        ),
        (
            "API latency p99",
            "s",
            [
                _q(
                    f"histogram_quantile(0.99, sum by (le, route) "
                    f"(rate({m.API_LATENCY}_bucket[$__rate_interval])))",
                    "{{route}}",
                )
            ],
        ),
    ]


_SECTIONS = (
    ("Serving", _serving),
    ("Training", _training),
    ("Energy and carbon", _energy),
    ("API server", _api),
)


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, build in _SECTIONS:
        panels.append(
            {"type": "row", "title": title, "id": next_id, "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        )  # fmt: skip
        next_id, y = next_id + 1, y + 1
        for index, (panel_title, unit, queries) in enumerate(build()):
            x = (index % 3) * _WIDTH
            if index and index % 3 == 0:
                y += _HEIGHT
            panels.append(_timeseries(next_id, panel_title, unit, queries, x, y))
            next_id += 1
        y += _HEIGHT
    return panels


def _timeseries(
    id_: int, title: str, unit: str, queries: list[dict[str, Any]], x: int, y: int
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "id": id_,
        "title": title,
        "datasource": _DATASOURCE,
        "gridPos": {"h": _HEIGHT, "w": _WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {**query, "refId": chr(ord("A") + index), "datasource": _DATASOURCE}
            for index, query in enumerate(queries)
        ],
    }


def _templating(grid_gco2e_per_kwh: float, region: str) -> dict[str, Any]:
    intensity = f"{grid_gco2e_per_kwh:g}"
    return {
        "list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "model", "label": "Model", "type": "query", "datasource": _DATASOURCE,
             "query": {"query": f"label_values({m.SERVE_REQUESTS}, model)", "refId": "model"},
             "definition": f"label_values({m.SERVE_REQUESTS}, model)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}, "hide": 0},
            {"name": "grid_gco2e_per_kwh", "label": f"Grid gCO2e/kWh ({region})",
             "type": "constant", "query": intensity, "hide": 2,
             "current": {"text": intensity, "value": intensity}},
        ]
    }  # fmt: skip


def dashboard(*, grid_gco2e_per_kwh: float, region: str) -> dict[str, Any]:
    """The dashboard model (``json.dump`` it into a provisioning folder).

    Args:
        grid_gco2e_per_kwh: the grid's carbon intensity the carbon panels use.
        region: the catalog region it comes from (shown on the variable).
    """
    return {
        "uid": DASHBOARD_UID,
        "title": "kilowatt",
        "description": "Serving, training, energy and carbon of kilowatt processes.",
        "tags": ["kilowatt"],
        "schemaVersion": _SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "annotations": {"list": []},
        "templating": _templating(grid_gco2e_per_kwh, region),
        "panels": _panels(),
    }


def panel_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard (panels and query variables)."""
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs
