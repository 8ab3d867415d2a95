"""Read queries and feedback from files (JSONL, or a records CSV), check them, produce them.

A file is read and checked whole before the first message is sent, so a bad line 2
never leaves line 1 published alone. Each message is also checked against the scopes
the worker routes with (unknown scope or model, a missing score): such a message would
only land on the dead-letter topic.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from aiokafka.errors import KafkaError

from racer_online.errors import InvalidInputError, RacerError
from racer_online.kafka import clients
from racer_online.messages import FeedbackMessage, MessageError, QueryMessage
from racer_online.records import Records, read_records
from racer_online.scopes import ScopeConfig
from racer_online.settings import Settings

M = TypeVar("M", QueryMessage, FeedbackMessage)


class Located(NamedTuple):
    """A message and where it came from (``file, line 3``), for one-line errors."""

    where: str
    message: QueryMessage | FeedbackMessage


def _lines(source: str) -> Iterator[tuple[int, str]]:
    handle = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    with handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def _is_csv(source: str) -> bool:
    return source != "-" and Path(source).suffix.lower() == ".csv"


def _validated(model: type[M], fields: dict[str, Any], where: str) -> M:
    """A message built from a records row, with the schema's reason on one line."""
    try:
        return model.parse(json.dumps(fields))
    except MessageError as exc:
        raise InvalidInputError(f"{where}: {exc.reason}") from None


def _record_rows(source: str) -> Iterator[tuple[str, Records, int]]:
    records = read_records(source)
    for i in range(len(records)):
        line = records.lines[i] if records.lines else i + 2
        yield f"{source}, line {line}", records, i


def _scope_of(records: Records, i: int) -> str:
    return records.scopes[i] if records.scopes else "default"


def read_queries(source: str) -> list[Located]:
    """Every query of JSONL (one QueryMessage per line) or of the ``p:`` columns of a records
    CSV, checked against the schema; the first bad one raises with its place."""
    if not _is_csv(source):
        return _parse_lines(source, QueryMessage)
    located = []
    for where, records, i in _record_rows(source):
        fields = {
            "query_id": records.query_ids[i],
            "scope": _scope_of(records, i),
            "scores": dict(zip(records.models, records.scores[i].tolist(), strict=True)),
            "p_abstain": None if records.p_abstain is None else float(records.p_abstain[i]),
        }
        located.append(Located(where, _validated(QueryMessage, fields, where)))
    return located


def read_feedback(source: str) -> list[Located]:
    """Every feedback event of JSONL or of the graded ``y:`` columns of a records CSV
    (a record with no graded model is skipped)."""
    if not _is_csv(source):
        return _parse_lines(source, FeedbackMessage)
    located = []
    for where, records, i in _record_rows(source):
        labels = {
            m: int(y)
            for m, y in zip(records.models, records.labels[i].tolist(), strict=True)
            if not math.isnan(y)
        }
        if labels:
            fields = {"query_id": records.query_ids[i], "scope": _scope_of(records, i)}
            located.append(Located(where, _validated(FeedbackMessage, fields | {"labels": labels},
                                                     where)))  # fmt: skip
    return located


def _parse_lines(source: str, model: type[M]) -> list[Located]:
    try:
        located = []
        for number, line in _lines(source):
            where = f"{source}, line {number}"
            try:
                located.append(Located(where, model.parse(line)))
            except MessageError as exc:
                raise InvalidInputError(f"{where}: {exc.reason}") from None
        return located
    except OSError as exc:
        raise InvalidInputError(f"{source}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}: not UTF-8 text ({exc.reason})") from None


def scope_problem(
    message: QueryMessage | FeedbackMessage, scopes: Mapping[str, ScopeConfig]
) -> str | None:
    """Why the worker would send this message to the dead-letter topic, or None.

    The same checks as the service's: the scope exists, every model is in its catalogue,
    and a query that carries scores scores every model of it."""
    scope = scopes.get(message.scope)
    if scope is None:
        return f"unknown scope {message.scope!r} (the scopes are {', '.join(scopes)})"
    given = message.scores if isinstance(message, QueryMessage) else message.labels
    unknown = sorted(set(given or ()) - set(scope.model_names))
    if unknown:
        return f"unknown model {unknown[0]!r} in scope {message.scope!r}"
    if isinstance(message, QueryMessage) and message.scores is not None:
        missing = [m for m in scope.model_names if m not in message.scores]
        if missing:
            return f"no score for model {missing[0]!r} of scope {message.scope!r}"
    return None


def check_against_scopes(located: Sequence[Located], scopes: Mapping[str, ScopeConfig]) -> None:
    """Raise on the first message the worker would reject, naming where it is."""
    for where, message in located:
        problem = scope_problem(message, scopes)
        if problem is not None:
            raise InvalidInputError(f"{where}: {problem}; nothing sent (--force sends anyway)")


async def produce(
    settings: Settings, topic: str, messages: Sequence[QueryMessage | FeedbackMessage]
) -> int:
    """Send every message keyed by query id; return how many were acknowledged."""
    await clients.check_reachable(settings)
    producer = clients.producer(
        settings, linger_ms=5, acks="all", enable_idempotence=settings.producer_idempotence
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()  # closes what start() opened
        raise RacerError(
            f"cannot reach the Kafka broker at {settings.kafka_bootstrap}: {exc}"
        ) from None
    try:
        pending = [
            await producer.send(topic, m.to_bytes(), key=m.query_id.encode()) for m in messages
        ]
        for future in pending:
            await future
        return len(pending)
    except KafkaError as exc:
        raise RacerError(f"sending to {topic} failed: {exc}") from None
    finally:
        await producer.stop()
