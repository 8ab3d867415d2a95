"""Graders: plain callables from a model's answer to its label (True right, False wrong,
None: cannot tell, so no label is sent). Build one per query, with what is expected."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

Grader = Callable[[Any], bool | None]


def answer_text(answer: Any) -> str:
    """The text of an answer: a string as it is, or an OpenAI/LiteLLM completion's first
    choice (``answer.choices[0].message.content``)."""
    if isinstance(answer, str):
        return answer
    choices = getattr(answer, "choices", None)
    if choices:
        return str(choices[0].message.content or "")
    raise TypeError(f"cannot read the text of a {type(answer).__name__}")


def exact_match(expected: str, *, case_sensitive: bool = False) -> Grader:
    """Right when the answer, stripped, equals ``expected``."""
    want = expected.strip() if case_sensitive else expected.strip().casefold()

    def grade(answer: Any) -> bool:
        got = answer_text(answer).strip()
        return (got if case_sensitive else got.casefold()) == want

    return grade


_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def numeric(expected: float, *, tol: float = 1e-6) -> Grader:
    """Right when the last number in the answer is within ``tol`` (absolute, or relative to
    ``expected``) of it; None when the answer has no number."""

    def grade(answer: Any) -> bool | None:
        found = _NUMBER.findall(answer_text(answer).replace(",", ""))
        if not found:
            return None
        return math.isclose(float(found[-1]), expected, rel_tol=tol, abs_tol=tol)

    return grade


def regex(pattern: str | re.Pattern[str]) -> Grader:
    """Right when the pattern is found in the answer."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern

    def grade(answer: Any) -> bool:
        return compiled.search(answer_text(answer)) is not None

    return grade
