"""The server around the API: /metrics, no stack traces, the bind rule, the CLI, HTTPS."""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from api_live import LiveApi, serve_in_thread
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from kilowatt.api import check_bind, create_app
from kilowatt.api.auth import is_loopback
from kilowatt.cli.main import main
from kilowatt.errors import SpecError
from kilowatt.serve.process import ServerProcess
from kilowatt.spec import Settings
from kilowatt.store import Store


def test_metrics_endpoint_counts_requests_by_route(live_api: LiveApi) -> None:
    with live_api.client() as client:
        client.get("/api/v1/runs")
        client.get("/api/v1/runs/abcdef123456")
        text = client.get("/metrics").text
    assert 'kilowatt_api_requests_total{method="GET",route="/api/v1/runs",status="200"} 1.0' in text
    assert (
        'kilowatt_api_requests_total{method="GET",route="/api/v1/runs/{run_id}",status="404"} 1.0'
        in text
    )


def test_audit_verify_reports_an_intact_chain(live_api: LiveApi, store: Store) -> None:
    store.create_run("p")
    with live_api.client() as client:
        verdict = client.get("/api/v1/audit/verify").json()
    assert verdict["ok"] is True
    assert verdict["message"] == "audit log intact: 2 events verified"  # project + run


class _BrokenStore:
    """A store whose reads fail the way a bug would: not a KilowattError."""

    def has_active_tokens(self) -> bool:
        return False

    def list_projects(self) -> list[object]:
        raise RuntimeError("secret internal detail")


def test_unexpected_errors_are_500_without_a_stack_trace() -> None:
    app = create_app(Settings.from_env(), _BrokenStore(), registry=CollectorRegistry())
    server, thread, port = serve_in_thread(app)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/projects")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error; see the server log",
        "error": "InternalError",
    }
    assert "secret internal detail" not in response.text


@pytest.mark.parametrize(
    ("host", "has_tokens", "auth_required"),
    [
        ("127.0.0.1", False, False),  # the default: local callers only, no token needed
        ("::1", False, False),  # IPv6 loopback counts as local
        ("0.0.0.0", True, True),  # a shared server demands a token on every request
    ],
)
def test_bind_rule(host: str, has_tokens: bool, auth_required: bool) -> None:
    assert check_bind(host, has_tokens=has_tokens).auth_required is auth_required


def test_binding_a_public_address_without_a_token_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SpecError, match=re.escape("refusing to bind '0.0.0.0' with no API token")):
        check_bind("0.0.0.0", has_tokens=False)
    assert main(["ui", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "kilowatt token create" in capsys.readouterr().err


def test_only_loopback_clients_count_as_local() -> None:
    # In local mode (no token) a request from any other address gets 401.
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("10.1.2.3")
    assert not is_loopback(None)


def test_token_commands_create_list_revoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "ci", "--role", "operator"]) == 0
    created = capsys.readouterr().out
    secret = created.strip().splitlines()[-1]
    token_id = created.split()[2]
    assert secret.startswith("kw_")
    assert main(["token", "list"]) == 0
    listed = capsys.readouterr().out
    assert token_id in listed and "operator" in listed and "active" in listed
    assert secret not in listed
    assert main(["token", "revoke", token_id]) == 0
    assert main(["token", "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", "create", "x", "--role", "root"]) == 1
    assert "unknown role 'root'; use one of: viewer, operator, admin" in capsys.readouterr().err


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_kilowatt_ui_binds_its_own_port_serves_https_and_prints_the_url(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with ServerProcess(
        args, program="ui", log_path=tmp_path / "ui.log", verify=_context(cert)
    ) as server:
        listening = _listening_ports(server.pid)
        health = httpx.get(f"{server.endpoint}/api/v1/health", verify=_context(cert)).json()
        page = httpx.get(f"{server.endpoint}/", verify=_context(cert))
    # Started with --port 0: the announced address is a real port the server itself bound.
    port = int(server.endpoint.rsplit(":", 1)[1])
    assert server.endpoint == f"https://127.0.0.1:{port}" and port != 0
    assert port in listening
    assert health == {"status": "ok", "auth": "local"}
    assert "uPlot.iife.min.js" in page.text
    output = server.output()
    assert f"kilowatt dashboard: https://127.0.0.1:{port}/" in output
    assert "no API token configured: serving local callers on 127.0.0.1 only" in output
    assert server.describe_exit() == "drained and exited on SIGTERM"


def _listening_ports(pid: int) -> set[int]:
    import psutil

    connections = psutil.Process(pid).net_connections(kind="tcp")
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


def _context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the certificate names an IP, not a host name
    return context


def test_docs_and_dashboard_load_nothing_from_a_cdn(live_api: LiveApi) -> None:
    with live_api.client() as client:
        docs = client.get("/docs").text
        index = client.get("/").text
        assets = [
            client.get(path)
            for path in (
                "/static/vendor/swagger-ui-bundle.js",
                "/static/vendor/swagger-ui.css",
                "/static/vendor/uPlot.iife.min.js",
                "/static/app.js",
            )
        ]
        schema = client.get("/openapi.json").json()
    assert "/static/vendor/swagger-ui-bundle.js" in docs
    for page in (docs, index):
        assert "cdn" not in page.lower() and "https://" not in page
    assert [response.status_code for response in assets] == [200, 200, 200, 200]
    assert schema["info"]["title"] == "kilowatt control plane"
