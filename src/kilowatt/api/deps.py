"""Request-scoped helpers shared by the routes: the store, acting as the caller."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from kilowatt.api.auth import Principal
from kilowatt.errors import SpecError

__all__ = ["acting_store", "audit", "parse_pairs", "store_of"]


def store_of(request: Request) -> Any:
    """The app's store (reads need no actor)."""
    return request.app.state.store


def acting_store(request: Request, principal: Principal) -> Any:
    """The store with the caller as the actor its audit events name."""
    return store_of(request).as_actor(principal.actor)


def audit(request: Request, principal: Principal, action: str, target: str, **details: Any) -> None:
    """Append an audit event for a write the store does not audit itself (metric points,
    artifact uploads), so every mutating API call names its actor in the log."""
    acting_store(request, principal).record_audit(action, target, **details)


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``["k=v", ...]`` query values as a mapping; a ``SpecError`` shows the expected form."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{what} filter {item!r} must look like key=value")
        pairs[key] = value
    return pairs
