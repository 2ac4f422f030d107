"""Failures a client can be told about: each knows its HTTP status and its message.

Handlers raise these; `service.app` turns them into the contract's JSON bodies, so no
handler builds an error response inline and no driver message ever reaches a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One broken rule, reported as `{"field": ..., "message": ...}`."""

    field: str
    message: str


class ServiceError(Exception):
    """Base class: `status` and `message` become the response."""

    status: int = 500
    message: str = "Internal server error"

    def body(self) -> dict[str, object]:
        return {"error": self.message}

    def headers(self) -> Mapping[str, str]:
        return {}


class ValidationFailed(ServiceError):
    """The request breaks a rule of docs/protocol.md; `details` lists each broken rule."""

    status = 400
    message = "Validation error"

    def __init__(self, details: list[FieldError]) -> None:
        super().__init__(self.message)
        self.details = details

    def body(self) -> dict[str, object]:
        return {
            "error": self.message,
            "details": [{"field": d.field, "message": d.message} for d in self.details],
        }


class RecordNotFound(ServiceError):
    """GET for a user id that has no record."""

    status = 404
    message = "User not found"


class PayloadTooLarge(ServiceError):
    """The decoded blob or the request body is over the limit."""

    status = 413
    message = "Payload too large (max 1MB)"


class RequestTimeout(ServiceError):
    """The body did not arrive within REQUEST_BODY_TIMEOUT (a client trickling bytes)."""

    status = 408
    message = "Request body not received in time"


class ClientClosedRequest(ServiceError):
    """The client went away mid-upload: nobody reads this answer, but logs and metrics
    should say what happened (nginx's 499), not record a server error."""

    status = 499
    message = "Client closed request"


class UnsupportedMediaType(ServiceError):
    """PUT bodies must be JSON."""

    status = 415
    message = "Content-Type must be application/json"


class ServiceUnavailable(ServiceError):
    """PostgreSQL is unreachable or every pooled connection is busy: retry later."""

    status = 503
    message = "Service unavailable"

    def __init__(self, retry_after: int) -> None:
        super().__init__(self.message)
        self.retry_after = retry_after

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class AuthenticationFailed(ServiceError):
    """Bearer tokens are configured and this request's does not prove its user id
    (service/auth.py). `outcome` is what the access line says (`auth=...`); the
    `WWW-Authenticate` challenge follows RFC 6750 §3."""

    status = 401
    message = "Invalid authentication token"
    outcome = "invalid"
    challenge = 'Bearer error="invalid_token"'

    def __init__(self) -> None:
        super().__init__(self.message)

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": self.challenge}


class TokenMissing(AuthenticationFailed):
    """No Authorization header (or an empty one): a bare challenge, no error code."""

    message = "No authorization token provided"
    outcome = "missing"
    challenge = "Bearer"


class AuthorizationFormatInvalid(AuthenticationFailed):
    """Authorization is not `Bearer <token>` (another scheme, no token, two tokens)."""

    message = "Invalid authorization format. Use: Bearer <token>"
    challenge = "Bearer"


class TokenInvalid(AuthenticationFailed):
    """Malformed, badly signed, of another algorithm, not yet valid, for another
    audience or issuer, or without the user claim."""


class TokenExpired(AuthenticationFailed):
    """The token's `exp` has passed (beyond the leeway): the client logs in again."""

    message = "Token expired. Please login again."
    outcome = "expired"
    challenge = 'Bearer error="invalid_token", error_description="The access token expired"'


class AccessDenied(AuthenticationFailed):
    """A valid token, but for another user id than the path's."""

    status = 403
    message = "Access denied: token is for another user"
    outcome = "forbidden"
    challenge = 'Bearer error="insufficient_scope"'
