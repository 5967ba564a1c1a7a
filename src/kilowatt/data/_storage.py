"""Where data sets live: fsspec URLs, ``NAME:VERSION`` references, retried remote reads."""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

from kilowatt.errors import DataError

__all__ = ["Storage", "is_local_url", "with_retries"]

T = TypeVar("T")

#: Attempts for a remote call before the error names the URL; waits double from 0.1 s.
RETRY_ATTEMPTS = 4
RETRY_FIRST_WAIT_S = 0.1


@dataclass(frozen=True)
class Storage:
    """The root under which ``NAME/VERSION/`` folders live, and how to reach it.

    ``root`` is any fsspec URL (a local path, ``s3://bucket/prefix``, ``gs://...``,
    ``memory://...``). ``endpoint_url`` points ``s3://`` at an S3-compatible server;
    ``options`` are further fsspec storage options (credentials, ``anon``...). The
    value is plain data, so it pickles into DataLoader worker processes.

    >>> Storage("/tmp/kw/data").url_of("digits:v1")
    '/tmp/kw/data/digits/v1'
    """

    root: str
    endpoint_url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def url_of(self, ref: str) -> str:
        """The folder URL of ``NAME:VERSION``, or ``ref`` itself when it is a URL or path."""
        if "://" in ref or ref.startswith(("/", "./", "../")):
            return ref.rstrip("/")
        name, sep, version = ref.partition(":")
        if not sep or not name or not version or "/" in name or "/" in version:
            raise DataError(
                f"data set reference {ref!r} is neither NAME:VERSION nor a URL; "
                "write e.g. digits:v1 or s3://bucket/digits/v1"
            )
        return f"{self.root.rstrip('/')}/{name}/{version}"

    def filesystem(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem for ``url`` with this storage's options, and the path in it."""
        options = dict(self.options)
        if url.startswith(("s3://", "s3a://")):
            if self.endpoint_url:
                options.setdefault("endpoint_url", self.endpoint_url)
            if "profile" not in options:
                options.setdefault("session", _s3_session())
            # Every shard is checked against its SHA-256 as it is read; botocore's own CRC
            # of each response body would be a second pass over the same bytes.
            options["config_kwargs"] = {
                "response_checksum_validation": "when_required",
                **options.get("config_kwargs", {}),
            }
        try:
            return url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise DataError(f"cannot open {url}: {exc}; check the URL's scheme") from None

    def read_bytes(self, url: str, size: int | None = None) -> bytes:
        """The whole object at ``url`` (retried with backoff; FileNotFound is not retried).

        ``size``, when the caller knows it (a shard's manifest entry), reads that many bytes
        in one ranged request: s3fs would otherwise ask for the object's size first (a HEAD
        per object). A shorter object comes back short, for the caller's hash check.
        """
        fs, path = self.filesystem(url)
        if size is None:
            return with_retries(lambda: fs.cat_file(path), url)
        return with_retries(lambda: fs.cat_file(path, start=0, end=size), url)

    def write_bytes_atomic(self, url: str, data: bytes) -> None:
        """Write ``data`` so that readers see the old object or all of the new one.

        Object stores publish a PUT whole; on a local disk a temporary name is renamed
        into place, so no reader ever sees a partly written file.
        """
        fs, path = self.filesystem(url)
        if not is_local_url(url):
            with_retries(lambda: fs.pipe_file(path, data), url)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)


@functools.cache
def _s3_session() -> Any:
    """The process's one aiobotocore session, shared by its S3 filesystems.

    It holds the service models an S3 client is built from, parsed once (a new session
    takes up to a second to build its first client on a busy machine). A forked DataLoader
    worker inherits it warm; its clients and connections stay per process.
    """
    import aiobotocore.session

    return aiobotocore.session.AioSession()


def is_local_url(url: str) -> bool:
    """Whether ``url`` is a path on this machine's disk (the data's only copy may be there)."""
    return "://" not in url or url.startswith(("file://", "local://"))


def with_retries(call: Callable[[], T], url: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """``call()``, retried with exponential backoff on transient errors; then a DataError.

    A missing object is not transient: ``FileNotFoundError`` becomes a DataError at once.
    """
    wait_s = RETRY_FIRST_WAIT_S
    for attempt in range(attempts):
        try:
            return call()
        except FileNotFoundError:
            raise DataError(f"{url} does not exist; check the data set name and version") from None
        except DataError:
            raise
        except Exception as exc:
            if attempt == attempts - 1:
                raise DataError(
                    f"cannot reach {url} after {attempts} attempts ({type(exc).__name__}: "
                    f"{exc}); check the endpoint URL and that the server is running"
                ) from None
            time.sleep(wait_s)
            wait_s *= 2
    raise AssertionError("unreachable")
