"""Read queries and feedback from files (JSONL, or a records CSV) and produce them."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from racer_online.errors import InvalidInputError
from racer_online.kafka import clients
from racer_online.messages import FeedbackMessage, MessageError, QueryMessage
from racer_online.offline.records import read_records
from racer_online.settings import Settings

M = TypeVar("M", QueryMessage, FeedbackMessage)


def _lines(source: str) -> Iterator[tuple[int, str]]:
    handle = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    with handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def _is_csv(source: str) -> bool:
    return source != "-" and Path(source).suffix.lower() == ".csv"


def read_queries(source: str) -> Iterator[QueryMessage]:
    """Queries from JSONL (one QueryMessage per line) or the ``p:`` columns of a records CSV."""
    if _is_csv(source):
        records = read_records(source)
        for i, qid in enumerate(records.query_ids):
            yield QueryMessage(
                query_id=qid,
                scope=records.scopes[i] if records.scopes else "default",
                scores=dict(zip(records.models, records.scores[i].tolist(), strict=True)),
                p_abstain=None if records.p_abstain is None else float(records.p_abstain[i]),
            )
        return
    yield from _parse_lines(source, QueryMessage)


def read_feedback(source: str) -> Iterator[FeedbackMessage]:
    """Feedback from JSONL or the graded ``y:`` columns of a records CSV (blank: skipped)."""
    if _is_csv(source):
        records = read_records(source)
        for i, qid in enumerate(records.query_ids):
            labels = {
                m: int(y)
                for m, y in zip(records.models, records.labels[i].tolist(), strict=True)
                if not math.isnan(y)
            }
            if labels:
                scope = records.scopes[i] if records.scopes else "default"
                yield FeedbackMessage(query_id=qid, scope=scope, labels=labels)
        return
    yield from _parse_lines(source, FeedbackMessage)


def _parse_lines(source: str, model: type[M]) -> Iterator[M]:
    try:
        for number, line in _lines(source):
            try:
                yield model.parse(line)
            except MessageError as exc:
                raise InvalidInputError(f"{source}, line {number}: {exc.reason}") from None
    except OSError as exc:
        raise InvalidInputError(f"{source}: {exc.strerror}") from exc


async def produce(
    settings: Settings, topic: str, messages: Iterable[QueryMessage | FeedbackMessage]
) -> int:
    """Send every message keyed by query id; return how many were acknowledged."""
    producer = clients.producer(settings, linger_ms=5, acks="all")
    await producer.start()
    try:
        pending = [
            await producer.send(topic, m.to_bytes(), key=m.query_id.encode()) for m in messages
        ]
        for future in pending:
            await future
        return len(pending)
    finally:
        await producer.stop()
