"""`kilowatt bench serve` against a real server: every scenario, bounded, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_helpers import Gate, make_server, running, running_with_grpc

from kilowatt.bench.loadgen import LoadSpec, default_body, run_scenarios
from kilowatt.cli.main import main
from kilowatt.spec import ModelSpec


def test_every_scenario_runs_bounded_by_count() -> None:
    server = make_server(ModelSpec(name="m", source="scale:2"), factory=Gate())
    with running(server) as url:
        spec = LoadSpec(
            url=f"{url}/predict",
            body=b'{"inputs": [1, 2]}',
            scenario="all",
            qps=200,
            concurrencies=(1, 4),
            offline_concurrency=8,
            duration_s=30,
            max_requests=40,
            slo_s=5.0,
        )
        results = run_scenarios(spec)
    assert [(r.scenario, r.concurrency) for r in results] == [
        ("single-stream", 1),
        ("server", None),
        ("offline", 8),
        ("closed-loop", 1),
        ("closed-loop", 4),
    ]
    assert [r.requests for r in results] == [40] * 5
    assert all(r.errors == 0 and r.slo_attainment == 1.0 for r in results)
    served = server.metrics.registry.get_sample_value(
        "kilowatt_serve_requests_total", {"model": "m", "version": "1", "status": "200"}
    )
    assert served == 200


def test_cli_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server(ModelSpec(name="m", source="scale:1"), factory=Gate())
    out = tmp_path / "load.json"
    with running(server) as url:
        code = main([
            "bench", "serve", f"{url}/v2/models/m/infer", "--scenario", "single-stream",
            "--features", "2", "--max-requests", "25", "--json", str(out),
        ])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "single-stream" in table and "SLO met" in table
    [record] = json.loads(out.read_text())
    assert (record["requests"], record["errors"], record["statuses"]) == (25, 0, {"200": 25})


def test_cli_load_tests_grpc_streams(capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server(ModelSpec(name="m", source="scale:1"), factory=Gate(), grpc_port=0)
    with running_with_grpc(server) as (url, target):
        code = main([
            "bench", "serve", f"grpc://{target}/m", "--grpc-stream", "--scenario",
            "single-stream", "--features", "2", "--max-requests", "25",
        ])  # fmt: skip
        table = capsys.readouterr().out
        refused = main(["bench", "serve", f"{url}/predict", "--grpc-stream"])
    assert code == 0 and "single-stream" in table
    served = server.metrics.registry.get_sample_value(
        "kilowatt_serve_requests_total", {"model": "m", "version": "1", "status": "200"}
    )
    assert served == 25
    assert refused != 0 and "grpc_stream needs a grpc://" in capsys.readouterr().err


def test_refused_requests_count_as_errors_against_the_slo() -> None:
    server = make_server(ModelSpec(name="m", source="scale:1"), factory=Gate())
    with running(server) as url:
        spec = LoadSpec(url=f"{url}/predict", body=b'{"inputs": [1]}', scenario="single-stream",
                        max_requests=10)  # fmt: skip
        [result] = run_scenarios(spec)
    assert (result.ok, result.errors, result.statuses) == (0, 10, {"400": 10})
    assert result.slo_attainment == 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("scenario", ["sweep", "server"])
def test_grpc_load_closed_loop_and_poisson(scenario: str, stream: bool) -> None:
    server = make_server(ModelSpec(name="m", source="scale:2"), factory=Gate(), grpc_port=0)
    with running_with_grpc(server) as (_, target):
        spec = LoadSpec(
            url=f"grpc://{target}/m",
            body=default_body(f"grpc://{target}/m", features=2),
            scenario=scenario,
            qps=200,
            concurrencies=(4,),
            duration_s=30,
            max_requests=30,
            slo_s=5.0,
            grpc_stream=stream,
        )
        [result] = run_scenarios(spec)
        bad = LoadSpec(
            url=f"grpc://{target}/nope", body=default_body("grpc://h:1/nope", features=2),
            concurrencies=(1,), max_requests=3, duration_s=30, grpc_stream=stream,
        )  # fmt: skip
        [missing] = run_scenarios(bad)
    assert (result.requests, result.statuses) == (30, {"200": 30})
    assert missing.statuses == {"404": 3}  # NOT_FOUND, counted as its HTTP counterpart
    served = server.metrics.registry.get_sample_value(
        "kilowatt_serve_requests_total", {"model": "m", "version": "1", "status": "200"}
    )
    assert served == 30
