"""A real S3-compatible endpoint on 127.0.0.1: moto's server mode, one per test module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from kilowatt.data import Storage

CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_endpoint: str) -> Storage:
    """A fresh bucket on the endpoint; data sets go under ``s3://<bucket>/data``."""
    import s3fs

    bucket = f"kw-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True, **CREDENTIALS)
    fs.mkdir(bucket)
    return Storage(f"s3://{bucket}/data", endpoint_url=s3_endpoint, options=CREDENTIALS)
