"""Encrypted serving: HTTPS and gRPC over TLS from one certificate, refused to clients
that do not trust it."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import trustme
from tritonclient.utils import InferenceServerException

from kilowatt.bench.loadgen import LoadSpec, default_body, run_scenarios
from kilowatt.serve.process import ServerProcess


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) for 127.0.0.1."""
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return ca, cert, key


@pytest.mark.slow
def test_https_and_grpc_tls_answer_trusting_clients_only(
    mlp_file: Path, tls_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca, cert, key = tls_files
    args = [str(mlp_file), "--name", "mlp", "--grpc-port", "0"]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    sample = np.zeros((1, 16), dtype=np.float32)
    trusting = ssl.create_default_context(cafile=str(ca))
    log = tmp_path / "serve.log"
    with ServerProcess(args, log_path=log, ready_timeout_s=90, verify=trusting) as server:
        url, grpc_url = server.endpoint, server.grpc_endpoint
        assert url.startswith("https://")
        # --grpc-port 0: the gRPC server bound a port itself and announced it
        assert grpc_url.startswith("grpcs://127.0.0.1:") and not grpc_url.endswith(":0")
        reply = httpx.post(f"{url}/predict", json={"inputs": sample.tolist()}, verify=trusting)
        assert reply.status_code == 200 and len(reply.json()["outputs"][0]) == 4
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.post(f"{url}/predict", json={"inputs": sample.tolist()})  # system CAs only
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url.replace("https://", "http://") + "/v2/health/ready")  # no plain text

        for load_url in (f"{url}/predict", f"{grpc_url}/mlp"):
            body = default_body(load_url, features=16)
            spec = LoadSpec(load_url, body, concurrencies=(2,), max_requests=10, ca_file=str(ca))
            [load] = run_scenarios(spec)
            assert load.statuses == {"200": 10}, load_url

        target = grpc_url.removeprefix("grpcs://")
        secure = triton.InferenceServerClient(target, ssl=True, root_certificates=str(ca))
        tensor = triton.InferInput("x", [1, 16], "FP32")
        tensor.set_data_from_numpy(sample)
        assert secure.infer("mlp", [tensor]).as_numpy("output0").shape == (1, 4)
        plain = triton.InferenceServerClient(target)
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            plain.is_server_live(client_timeout=10)


def test_a_missing_key_file_is_a_clear_error(mlp_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = subprocess.run(
        [sys.executable, "-m", "kilowatt.cli.main", "serve", str(mlp_file), "--port", "0",
         "--tls-cert", str(missing), "--tls-key", str(missing)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"tls_cert '{missing}' cannot be read (No such file or directory)" in result.stderr
    assert "Traceback" not in result.stderr
