"""A client of the decision API (``POST /v1/route``, ``/v1/feedback``) that also turns a
decision into model calls and labels: `RacerClient`, `AsyncRacerClient`, the policies
`Cheapest` and `Cascade`, and the graders `exact_match`, `numeric` and `regex`.

    with RacerClient("http://127.0.0.1:6066", token=token) as racer:
        outcome = racer.complete(ask, Cheapest(prices), text="What is 17 * 23?",
                                 grader=exact_match("391"))
"""

from racer_online.client._clients import AsyncRacerClient, RacerClient, ScopeInfo
from racer_online.client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UnprocessableEntityError,
)
from racer_online.client.graders import Grader, answer_text, exact_match, numeric, regex
from racer_online.client.policies import Cascade, Cheapest, Outcome, Policy, audit_models

__all__ = [
    "APIConnectionError", "APIError", "APIStatusError", "APITimeoutError", "AsyncRacerClient",
    "AuthenticationError", "Cascade", "Cheapest", "ConflictError", "Grader",
    "InternalServerError", "NotFoundError", "Outcome", "PayloadTooLargeError", "Policy",
    "RacerClient", "RateLimitError", "ScopeInfo", "UnprocessableEntityError", "answer_text",
    "audit_models", "exact_match", "numeric", "regex",
]  # fmt: skip
