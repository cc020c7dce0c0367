"""The errors a client can be answered with; one middleware maps them to JSON."""
from __future__ import annotations


class AppError(Exception):
    status = 500
    code = "internal"
    refusal = ""  # a sandbox hub's own code of why it refused a call (not_found, exists, is_folder...)

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidJson(AppError):
    status, code = 400, "invalid_json"


class BadMessage(AppError):
    """A WebSocket message that is not one of the protocol's."""

    status, code = 400, "bad_message"


class ValidationFailed(AppError):
    status, code = 400, "validation_failed"


class UnsupportedLanguage(AppError):
    status, code = 400, "unsupported_language"


class RequestTimeout(AppError):
    status, code = 408, "request_timeout"


class Unauthorized(AppError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "Log in and send the token as 'Authorization: Bearer <token>'.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    """Authenticated, but this credential may not do that."""

    status, code = 403, "forbidden"


class RegistrationClosed(Forbidden):
    """The operator has closed sign-up (--registration closed)."""

    code = "registration_closed"


class AccountDisabled(Forbidden):
    """The operator has disabled this user (coderund users disable)."""

    code = "account_disabled"


class NotFound(AppError):
    status, code = 404, "not_found"


class Conflict(AppError):
    status, code = 409, "conflict"


class PayloadTooLarge(AppError):
    status, code = 413, "payload_too_large"


class RateLimited(AppError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"


class Unavailable(AppError):
    """A dependency (database, cache, broker) does not answer; the client may retry."""

    status, code = 503, "unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class QueueFull(Unavailable):
    code = "queue_full"


class SandboxEnded(AppError):
    """A stateful sandbox that is no more: the message names why (deleted, expired, worker_lost...)."""

    status, code = 410, "sandbox_ended"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The sandbox has ended: {reason}.")
        self.reason = reason
