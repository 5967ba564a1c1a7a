"""Every ``KilowattError`` becomes one HTTP status, here and nowhere else.

Clients get ``{"detail": message, "error": class name}``; never a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kilowatt import errors

__all__ = ["STATUS_BY_ERROR", "install_error_handlers", "status_for"]

_log = logging.getLogger(__name__)

# The most specific class wins: status_for walks the exception's MRO.
STATUS_BY_ERROR: dict[type[errors.KilowattError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.AuditTampered: 409,
    errors.SpecError: 422,
    errors.CatalogLookupError: 422,
    errors.CatalogError: 500,
    errors.PlanInfeasible: 422,
    errors.PermissionDenied: 403,
    errors.Overloaded: 503,
    errors.ServeError: 502,
    errors.BackendError: 502,
    errors.MeterUnavailable: 503,
    errors.CheckpointError: 500,
    errors.StoreError: 400,
    errors.KilowattError: 400,
}


def status_for(exc: errors.KilowattError) -> int:
    """The HTTP status of a kilowatt error (the nearest class in ``STATUS_BY_ERROR``)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _body(message: str, error: str) -> dict[str, str]:
    return {"detail": message, "error": error}


async def _kilowatt_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.KilowattError)
    status = status_for(exc)
    headers = {}
    if isinstance(exc, errors.Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse(_body(str(exc), type(exc).__name__), status_code=status, headers=headers)


_HTTP_ERROR_NAMES = {
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    name = _HTTP_ERROR_NAMES.get(exc.status_code, "HTTPError")
    return JSONResponse(
        _body(str(exc.detail), name), status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for problem in exc.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()))
        problems.append(f"{where}: {problem.get('msg', 'invalid')}")
    message = "invalid request: " + "; ".join(problems)
    return JSONResponse(_body(message, "ValidationError"), status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Log the trace for the operator; the client learns only that it was our fault.
    _log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(_body("internal error; see the server log", "InternalError"), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to responses on ``app``."""
    app.add_exception_handler(errors.KilowattError, _kilowatt_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
