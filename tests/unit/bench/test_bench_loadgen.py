"""The load generator's arithmetic and parsing, without a server."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from kilowatt.bench.loadgen import (
    LoadSpec,
    _ChannelPool,
    _http_request,
    _parse_head,
    default_body,
    render_table,
    summarize,
)
from kilowatt.errors import SpecError


def test_summary_percentiles_errors_and_slo_attainment() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    statuses = [200] * 98 + [429, 0]
    result = summarize("closed-loop", latencies, statuses, 2.0, slo_s=0.05, concurrency=4)
    assert (result.requests, result.ok, result.errors) == (100, 98, 2)
    assert result.throughput_rps == pytest.approx(49.0)
    # Percentiles are over the 98 successes: 1..98 ms.
    assert result.p50_s == pytest.approx(0.0495)
    assert result.p99_s == pytest.approx(0.09703)
    assert result.slo_attainment == pytest.approx(0.50)  # 50 of 100 requests were ok in 50 ms
    assert result.statuses == {"200": 98, "429": 1, "0": 1}


def test_summary_of_only_failures_has_no_percentiles() -> None:
    result = summarize("server", [0.1], [503], 1.0, 0.1, target_qps=10)
    assert math.isnan(result.p50_s) and result.slo_attainment == 0.0 and result.ok == 0


def test_response_head_parsing() -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 17\r\nConnection: close\r\n\r\n"
    assert _parse_head(head) == (429, 17, True)
    with pytest.raises(ValueError, match="chunked"):
        _parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_prepared_request_carries_path_host_and_length() -> None:
    spec = LoadSpec(url="http://127.0.0.1:9000/v2/models/m/infer?x=1", body=b"{}")
    host, port, request = _http_request(spec)
    assert (host, port) == ("127.0.0.1", 9000)
    assert request.startswith(b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n")
    assert request.endswith(b"Content-Length: 2\r\n\r\n{}")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scenario": "burst"}, "scenario 'burst' is not one of"),  # unknown scenario
        ({"duration_s": 0}, "bound the run"),  # unbounded in time
        ({"max_requests": 0}, "bound the run"),  # unbounded in count
        ({"qps": 0}, "qps must be > 0"),  # no arrivals
        ({"url": "ftp://x/predict"}, "must be http"),  # a protocol it does not speak
        ({"url": "grpc://127.0.0.1:1"}, "must name the model"),  # gRPC needs the model
        ({"grpc_channels": 0}, "grpc_channels >= 1"),  # calls with no channel to go on
        ({"grpc_stream": True}, "grpc_stream needs a grpc://"),  # HTTP has no such stream
    ],
)
def test_load_spec_rejects_unbounded_or_bad_runs(options: dict, message: str) -> None:
    fields = {"url": "http://127.0.0.1:1/predict", "body": b"{}", **options}
    with pytest.raises(SpecError, match=message):
        LoadSpec(**fields)


def test_default_body_matches_the_route() -> None:
    plain = json.loads(default_body("http://h:1/predict", features=4))
    assert len(plain["inputs"]) == 4
    oip = json.loads(default_body("http://h:1/v2/models/m/infer", features=4))
    assert oip["inputs"][0]["shape"] == [1, 4] and oip["inputs"][0]["data"] == plain["inputs"]


def test_default_grpc_body_is_a_model_infer_request_with_raw_contents() -> None:
    from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest.FromString(default_body("grpc://h:1/mlp", features=4))
    plain = json.loads(default_body("http://h:1/predict", features=4))
    assert request.model_name == "mlp"
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == ("FP32", [1, 4])
    values = np.frombuffer(request.raw_input_contents[0], dtype="<f4")
    assert values.tolist() == pytest.approx(plain["inputs"])


def test_table_shows_load_and_milliseconds() -> None:
    result = summarize("server", [0.002, 0.004], [200, 200], 1.0, 0.1, target_qps=50)
    lines = render_table([result]).splitlines()
    assert lines[0].split()[:3] == ["scenario", "load", "requests"]
    assert lines[2].split() == [
        "server",
        "50",
        "qps",
        "2",
        "2",
        "3.00",
        "3.80",
        "3.98",
        "4.00",
        "0",
        "100.0%",
    ]


def test_grpc_calls_share_a_few_channels_in_turn() -> None:
    async def scenario() -> list[int]:
        pool = _ChannelPool("127.0.0.1:1", None, size=3)  # nothing listens: never connects
        handed = [pool.next_channel() for _ in range(7)]
        pool.close()
        return [handed.index(channel) for channel in handed]

    # Seven concurrent calls on three channels, one connection each, handed out in turn.
    assert asyncio.run(scenario()) == [0, 1, 2, 0, 1, 2, 0]


def test_stream_answers_read_as_http_statuses() -> None:
    from kilowatt.bench.loadgen import _stream_status
    from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb

    ok = pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id="a", outputs=[{}]))
    full = pb.ModelStreamInferResponse(error_message="queue full")
    full.infer_response.parameters["status"].string_param = "RESOURCE_EXHAUSTED"
    unnamed = pb.ModelStreamInferResponse(error_message="something broke")
    statuses = [_stream_status(m.SerializeToString()) for m in (ok, full, unnamed)]
    assert statuses == [200, 429, 500]
