"""Domain exceptions raised by services and turned into HTTP errors by the views."""

from __future__ import annotations


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
