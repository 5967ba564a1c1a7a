"""Serving errors, each with the HTTP status it maps to (``status_of``)."""

from __future__ import annotations

from kilowatt.errors import KilowattError, Overloaded, ServeError

__all__ = [
    "BodyTooLarge",
    "DeadlineUnmeetable",
    "EngineClosed",
    "InvalidInput",
    "ModelNotReady",
    "QueueFull",
    "RequestTimeout",
    "UnknownModel",
    "shed_reason_of",
    "status_of",
]


class InvalidInput(ServeError, ValueError):
    """The request is malformed: bad JSON, wrong shape or datatype, missing field (400)."""


class UnknownModel(ServeError, LookupError):
    """No model or version of that name is served (404)."""


class ModelNotReady(ServeError):
    """The model is still loading or warming up (503)."""


class QueueFull(Overloaded):
    """The version's queue is at capacity (429 with Retry-After)."""


class DeadlineUnmeetable(Overloaded):
    """The queue is too long to answer within the request's deadline (503 with Retry-After)."""


class EngineClosed(Overloaded):
    """The model version is draining or stopped and takes no new requests (503)."""


class RequestTimeout(ServeError):
    """The request's deadline passed before it was answered (504)."""


class BodyTooLarge(InvalidInput):
    """The request body is larger than the server accepts (413)."""


def status_of(error: BaseException) -> int:
    """The HTTP status of an error; one place for the whole server."""
    if isinstance(error, BodyTooLarge):
        return 413
    if isinstance(error, InvalidInput):
        return 400
    if isinstance(error, UnknownModel):
        return 404
    if isinstance(error, EngineClosed | ModelNotReady):
        return 503
    if isinstance(error, QueueFull):
        return 429  # the client's cue to slow down
    if isinstance(error, Overloaded):
        return 503
    if isinstance(error, RequestTimeout):
        return 504
    if isinstance(error, KilowattError):
        return 500
    return 500


def shed_reason_of(error: BaseException) -> str | None:
    """Why a request was refused without an answer (the ``reason`` label of the shed
    counter), or None when it was not shed: a full queue, a deadline the queue cannot meet,
    a version shutting down, or a model still loading."""
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, DeadlineUnmeetable):
        return "deadline"
    if isinstance(error, EngineClosed):
        return "closed"
    if isinstance(error, ModelNotReady):
        return "not_ready"
    if isinstance(error, Overloaded):
        return "overloaded"
    return None
