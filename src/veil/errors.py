"""Veil's one exception tree.

Every error a caller can see is a ``VeilError``; lower-level errors (pydantic, aiohttp,
llama.cpp, SQLAlchemy) are converted at the boundary where they happen. The HTTP status,
OpenAI error ``type`` and ``code`` of each error are decided here and nowhere else::

    VeilError                      500 api_error
    ├── InvalidRequest             400 invalid_request_error
    │   ├── ContentFiltered        400 invalid_request_error / content_filter
    │   ├── BodyTooLarge           413 invalid_request_error / request_too_large
    │   └── HeadersTooLarge        431 invalid_request_error / headers_too_large
    ├── AuthenticationFailed       401 authentication_error / invalid_api_key
    ├── PermissionDenied           403 permission_error
    │   ├── ModelPending           403 permission_error / model_pending
    │   ├── PolicyDenied           403 permission_error / policy_denied
    │   └── ConsentRequired        403 permission_error / consent_required
    ├── NotFound                   404 invalid_request_error / not_found
    │   └── ModelNotFound          404 invalid_request_error / model_not_found
    ├── RateLimited                429 rate_limit_error (Retry-After)
    │   └── QueueFull              429 rate_limit_error / queue_full
    └── UpstreamError              502 api_error / upstream_error
        ├── UpstreamUnavailable    503 api_error / upstream_unavailable
        └── UpstreamTimeout        504 api_error / upstream_timeout

``ConfigError`` is separate: it is raised before a server exists and carries the file,
line and key of each problem for ``veil config check``.

Messages never contain prompt or completion text: they name fields, limits and providers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class VeilError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        #: ``x-veil-*`` headers of the route that was tried, when the error came from one.
        self.route_headers: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }

    def headers(self) -> dict[str, str]:
        headers = dict(self.route_headers)
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class InvalidRequest(VeilError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContentFiltered(InvalidRequest):
    """The prompt crossed a safety threshold whose action is ``block``."""

    code = "content_filter"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "headers_too_large"


class AuthenticationFailed(VeilError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(VeilError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelPending(PermissionDenied):
    """The model is behind the release gate: not routable until its red-team run passed."""

    code = "model_pending"


class PolicyDenied(PermissionDenied):
    code = "policy_denied"


class ConsentRequired(PermissionDenied):
    code = "consent_required"


class NotFound(VeilError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RateLimited(VeilError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """A tenant's, user's or key's budget for the period is spent (429)."""

    type = "insufficient_quota"
    code = "budget_exceeded"


class QueueFull(RateLimited):
    code = "queue_full"


class UpstreamError(VeilError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: where it is and what is wrong."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(Exception):
    """A config file (or the environment it refers to) is invalid."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
