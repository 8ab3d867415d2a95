"""Topic payloads: what is accepted, what is rejected, and the reason a DLQ record carries."""

import base64
import json

import pytest
from pydantic import ValidationError

from racer_online.errors import InvalidInputError
from racer_online.messages import (
    MAX_EMBEDDING_DIM,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_ITEMS,
    MAX_MODELS,
    MAX_TEXT_CHARS,
    AlertMessage,
    DeadLetter,
    DecisionFields,
    DecisionMessage,
    FeedbackMessage,
    MessageError,
    QueryMessage,
    ThresholdMessage,
)


def dumps(payload: dict[str, object]) -> bytes:
    return json.dumps(payload).encode()


def query(**fields: object) -> bytes:
    return dumps({"query_id": "q1", **fields})


def reason_of(model: type[QueryMessage] | type[FeedbackMessage], raw: bytes) -> str:
    with pytest.raises(MessageError) as caught:
        model.parse(raw)
    assert "\n" not in caught.value.reason
    return caught.value.reason


@pytest.mark.parametrize(
    "raw",
    [
        query(scores={"m0": 0.2, "m1": 0.9}),
        query(scores={"m0": 0.0, "m1": 1.0}, p_abstain=1.0),
        query(text="What is 2 + 2?"),
        query(text="x" * MAX_TEXT_CHARS),
        query(embedding=[0.1, -3.5, 7.0]),
        query(embedding=[0.0] * MAX_EMBEDDING_DIM),
        query(scores={f"m{i}": 0.5 for i in range(MAX_MODELS)}),
        query(scope="tenant-A_1.prod", text="hi"),
        query(scope="s" * 128, text="hi"),
        query(
            text="hi", event_time=1_700_000_000.5, metadata={"a": "x", "b": 1, "c": 2.5, "d": True}
        ),
        query(text="hi", metadata={f"k{i}": i for i in range(MAX_METADATA_ITEMS)}),
        dumps({"query_id": "q" * 256, "text": "hi"}),
    ],
)
def test_valid_queries_are_accepted(raw: bytes) -> None:
    message = QueryMessage.parse(raw)
    assert QueryMessage.parse(message.to_bytes()) == message


def test_query_defaults() -> None:
    message = QueryMessage.parse(query(text="hi"))
    assert (message.scope, message.scores, message.p_abstain) == ("default", None, None)
    assert (message.embedding, message.event_time, message.metadata) == (None, None, {})


def test_metadata_keeps_json_types() -> None:
    message = QueryMessage.parse(query(text="hi", metadata={"a": True, "b": 1, "c": 1.5}))
    assert [type(value) for value in message.metadata.values()] == [bool, int, float]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"query_id": "q1", "scores": {"m0": NaN}}', "scores.m0: Input should be a finite"),
        (b'{"query_id": "q1", "scores": {"m0": Infinity}}', "scores.m0: Input should be a finite"),
        (b'{"query_id": "q1", "text": "x", "p_abstain": NaN}', "p_abstain: Input should be a fin"),
        (b'{"query_id": "q1", "embedding": [0.1, 1e400]}', "embedding.1: Input should be a finite"),
        (b'{"query_id": "q1", "embedding": [-Infinity]}', "embedding.0: Input should be a finite"),
        (b'{"query_id": "q1", "text": "x", "event_time": NaN}', "event_time: Input should be a fi"),
        (b'{"query_id": "q1", "text": "x", "metadata": {"a": NaN}}', "metadata.a: metadata values"),
        (query(scores={"m3": 1.5}), "schema: scores.m3: Input should be less than or equal to 1"),
        (query(scores={"m0": -0.1}), "scores.m0: Input should be greater than or equal to 0"),
        (query(scores={"m0": "high"}), "scores.m0: Input should be a valid number"),
        (query(scores={}), "scores: Dictionary should have at least 1 item"),
        (query(scores={f"m{i}": 0.5 for i in range(MAX_MODELS + 1)}), "scores: Dictionary should"),
        (query(scores={"": 0.5}), "scores.[key]: String should have at least 1 character"),
        (query(text="x", p_abstain=1.01), "p_abstain: Input should be less than or equal to 1"),
        (query(text="x" * (MAX_TEXT_CHARS + 1)), "text: String should have at most 32768"),
        (query(embedding=[0.0] * (MAX_EMBEDDING_DIM + 1)), "embedding: List should have at most"),
        (query(embedding=[]), "embedding: List should have at least 1 item"),
        (query(text="x", event_time=-1), "event_time: Input should be greater than or equal to 0"),
        (query(), "schema: one of scores, text or embedding is required"),
        (query(text=None), "schema: one of scores, text or embedding is required"),
        (query(text="x", scope="a b"), "scope: use 1 to 128 letters, digits"),
        (query(text="x", scope="a/b"), "scope: use 1 to 128 letters"),
        (query(text="x", scope=""), "scope: use 1 to 128 letters"),
        (query(text="x", scope="s" * 129), "scope: use 1 to 128 letters"),
        (query(text="x", scpoe="default"), "schema: scpoe: Extra inputs are not permitted"),
        (query(text="x", metadata={"a": [1]}), "metadata.a: metadata values must be a finite"),
        (query(text="x", metadata={"a": None}), "metadata.a: metadata values must be"),
        (query(text="x", metadata={"a": "v" * 1025}), "metadata.a: metadata values must be"),
        (query(text="x", metadata={f"k{i}": 1 for i in range(65)}), "metadata: Dictionary should"),
        (dumps({"query_id": "", "text": "x"}), "query_id: String should have at least 1 character"),
        (dumps({"query_id": "q" * 257, "text": "x"}), "query_id: String should have at most 256"),
        (dumps({"query_id": 7, "text": "x"}), "query_id: Input should be a valid string"),
        (dumps({"text": "x"}), "schema: query_id: Field required"),
        (b'{"query_id": "q1", "text": ', "invalid JSON: EOF while parsing"),
        (b"\xff\xfe", "invalid JSON:"),
        (b"", "invalid JSON:"),
        (b"[1, 2]", "schema: Input should be an object"),
        (b'"q1"', "schema: Input should be an object"),
        (b" " * (MAX_MESSAGE_BYTES + 1), f"too large: {MAX_MESSAGE_BYTES + 1} bytes"),
    ],
)
def test_invalid_queries_are_rejected_with_a_readable_reason(raw: bytes, expected: str) -> None:
    assert expected in reason_of(QueryMessage, raw)


def test_reason_counts_further_problems() -> None:
    reason = reason_of(QueryMessage, query(scores={"a": 2, "b": 3, "c": 4}))
    assert reason == "schema: scores.a: Input should be less than or equal to 1 (+2 more)"


def test_message_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        QueryMessage.parse(b"{")
    assert issubclass(MessageError, InvalidInputError)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"m0": 1}, {"m0": 1}),
        ({"m0": 0, "m1": 1}, {"m0": 0, "m1": 1}),
        ({"m0": True, "m1": False}, {"m0": 1, "m1": 0}),
    ],
)
def test_feedback_labels_normalise_to_int(labels: dict[str, object], expected: dict) -> None:
    message = FeedbackMessage.parse(dumps({"query_id": "q1", "scope": "s", "labels": labels}))
    assert message.labels == expected
    assert all(type(value) is int for value in message.labels.values())
    assert message.scope == "s"
    assert FeedbackMessage.parse(message.to_bytes()) == message


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"labels": {"m0": 2}}, "labels.m0: label must be 0, 1, true or false"),
        ({"labels": {"m0": -1}}, "labels.m0: label must be 0, 1, true or false"),
        ({"labels": {"m0": "1"}}, "labels.m0: label must be 0, 1, true or false"),
        ({"labels": {"m0": 1.0}}, "labels.m0: label must be 0, 1, true or false"),
        ({"labels": {"m0": None}}, "labels.m0: label must be 0, 1, true or false"),
        ({"labels": {}}, "labels: Dictionary should have at least 1 item"),
        ({"labels": [1, 0]}, "labels: Input should be an object"),
        ({}, "labels: Field required"),
        ({"labels": {"m0": 1}, "scope": "x y"}, "scope: use 1 to 128 letters"),
        ({"labels": {"m0": 1}, "scope": None}, "scope: Input should be a valid string"),
        ({"labels": {"m0": 1}, "lables": {}}, "lables: Extra inputs are not permitted"),
        ({"labels": {"m0": 1}, "event_time": "yesterday"}, "event_time: Input should be a valid"),
    ],
)
def test_invalid_feedback_is_rejected(payload: dict[str, object], expected: str) -> None:
    event = {"query_id": "q1", "scope": "s", **payload}
    assert expected in reason_of(FeedbackMessage, dumps(event))


def test_feedback_without_a_scope_is_rejected() -> None:
    """Filed under a default scope, labels of another scope's query would never join."""
    raw = dumps({"query_id": "q1", "labels": {"m0": 1}})
    assert reason_of(FeedbackMessage, raw) == "schema: scope: Field required"


def test_feedback_rejects_nan_event_time() -> None:
    raw = b'{"query_id": "q1", "scope": "s", "labels": {"m0": 1}, "event_time": NaN}'
    assert "event_time: Input should be a finite number" in reason_of(FeedbackMessage, raw)


DECISION = DecisionMessage(
    query_id="q1",
    scope="default",
    models=["m1", "m0"],
    abstain=False,
    flag_unanswerable=False,
    audit=True,
    lam=0.42,
    threshold_version=3,
    threshold_status="certified",
    alpha=0.1,
    delta=0.1,
    bound="binomial",
    scores={"m0": 0.3, "m1": 0.8},
    p_abstain=None,
    decided_at=1_700_000_000.0,
)
THRESHOLD = ThresholdMessage(
    scope="default",
    version=4,
    lam=1.0,
    status="fallback",
    certified=False,
    n=10,
    alpha=0.1,
    delta=0.1,
    bound="binomial",
    rule="cumulative",
    miss="answerable",
    m_star=-1,
    reason="start",
)
ALERT = AlertMessage(scope="default", kind="drift", message="miss rate 0.3", evidence={"n": 200})
DEAD = DeadLetter.from_error(
    b"\x00\xffnot json", ValueError("boom"), source_topic="racer.queries", partition=2, offset=9
)


@pytest.mark.parametrize("message", [DECISION, THRESHOLD, ALERT, DEAD])
def test_outbound_messages_round_trip_through_json(message: DecisionMessage) -> None:
    raw = message.to_bytes()
    assert isinstance(raw, bytes) and isinstance(json.loads(raw), dict)
    assert type(message).parse(raw) == message


def test_outbound_readers_tolerate_fields_added_by_newer_writers() -> None:
    payload = {**json.loads(DECISION.to_bytes()), "added_later": 1}
    assert DecisionMessage.parse(dumps(payload)) == DECISION


def test_undefined_statistics_serialise_as_null() -> None:
    payload = json.loads(THRESHOLD.to_bytes())
    assert payload["empirical_risk"] is None and payload["window_start"] is None
    assert payload["computed_at"] > 0  # stamped when built


@pytest.mark.parametrize(
    "changes",
    [{"threshold_status": "unknown"}, {"lam": float("nan")}, {"bound": "gauss"}],
)
def test_outbound_messages_validate_what_we_publish(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DecisionMessage(**{**DECISION.model_dump(), **changes})


def test_outbound_alert_kind_is_checked() -> None:
    with pytest.raises(ValidationError):
        AlertMessage(scope="default", kind="fire", message="x")


@pytest.mark.parametrize(
    ("error", "error_class", "reason"),
    [
        (MessageError("schema: scores.m3: Input should be less than or equal to 1"),
         "MessageError", "schema: scores.m3: Input should be less than or equal to 1"),
        (KeyError("m9"), "KeyError", "'m9'"),
        (RuntimeError(), "RuntimeError", "RuntimeError"),
        (ValueError("x" * 5000), "ValueError", "x" * 1000),
    ],
)  # fmt: skip
def test_dead_letter_records_the_error(error: Exception, error_class: str, reason: str) -> None:
    raw = b'{"query_id": \xff'
    dead = DeadLetter.from_error(
        raw, error, source_topic="racer.feedback", partition=1, offset=77, key=b"q\xff", at=5.0
    )
    assert (dead.error_class, dead.reason) == (error_class, reason)
    assert (dead.source_topic, dead.partition, dead.offset, dead.at) == (
        "racer.feedback",
        1,
        77,
        5.0,
    )
    assert dead.key == "q\\xff"
    assert dead.raw == raw and base64.b64decode(dead.raw_b64) == raw
    assert DeadLetter.parse(dead.to_bytes()).raw == raw


def test_dead_letter_of_a_tombstone_with_an_explicit_error_class() -> None:
    dead = DeadLetter.from_error(
        None,
        MessageError("empty value"),
        source_topic="racer.queries",
        partition=0,
        offset=3,
        error_class="EmptyValue",
    )
    assert (dead.raw, dead.raw_b64, dead.error_class) == (None, None, "EmptyValue")
    assert DeadLetter.parse(dead.to_bytes()) == dead


def test_dead_letter_from_a_real_parse_failure() -> None:
    raw = query(scores={"m3": 1.5})
    with pytest.raises(MessageError) as caught:
        QueryMessage.parse(raw)
    dead = DeadLetter.from_error(
        raw, caught.value, source_topic="racer.queries", partition=0, offset=1, key="q1"
    )
    assert dead.reason == "schema: scores.m3: Input should be less than or equal to 1"
    assert dead.key == "q1" and dead.at > 0


# -- schema versions: a rolling deploy where producers are upgraded first ---------------------


def test_a_newer_minor_version_may_add_fields_an_older_worker_ignores():
    raw = query(text="x", schema_version="1.3", priority="high")
    message = QueryMessage.parse(raw)
    assert message.schema_version == "1.3" and "priority" not in message.model_dump()
    assert isinstance(message, QueryMessage)
    feedback = FeedbackMessage.parse(
        dumps(
            {
                "query_id": "q1",
                "scope": "s",
                "labels": {"m0": 1},
                "schema_version": "1.1",
                "grade": 0.5,
            }
        )
    )
    assert feedback.labels == {"m0": 1}


@pytest.mark.parametrize("version", [None, "1.0"])
def test_an_unknown_field_of_this_version_is_a_typo(version):
    fields = {"scpoe": "default"} | ({"schema_version": version} if version else {})
    with pytest.raises(MessageError, match="scpoe: Extra inputs are not permitted"):
        QueryMessage.parse(query(text="x", **fields))


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("2.0", "schema: schema_version: this worker reads schema 1.x, not 2.0: upgrade it first"),
        ("1", "schema: schema_version: use MAJOR.MINOR, e.g. '1.0'"),
        ("1.x", "schema: schema_version: use MAJOR.MINOR, e.g. '1.0'"),
    ],
)
def test_another_major_version_or_a_bad_version_is_rejected(version, reason):
    with pytest.raises(MessageError) as caught:
        QueryMessage.parse(query(text="x", schema_version=version, extra_field=1))
    assert caught.value.reason.startswith(reason)


def test_a_newer_minor_version_still_validates_the_fields_it_shares():
    with pytest.raises(MessageError, match=r"scores\.m0"):
        QueryMessage.parse(query(schema_version="1.2", scores={"m0": 2.0}, added=1))


def test_the_hot_path_spells_the_decision_fields_as_the_model_does():
    assert list(DecisionFields.__annotations__) == list(DecisionMessage.model_fields)
