"""Settings: where kilowatt keeps its state, read once at the entry point."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kilowatt.errors import SpecError

__all__ = ["Settings"]


class Settings(BaseModel):
    """Where the store, artifacts and user catalog live, and who is acting.

    Built once by the CLI or API from the environment; tests pass values directly.

    >>> s = Settings.from_env({"KILOWATT_HOME": "/tmp/kw"})
    >>> s.store_url
    'sqlite:////tmp/kw/kilowatt.db'
    """

    model_config = ConfigDict(frozen=True)

    home: Path
    store_url: str
    artifacts_url: str
    user: str
    audit_witness_url: str | None = None
    audit_witness_every: int = Field(default=100, ge=1)
    data_url: str | None = None
    s3_endpoint_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``KILOWATT_HOME``, ``KILOWATT_STORE_URL``, ``KILOWATT_ARTIFACTS_URL``,
        ``KILOWATT_USER`` (defaults: ``~/.kilowatt``, SQLite and a folder inside it, the OS user),
        ``KILOWATT_AUDIT_WITNESS_URL`` and ``KILOWATT_AUDIT_WITNESS_EVERY`` (default 100).
        ``KILOWATT_DATA_URL`` (where data sets live) and ``KILOWATT_S3_ENDPOINT_URL`` (an
        S3-compatible server for ``s3://`` URLs).
        """
        env = os.environ if env is None else env
        home = Path(env.get("KILOWATT_HOME") or Path.home() / ".kilowatt").expanduser()
        return cls(
            home=home,
            store_url=env.get("KILOWATT_STORE_URL") or f"sqlite:///{home / 'kilowatt.db'}",
            artifacts_url=env.get("KILOWATT_ARTIFACTS_URL") or str(home / "artifacts"),
            user=env.get("KILOWATT_USER") or _os_user(),
            audit_witness_url=env.get("KILOWATT_AUDIT_WITNESS_URL") or None,
            audit_witness_every=_positive_int(env, "KILOWATT_AUDIT_WITNESS_EVERY", 100),
            data_url=env.get("KILOWATT_DATA_URL") or None,
            s3_endpoint_url=env.get("KILOWATT_S3_ENDPOINT_URL") or None,
        )

    @property
    def data_root(self) -> str:
        """Where ``NAME:VERSION`` data sets live (default: a folder in ``home``)."""
        return self.data_url or str(self.home / "data")

    @property
    def data_cache_dir(self) -> Path:
        """The disk tier of the shard cache, shared by every job on this machine."""
        return self.home / "cache" / "shards"

    @property
    def catalog_dir(self) -> Path:
        """User catalog files that add to or override the built-in catalog."""
        return self.home / "catalog"


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(f"{name}={raw!r} is not a positive whole number; e.g. {name}={default}")
    return value


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
