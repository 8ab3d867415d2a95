"""The client's errors, mapped from HTTP in one place (`status_error`).

APIError
├── APIConnectionError          the server was not reached, or the connection broke
│   └── APITimeoutError         no answer within the timeout
└── APIStatusError              the server answered with a problem (RFC 9457)
    ├── BadRequestError         400
    ├── AuthenticationError     401: no or wrong bearer token
    ├── NotFoundError           404
    ├── ConflictError           409: the query id was routed before with other scores
    ├── PayloadTooLargeError    413
    ├── UnprocessableEntityError 422: the message's schema, an unknown scope or model
    ├── RateLimitError          429
    └── InternalServerError     5xx: 503 while Redis or the broker is unavailable
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """Anything the decision API did not answer with a decision or an acknowledgement."""


class APIConnectionError(APIError):
    pass


class APITimeoutError(APIConnectionError):
    pass


class APIStatusError(APIError):
    """A problem answer; ``detail`` is the server's reason (a dead letter's, where one would
    be written), ``kind`` the last part of its ``type`` (``unknown_scope``, ``schema``)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        kind = str(problem.get("type", ""))
        self.kind = kind.rsplit(":", 1)[-1] if kind.startswith("urn:") else None
        super().__init__(f"{status} {self.title}: {self.detail}".strip(": "))


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class PayloadTooLargeError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
    413: PayloadTooLargeError, 422: UnprocessableEntityError, 429: RateLimitError,
}  # fmt: skip


def status_error(status: int, problem: dict[str, Any]) -> APIStatusError:
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(status, problem)
