"""Record keys of the output topics: what a consumer deduplicates by.

A query id is unique within its scope only (two tenants may both send ``q1``), so a decision
is keyed by both: ``<scope>/<query_id>``. A scope name never holds a ``/``
(`SAFE_NAME_PATTERN`), so the key splits back at its first one. Thresholds and alerts are
keyed by their scope (one partition keeps a scope's order).
"""

from __future__ import annotations


def decision_key(scope: str, query_id: str) -> bytes:
    """The key of the decision on a query: its scope and query id."""
    return f"{scope}/{query_id}".encode()
