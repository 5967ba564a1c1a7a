"""API tokens for the control plane: stored as SHA-256 hashes, shown in plain text once."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from kilowatt.errors import NotFound, SpecError
from kilowatt.store import schema as t
from kilowatt.store._base import StoreBase
from kilowatt.store.records import Role, TokenInfo

__all__ = ["ROLES", "TOKEN_PREFIX", "TokensMixin"]

ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
TOKEN_PREFIX = "kw_"
_LAST_USED_RESOLUTION_S = 60.0


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class TokensMixin(StoreBase):
    """Creating, checking, listing and revoking API tokens."""

    def create_token(self, name: str, role: Role) -> tuple[str, str]:
        """Create a token; return ``(token_id, plaintext)``. The plaintext is not stored:
        show it to the user once. Audited as ``token.create``."""
        if role not in ROLES:
            raise SpecError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not name or len(name) > 200:
            raise SpecError(f"token name {name!r} must be 1 to 200 characters")
        token_id = uuid.uuid4().hex[:12]
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes
        with self._write() as connection:
            connection.execute(
                sa.insert(t.api_tokens).values(
                    id=token_id,
                    name=name,
                    role=role,
                    token_sha256=_digest(plaintext),
                    created_at=time.time(),
                    created_by=self._actor,
                )
            )
            self._audit(connection, "token.create", f"token:{token_id}", name=name, role=role)
        return token_id, plaintext

    def authenticate(self, plaintext: str) -> TokenInfo | None:
        """The token for ``plaintext`` if it exists and is not revoked, else None.

        Records when the token was last used, to the minute (not a write per request).
        """
        query = sa.select(t.api_tokens).where(
            t.api_tokens.c.token_sha256 == _digest(plaintext), t.api_tokens.c.revoked_at.is_(None)
        )
        with self._engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        now = time.time()
        if row.last_used_at is None or now - row.last_used_at >= _LAST_USED_RESOLUTION_S:
            with self._write() as connection:
                connection.execute(
                    sa.update(t.api_tokens)
                    .where(t.api_tokens.c.id == row.id)
                    .values(last_used_at=now)
                )
            return replace(_to_token(row), last_used_at=now)
        return _to_token(row)

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token at once; audited as ``token.revoke``."""
        with self._write() as connection:
            result = connection.execute(
                sa.update(t.api_tokens)
                .where(t.api_tokens.c.id == token_id, t.api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if result.rowcount != 1:
                raise NotFound(
                    f"no active token {token_id!r}; list tokens with `kilowatt token list`"
                )
            self._audit(connection, "token.revoke", f"token:{token_id}")
        return next(token for token in self.list_tokens() if token.id == token_id)

    def list_tokens(self) -> list[TokenInfo]:
        """Every token (active and revoked), oldest first, without secrets."""
        query = sa.select(t.api_tokens).order_by(t.api_tokens.c.created_at)
        with self._engine.connect() as connection:
            return [_to_token(row) for row in connection.execute(query)]

    def has_active_tokens(self) -> bool:
        """Whether any token is active (then the API requires one)."""
        query = sa.select(t.api_tokens.c.id).where(t.api_tokens.c.revoked_at.is_(None)).limit(1)
        with self._engine.connect() as connection:
            return connection.execute(query).first() is not None


def _to_token(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
