"""Plans: submit a workload spec (JSON or YAML), get the ranked configurations back."""

from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from kilowatt.api.auth import Principal, Role, require
from kilowatt.errors import SpecError

__all__ = ["read_limited_body", "router"]

router = APIRouter(tags=["plans"])

_SPEC_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/yaml": {"schema": {"type": "string"}},
    },
}


async def read_limited_body(request: Request) -> bytes:
    """The request body, refused with 413 past the server's upload limit.

    The middleware already refuses a declared oversized ``Content-Length`` (413); this
    also stops a chunked body that never declared one, with the same status.
    """
    limit = request.app.state.max_upload_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the {limit}-byte limit; send less")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_spec(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        data = json.loads(text) if "json" in content_type else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"the spec is not valid {content_type or 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping of keys to values at the top level")
    return data


def _label(option: Any) -> str:
    return f"{option.instance} · {option.accelerators}× {option.accelerator} · {option.region}"


def _candidate(option: Any) -> dict[str, Any]:
    return {
        "label": _label(option),
        "time_s": option.time_s,
        "cost_usd": option.cost_usd,
        "energy_j": option.energy_j,
        "carbon_gco2e": option.carbon_gco2e,
        "bottleneck": option.bottleneck,
        "verdict": option.verdict,
    }


@router.post(
    "/plans",
    summary="Plan a workload spec",
    openapi_extra={"requestBody": _SPEC_BODY},
    response_model=dict[str, Any],
)
async def submit_plan(request: Request, _: Principal = require(Role.viewer)) -> dict[str, Any]:
    """Estimate time, cost, energy and carbon of every fitting configuration, ranked.

    Send the spec as JSON or as YAML (``Content-Type: application/yaml``). Planning reads
    the catalog only and stores nothing, so viewers may plan. ``candidates`` is the ranked
    summary the dashboard draws; ``result`` is the planner's full answer.
    """
    from kilowatt.plan import make_plan

    body = await read_limited_body(request)
    spec = _parse_spec(body, request.headers.get("content-type", ""))
    result = await run_in_threadpool(make_plan, spec)  # the search is CPU-bound: off the loop
    return {
        "kind": result.kind,
        "objective": result.objective,
        "recommended": _label(result.recommendation),
        "candidates": [_candidate(option) for option in result.plans],
        "notes": list(result.explanation),
        "result": result.model_dump(mode="json"),
    }
