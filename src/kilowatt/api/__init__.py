"""The control-plane REST API over the store (FastAPI), its auth, and the dashboard.

>>> from kilowatt.api import create_app
>>> from kilowatt.spec import Settings
>>> app = create_app(Settings.from_env())  # doctest: +SKIP
"""

from kilowatt.api.app import create_app
from kilowatt.api.auth import Principal, Role
from kilowatt.api.server import check_bind, run_server

__all__ = ["Principal", "Role", "check_bind", "create_app", "run_server"]
