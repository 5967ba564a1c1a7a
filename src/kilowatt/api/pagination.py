"""One shape for every list: ``{"items": [...], "total": n, "limit": l, "offset": o}``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

__all__ = ["MAX_LIMIT", "Page", "PageParams", "page_of", "page_params"]

MAX_LIMIT = 1000
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A slice of a longer list; ``total`` counts every item that matched the filters."""

    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class PageParams:
    """``limit`` and ``offset`` query parameters, validated (bad values give 422)."""

    limit: int = 100
    offset: int = 0


def page_params(
    limit: int = Query(100, ge=1, le=MAX_LIMIT, description="Items per page."),
    offset: int = Query(0, ge=0, le=2**31, description="Items to skip."),
) -> PageParams:
    """The FastAPI dependency that reads ``limit`` and ``offset``."""
    return PageParams(limit=limit, offset=offset)


def page_of(items: Sequence[Any], params: PageParams) -> dict[str, Any]:
    """Cut one page out of an already filtered list."""
    chosen = list(items[params.offset : params.offset + params.limit])
    return {"items": chosen, "total": len(items), "limit": params.limit, "offset": params.offset}
