"""Settings: where kilowatt keeps its state, read once at the entry point."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

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
    data_url: str | None = None
    s3_endpoint_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``KILOWATT_HOME``, ``KILOWATT_STORE_URL``, ``KILOWATT_ARTIFACTS_URL``,
        ``KILOWATT_USER`` (defaults: ``~/.kilowatt``, SQLite and a folder inside it, the OS user),
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


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
