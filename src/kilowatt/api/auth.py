"""Who is calling, and may they: bearer tokens, roles, and the open local mode.

Roles are ordered: a ``viewer`` reads, an ``operator`` also creates runs, models and
deployments, an ``admin`` also manages tokens and deletes. With no active token in the
store the API is in *local mode*: the caller acts as the settings' user with the admin
role, but only from a loopback address (the server refuses to bind elsewhere).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kilowatt.errors import PermissionDenied, SpecError

__all__ = ["Principal", "Role", "current_principal", "is_loopback", "require"]


class Role(IntEnum):
    """Roles in order of power; a role may do everything the roles below it may."""

    viewer = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role called ``name``; a ``SpecError`` lists the valid names otherwise."""
        try:
            return cls[name]
        except KeyError:
            valid = ", ".join(role.name for role in cls)
            raise SpecError(f"unknown role {name!r}; use one of: {valid}") from None


@dataclass(frozen=True)
class Principal:
    """The caller: the actor name written to the audit log and its role."""

    actor: str
    role: Role


_bearer = HTTPBearer(auto_error=False, description="A token from `kilowatt token create`.")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` and test clients count)."""
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def current_principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Principal:
    """Resolve the caller from the ``Authorization: Bearer`` header (a FastAPI dependency)."""
    state: Any = request.app.state
    store = state.store
    if credentials is not None:
        token = store.authenticate(credentials.credentials)
        if token is None:
            raise _unauthorized("invalid or revoked token; create one with `kilowatt token create`")
        return Principal(actor=f"token:{token.name}", role=Role.parse(token.role))
    if state.auth_required or store.has_active_tokens():
        raise _unauthorized("this server requires a token: send 'Authorization: Bearer <token>'")
    client = request.client.host if request.client else None
    if not is_loopback(client):
        raise _unauthorized("no token is configured, so only local clients are served")
    return Principal(actor=state.settings.user, role=Role.admin)


def require(role: Role) -> Any:
    """A dependency that lets the call through only for ``role`` or a stronger one."""

    def check(principal: Principal = Depends(current_principal)) -> Principal:
        if principal.role < role:
            raise PermissionDenied(
                f"{principal.actor} has role {principal.role.name}; this needs {role.name}"
                " or above (ask an admin for a token with that role)"
            )
        return principal

    return Depends(check)
