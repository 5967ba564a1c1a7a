"""A Prometheus scrape configuration and alert rules for every kilowatt process.

Targets come from the store: the API server, every deployment recorded as running (the
server behind its endpoint), and every running training job or tracked run whose spec sets a
fixed ``metrics_port``. Alerts cover the serving SLO (a multi-window, multi-burn-rate alert
on the share of requests slower than the latency objective), error and 429 ratios, queues
near their bound, energy per request over a budget, stalled training and stale checkpoints.

    >>> options = AlertOptions(latency_slo_s=0.1)
    >>> rules = alert_rules(options, [])
    >>> [rule["alert"] for rule in rules["groups"][0]["rules"]][:2]
    ['KilowattLatencySLOFastBurn', 'KilowattLatencySLOSlowBurn']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kilowatt.errors import SpecError
from kilowatt.ops import metric_names as m
from kilowatt.spec.train import parse_interval

if TYPE_CHECKING:
    from kilowatt.store import Store

__all__ = [
    "AlertOptions",
    "ScrapeTarget",
    "TrainingTarget",
    "alert_rules",
    "bucket_label",
    "discover_targets",
    "scrape_config",
    "training_target",
    "write_prometheus",
]

_SERVE, _TRAIN, _API = "kilowatt-serve", "kilowatt-train", "kilowatt-api"


@dataclass(frozen=True)
class ScrapeTarget:
    """One ``host:port`` to scrape, in a job, with extra labels."""

    job: str
    address: str
    scheme: str = "http"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingTarget:
    """A training job's metrics endpoint and how often it promised to checkpoint.

    Attributes:
        name: the job's name (the ``kilowatt_job`` label).
        port: its fixed ``metrics_port`` on 127.0.0.1.
        checkpoint_kind: ``steps``, ``seconds`` or ``auto`` (Young/Daly).
        checkpoint_every: steps or seconds between checkpoints; for ``auto``, the expected
            preemption interval, which a Young/Daly interval never exceeds.
    """

    name: str
    port: int
    checkpoint_kind: str
    checkpoint_every: float


def training_target(name: str, spec: dict[str, Any]) -> TrainingTarget | None:
    """The target of a training spec (as stored with a job or run), or None without a fixed
    metrics port (0 picks a free port nobody can know in advance)."""
    port = spec.get("metrics_port")
    if isinstance(port, str):  # a run's params hold text
        port = json.loads(port)
    if not port:
        return None
    checkpoint = spec.get("checkpoint") or {}
    if isinstance(checkpoint, str):
        checkpoint = json.loads(checkpoint)
    kind, value = parse_interval(str(checkpoint.get("every", "auto")))
    if kind == "auto":
        value = float(checkpoint.get("expected_preemption_interval_s", 3600.0))
    return TrainingTarget(name, int(port), kind, float(value))


def target_of_endpoint(endpoint: str, job: str, labels: dict[str, str]) -> ScrapeTarget | None:
    """The server behind an ``http(s)://host:port/...`` endpoint, or None for other URLs."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return ScrapeTarget(job, parts.netloc, parts.scheme, labels)


def discover_targets(
    store: Store, api_url: str | None, extra_serve_urls: Sequence[str] = ()
) -> tuple[list[ScrapeTarget], list[TrainingTarget]]:
    """Everything the store knows to be running, plus the API server and extra servers.

    Servers are deduplicated by address (several versions served by one process share it);
    training jobs by port.
    """
    targets: dict[tuple[str, str], ScrapeTarget] = {}
    endpoints = [(api_url, _API)] if api_url else []
    endpoints += [(url, _SERVE) for url in extra_serve_urls]
    endpoints += [(d.endpoint, _SERVE) for d in store.list_deployments() if d.status == "running"]
    for url, job in endpoints:
        target = target_of_endpoint(url, job, {})
        if target is None:
            raise SpecError(f"{url!r} is not an http(s)://host:port URL; pass one")
        targets.setdefault((job, target.address), target)
    training: dict[int, TrainingTarget] = {}
    specs = [(run.name, dict(run.params)) for run in store.list_runs(status="running", limit=1000)]
    for job in store.list_jobs(status="running", limit=1000):
        if job.spec.get("kind") == "train":
            specs.append((job.name, dict(job.spec.get("spec") or {})))
    for name, spec in specs:
        found = training_target(name, spec)
        if found is not None:
            training.setdefault(found.port, found)
    for found in training.values():
        address = f"127.0.0.1:{found.port}"  # the callback binds the loopback only
        labels = {"kilowatt_job": found.name}
        targets.setdefault((_TRAIN, address), ScrapeTarget(_TRAIN, address, labels=labels))
    return list(targets.values()), list(training.values())


def scrape_config(
    targets: Sequence[ScrapeTarget],
    *,
    rule_files: Sequence[str],
    scrape_interval_s: float = 15.0,
    evaluation_interval_s: float = 15.0,
    api_token_file: str | None = None,
) -> dict[str, Any]:
    """A ``prometheus.yml`` document scraping ``targets`` (grouped by job and scheme)."""
    jobs: dict[tuple[str, str], list[ScrapeTarget]] = {}
    for target in targets:
        jobs.setdefault((target.job, target.scheme), []).append(target)
    scrape_configs = []
    for (job, scheme), members in sorted(jobs.items()):
        entry: dict[str, Any] = {
            "job_name": job if scheme == "http" else f"{job}-{scheme}",
            "scheme": scheme,
            "metrics_path": "/metrics",
            "static_configs": [
                {"targets": [t.address], "labels": dict(t.labels)}
                for t in sorted(members, key=lambda t: t.address)
            ],
        }
        if job == _API and api_token_file is not None:
            entry["authorization"] = {"type": "Bearer", "credentials_file": api_token_file}
        scrape_configs.append(entry)
    return {
        "global": {
            "scrape_interval": _duration(scrape_interval_s),
            "evaluation_interval": _duration(evaluation_interval_s),
        },
        "rule_files": list(rule_files),
        "scrape_configs": scrape_configs,
    }


@dataclass(frozen=True)
class AlertOptions:
    """Thresholds of the alert rules.

    Attributes:
        latency_slo_s: the serving latency objective; it must be a bucket bound of the
            latency histogram (``latency_buckets_s``), since the burn rate counts the
            requests above a bucket.
        slo_target: the share of requests that must meet it (0.99: p99 under the objective).
        burn_long_s, burn_short_s: the fast-burn windows (the slow burn uses 6x them); the
            alert fires when both show the error budget burning 14.4x too fast (6x slow).
        error_ratio: 5xx share of requests that pages.
        shed_ratio: 429 share of requests that pages.
        queue_fraction: queue depth over capacity that pages.
        energy_per_request_j: the energy budget per request.
        train_stall_s: a training step counter unchanged this long is stalled.
        for_s: how long a condition must hold before an alert fires.
    """

    latency_slo_s: float = 0.5
    slo_target: float = 0.99
    burn_long_s: float = 3600.0
    burn_short_s: float = 300.0
    error_ratio: float = 0.01
    shed_ratio: float = 0.05
    queue_fraction: float = 0.8
    energy_per_request_j: float = 1.0
    train_stall_s: float = 600.0
    for_s: float = 120.0
    latency_buckets_s: tuple[float, ...] = m.SERVE_LATENCY_BUCKETS_S

    def slo_bucket(self) -> str:
        """The ``le`` label of the histogram bucket at the latency objective.

        Raises:
            SpecError: the objective is not a bucket boundary.
        """
        for bucket in self.latency_buckets_s:
            if abs(bucket - self.latency_slo_s) <= 1e-12:
                return bucket_label(bucket)
        shown = ", ".join(f"{b * 1e3:g}" for b in self.latency_buckets_s)
        raise SpecError(
            f"latency SLO {self.latency_slo_s * 1e3:g} ms is not a bucket of the latency "
            f"histogram; pick one of: {shown} (ms)"
        )


def bucket_label(bound: float) -> str:
    """An ``le`` value as Prometheus clients print it (``0.5``, ``1.0``, ``+Inf``)."""
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


def alert_rules(options: AlertOptions, training: Sequence[TrainingTarget]) -> dict[str, Any]:
    """A Prometheus rules document: serving, training and availability groups."""
    return {
        "groups": [
            {"name": "kilowatt-serving", "rules": _serving_rules(options)},
            {"name": "kilowatt-training", "rules": _training_rules(options, training)},
            {"name": "kilowatt-targets", "rules": [_target_down(options)]},
        ]
    }


def _duration(seconds: float) -> str:
    """A Prometheus duration (``90s``, ``5m``, ``1h``), exact to the second."""
    whole = max(round(seconds), 0)
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _slow_ratio(bucket: str, window: str) -> str:
    """The share of requests slower than the SLO bucket over ``window``, per version."""
    by = "sum by (model, version)"
    total = f"{by} (rate({m.SERVE_LATENCY}_count[{window}]))"
    fast = f'{by} (rate({m.SERVE_LATENCY}_bucket{{le="{bucket}"}}[{window}]))'
    return f"(({total} - {fast}) / {total})"


def _burn_alert(name: str, options: AlertOptions, scale: float, burn: float) -> dict[str, Any]:
    bucket, budget = options.slo_bucket(), 1.0 - options.slo_target
    long, short = _duration(options.burn_long_s * scale), _duration(options.burn_short_s * scale)
    threshold = f"{burn * budget:.6g}"
    expr = (
        f"{_slow_ratio(bucket, long)} > {threshold}\n"
        f"and\n{_slow_ratio(bucket, short)} > {threshold}"
    )
    return _alert(
        name,
        expr,
        options.for_s,
        "page" if burn > 10 else "ticket",
        f"{{{{ $labels.model }}}}:{{{{ $labels.version }}}} burns its latency error budget "
        f"{burn:g}x too fast",
        f"More than {burn * budget:.2%} of requests took over "
        f"{options.latency_slo_s * 1e3:g} ms over both {long} and {short} (SLO: "
        f"{options.slo_target:.2%} under it).",
    )


def _ratio_alert(
    name: str, status: str, threshold: float, what: str, options: AlertOptions
) -> dict[str, Any]:
    """The share of requests answered with ``status`` (a regex) over 5m, per model."""
    by = "sum by (model)"
    expr = (
        f'{by} (rate({m.SERVE_REQUESTS}{{status=~"{status}"}}[5m]))\n'
        f"/ {by} (rate({m.SERVE_REQUESTS}[5m])) > {threshold:g}"
    )
    return _alert(
        name,
        expr,
        options.for_s,
        "page",
        f"{{{{ $labels.model }}}} answers {what}",
        f"Over {threshold:.1%} of requests in the last 5m were answered with {what}.",
    )


def _serving_rules(options: AlertOptions) -> list[dict[str, Any]]:
    by = "sum by (model, version)"
    per_request = m.SERVE_ENERGY_PER_REQUEST
    return [
        _burn_alert("KilowattLatencySLOFastBurn", options, 1.0, 14.4),
        _burn_alert("KilowattLatencySLOSlowBurn", options, 6.0, 6.0),
        _ratio_alert("KilowattServeErrors", "5..", options.error_ratio, "5xx errors", options),
        _ratio_alert("KilowattServeShedding", "429", options.shed_ratio, "429 (shed)", options),
        _alert(
            "KilowattServeQueueNearBound",
            f"{by} ({m.SERVE_QUEUE_DEPTH}) / {by} ({m.SERVE_QUEUE_CAPACITY})"
            f" > {options.queue_fraction:g}",
            options.for_s,
            "ticket",
            "{{ $labels.model }}:{{ $labels.version }} queue is nearly full",
            f"Queue depth is over {options.queue_fraction:.0%} of capacity; requests "
            "beyond it get 429. Add replicas or workers.",
        ),
        _alert(
            "KilowattServeEnergyOverBudget",
            f"{by} (rate({per_request}_sum[15m])) / {by} (rate({per_request}_count[15m]))"
            f" > {options.energy_per_request_j:g}",
            options.for_s,
            "ticket",
            "{{ $labels.model }}:{{ $labels.version }} spends too much energy per request",
            f"Mean energy per request over 15m is above the {options.energy_per_request_j:g} J"
            " budget. Check batch sizes and the model variant served.",
        ),
    ]


def _training_rules(
    options: AlertOptions, training: Sequence[TrainingTarget]
) -> list[dict[str, Any]]:
    stall = _duration(options.train_stall_s)
    rules = [
        _alert(
            "KilowattTrainingStalled",
            f"changes({m.TRAIN_STEP}[{stall}]) == 0",
            0.0,
            "page",
            "training job {{ $labels.kilowatt_job }} made no step for " + stall,
            "The step counter has not moved: the job hangs, waits on data or lost a worker.",
        )
    ]
    rules += [_checkpoint_rule(target, options) for target in training]
    return rules


def _checkpoint_rule(target: TrainingTarget, options: AlertOptions) -> dict[str, Any]:
    # Twice the interval: one checkpoint may be in flight (asynchronous) when it is due.
    selector = f'{{kilowatt_job="{target.name}"}}'
    if target.checkpoint_kind == "steps":
        expr = (
            f"{m.TRAIN_STEP}{selector} - {m.TRAIN_LAST_CHECKPOINT_STEP}{selector}"
            f" > {2 * target.checkpoint_every:g}"
        )
        interval = f"{target.checkpoint_every:g} steps"
    else:
        expr = (
            f"time() - {m.TRAIN_LAST_CHECKPOINT_TIME}{selector} > {2 * target.checkpoint_every:g}"
        )
        interval = f"{target.checkpoint_every:g} s"
    return _alert(
        "KilowattCheckpointStale",
        expr,
        options.for_s,
        "page",
        f"training job {target.name} has not checkpointed in twice its interval ({interval})",
        "A crash now would lose more work than the checkpoint interval allows. Check the "
        "checkpoint location's space and the job's log.",
    )


def _target_down(options: AlertOptions) -> dict[str, Any]:
    return _alert(
        "KilowattTargetDown",
        f'up{{job=~"{_SERVE}.*|{_TRAIN}.*|{_API}.*"}} == 0',
        options.for_s,
        "ticket",
        "{{ $labels.job }} target {{ $labels.instance }} is down",
        "Prometheus cannot scrape it: the process stopped or its port changed. Re-run "
        "`kilowatt export prometheus` after deployments change.",
    )


def _alert(
    name: str, expr: str, for_s: float, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": _duration(for_s),
        "labels": {"severity": severity, "team": "kilowatt"},
        "annotations": {"summary": summary, "description": description},
    }


RULES_FILE = "kilowatt-rules.yml"
CONFIG_FILE = "prometheus.yml"


def to_yaml(document: dict[str, Any]) -> str:
    """YAML with multi-line strings (PromQL) as literal blocks, as people write rules."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _text)
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)


def write_prometheus(
    out: Path,
    store: Store,
    options: AlertOptions,
    *,
    api_url: str | None,
    api_token_file: str | None = None,
    serve_urls: Sequence[str] = (),
    scrape_interval_s: float = 15.0,
    evaluation_interval_s: float = 15.0,
) -> list[tuple[Path, str]]:
    """Write ``prometheus.yml`` and its rules file into ``out``; (path, summary) of each."""
    options.slo_bucket()  # a bad SLO is refused before anything is written
    targets, training = discover_targets(store, api_url, serve_urls)
    config = scrape_config(
        targets,
        rule_files=[RULES_FILE],
        scrape_interval_s=scrape_interval_s,
        evaluation_interval_s=evaluation_interval_s,
        api_token_file=api_token_file,
    )
    rules = alert_rules(options, training)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in ((CONFIG_FILE, config), (RULES_FILE, rules)):
        path = out / name
        partial = path.with_name(f".{name}.partial")
        partial.write_text(to_yaml(document))
        partial.replace(path)
        written.append(path)
    count = sum(len(group["rules"]) for group in rules["groups"])
    return [
        (written[0], f"{len(targets)} targets, {len(training)} training jobs"),
        (written[1], f"{count} alert rules"),
    ]
