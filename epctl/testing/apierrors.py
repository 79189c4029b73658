"""Kubernetes ``Status`` errors as the kube-apiserver returns them.

Clients (client-go, kubectl, kubernetes_asyncio, our own informer) decide what to do from the HTTP
code *and* the ``reason`` of the Status body, so the test server must produce both faithfully.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldCause:
    """One entry of ``details.causes``: which field is wrong and why."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


@dataclass
class StatusError(Exception):
    """An API failure carried up to the HTTP layer and rendered as a ``Status`` object."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": kind}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{_qualified(plural, group)} "{name}" not found',
                       _details(name, group, plural))


def already_exists(plural: str, group: str, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{_qualified(plural, group)} "{name}" already exists',
                       _details(name, group, plural))


def conflict(plural: str, group: str, name: str, why: str) -> StatusError:
    return StatusError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {why}',
        _details(name, group, plural))


STALE_WRITE = ("the object has been modified; please apply your changes to the latest version "
               "and try again")


def invalid(kind: str, group: str, name: str, causes: list[FieldCause]) -> StatusError:
    """422 Invalid, formatted like apimachinery's ``NewInvalid`` (message lists every cause)."""
    parts = [f"{c.field}: {c.message}" for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = _details(name, group, kind)
    details["causes"] = [c.to_dict() for c in causes]
    return StatusError(422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {joined}',
                       details)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def expired(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media types "
                       f"include: application/json-patch+json, application/merge-patch+json, "
                       f"application/apply-patch+yaml (got {content_type})")


def forbidden(plural: str, group: str, name: str, why: str) -> StatusError:
    return StatusError(403, "Forbidden", f'{_qualified(plural, group)} "{name}" is forbidden: {why}',
                       _details(name, group, plural))


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


# Reasons kube-apiserver uses for the codes that fault injection can produce.
REASON_FOR_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def injected(code: int, retry_after: int | None = None) -> StatusError:
    """An error produced by fault injection, shaped like the real server's."""
    reason = REASON_FOR_CODE.get(code, "InternalError")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if code == 429 and not headers:
        headers = {"Retry-After": "1"}
    return StatusError(code, reason, f"injected fault: {reason}", {}, headers)
