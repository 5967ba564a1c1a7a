"""ServeSpec validation, the CPU threads each worker gets, and the gRPC address."""

from __future__ import annotations

import pytest

from kilowatt.errors import SpecError
from kilowatt.serve.app import grpc_url
from kilowatt.serve.runner import threads_per_worker
from kilowatt.spec import ServeSpec, load_spec

MODEL = {"name": "m", "source": "m.pt"}


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [
        (2, 1, 2),  # the reference machine: both cores (a lone request runs fastest)
        (8, 1, 8),  # a bigger box: every core
        (8, 2, 4),  # two workers split the cores evenly
        (2, 4, 1),  # more workers than cores: never below one thread
    ],
)
def test_threads_share_the_cores_between_workers(cores: int, workers: int, threads: int) -> None:
    spec = ServeSpec(models=[MODEL], workers=workers)
    assert threads_per_worker(spec, cores) == threads


def test_explicit_threads_win() -> None:
    assert threads_per_worker(ServeSpec(models=[MODEL], threads_per_worker=5), 2) == 5


def test_the_grpc_address_says_tls_and_brackets_an_ipv6_host() -> None:
    plain = ServeSpec(models=[MODEL])
    tls = ServeSpec(models=[MODEL], host="::1", tls_cert="c.pem", tls_key="k.pem")
    assert grpc_url(plain, 50051) == "grpc://127.0.0.1:50051"
    assert grpc_url(tls, 50051) == "grpcs://[::1]:50051"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": [MODEL, MODEL]}, "version '1' is listed twice"),  # duplicate version
        ({"models": [{**MODEL, "weight": 0}]}, "no version with weight > 0"),  # nothing routed
        ({"models": [{**MODEL, "shadow": True}]}, "no version with weight > 0"),  # only a shadow
        ({"models": [MODEL], "batching": {"max_batch_size": 0}}, "max_batch_size"),  # no batch
        ({"models": [MODEL], "port": 70000}, "port"),  # not a TCP port
        ({"models": [{**MODEL, "format": "state_dict"}]}, "needs factory"),  # no factory
        ({"models": [MODEL], "tls_cert": "c.pem"}, "needs both tls_cert and tls_key"),  # half TLS
        (
            {"models": [{**MODEL, "inputs": [{"name": "a", "shape": [1]}] * 2}]},
            "name each tensor once",
        ),  # one input name twice
        (
            {"models": [{**MODEL, "input_shape": [2], "inputs": [{"name": "a", "shape": [1]}]}]},
            "either input_shape or inputs",
        ),  # two descriptions of the input
        ({"models": [MODEL], "cache": 1}, "unknown key"),  # misspelt cache_bytes
    ],
)
def test_invalid_specs_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(ServeSpec, data)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": -1}, r"port: Input should be greater than or equal to 0 \(got -1\)"),
        ({"prot": 8080}, r"prot: unknown key; remove it or check its spelling"),
        ({"batching": {"max_batch_size": 0}}, r"batching.max_batch_size: Input should be"),
    ],
)
@pytest.mark.parametrize("model", ["m.pt", ServeSpec(models=[MODEL])])
def test_run_server_validates_its_settings_before_serving(
    model: str | ServeSpec, settings: dict, message: str
) -> None:
    import kilowatt

    # Each call fails on validation, before a model is read or a socket bound.
    with pytest.raises(SpecError, match=rf"run_server settings: invalid spec.*\n.*{message}"):
        kilowatt.run_server(model, **settings)
