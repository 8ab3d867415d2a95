"""Scopes whose every message is dead-lettered: a tenant misconfigured, or not configured.

A heuristic trigger for an operator, not part of the (alpha, delta) guarantee: it counts,
per scope, the messages this worker dead-lettered and those it decided or recorded since
the last look, and names the scopes with dead letters and nothing else.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

MAX_SCOPES = 100  # scope names come from producers: a flood of typos stays bounded


class DeadScope(NamedTuple):
    scope: str
    dead_letters: int
    reasons: dict[str, int]  # error class: count


class DeadScopes:
    def __init__(self) -> None:
        self._passed: Counter[str] = Counter()
        self._dead: dict[str, Counter[str]] = {}

    def passed(self, scope: str) -> None:
        self._passed[scope] += 1

    def dead(self, scope: str, error_class: str) -> None:
        if scope in self._dead or len(self._dead) < MAX_SCOPES:
            self._dead.setdefault(scope, Counter())[error_class] += 1

    def take(self) -> list[DeadScope]:
        """The scopes with dead letters and no message through since the last call."""
        found = [DeadScope(scope, sum(reasons.values()), dict(reasons))
                 for scope, reasons in self._dead.items() if not self._passed[scope]]  # fmt: skip
        self._passed.clear()
        self._dead.clear()
        return found
