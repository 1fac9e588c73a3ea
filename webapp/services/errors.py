"""Domain exceptions raised by services and turned into HTTP errors by the views, and the
base of the media and speech tools' errors."""

from __future__ import annotations

from typing import Any


class ToolError(Exception):
    """A media or speech tool failed on this input (an expected failure, not a bug).

    str(exc) is one sentence a user can act on; `detail` is the tool's own output tail
    (server paths already removed), for bug reports, or None.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are pickled with their args only; keep detail across processes too.
        return type(self), (str(self), self.detail)


class ServiceError(Exception):
    """Base class; `status` is the HTTP status a view should answer with."""

    status = 400

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class InvalidMedia(ServiceError):
    status = 422


class QueueUnavailable(ServiceError):
    status = 503
