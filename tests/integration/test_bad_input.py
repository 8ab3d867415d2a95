"""Bad input: thousands of malformed and hostile messages, mixed with valid ones, to one worker.

Hypothesis builds the messages (seeded: ``derandomize=True``, so every run of the same code
sends the same bytes; hypothesis also draws constants from the project's modules, so a code
change may change the corpus, not its classes). Each generated message knows what it is
when it is made: a valid message, or one bad class (bad JSON, invalid UTF-8, wrong types,
NaN/Infinity, huge strings, oversized payloads, unknown models or scopes, extra fields,
out-of-range values, empty or non-object JSON...). A valid query id that repeats is a
redelivery, not bad input: it must get the first decision again. After the run the worker
must be alive and still processing; the dead-letter topic must hold exactly the bad messages
(same raw bytes, each with a reason); every valid query must have its decision and every
valid feedback event its effect in Redis.

The fast property tests at the end need no broker: the parsers raise nothing but
`MessageError` on arbitrary bytes or JSON.

Figures: stdout (``-s``) and ``artifacts/reliability/bad_input.json``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from racer_online.messages import (
    MAX_EMBEDDING_DIM,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_ITEMS,
    MAX_METADATA_VALUE_CHARS,
    MAX_TEXT_CHARS,
    DeadLetter,
    FeedbackMessage,
    MessageError,
    QueryMessage,
)
from racer_online.service.window import pack_scores, quantise, unpack_scores
from racer_online.store import RedisStore, StoreConfig, keys
from racer_online.store.records import PendingRecord, mask_width, query_hash

pytestmark = pytest.mark.integration

MODELS = ("m0", "m1", "m2")
BAD_PER_TOPIC = 10_000
GOOD_QUERIES, GOOD_FEEDBACK = 1_500, 1_500
OVERSIZED_PER_TOPIC = 4  # each > MAX_MESSAGE_BYTES; few, since the broker keeps everything
TOMBSTONES_PER_TOPIC = 5  # records with no value at all
# Apache Kafka refuses records over ~1 MiB (message.max.bytes); the oversized ones must
# reach the worker, whose own 1 MiB limit is under test, so their topics take 4 MiB.
LARGE_RECORDS = pytest.mark.topic_config(**{"max.message.bytes": str(4 << 20)})
POOL = 1_500  # valid query ids g00000..g01499, drawn with repeats (redeliveries)
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "reliability"


@dataclass(frozen=True)
class Item:
    """One generated message: its bytes and key, its class, and for a valid one what it is."""

    kind: str  # "valid" or the bad class
    raw: bytes | None
    key: bytes | None
    good: Any = None  # QueryMessage / FeedbackMessage of a valid message

    @property
    def bad(self) -> bool:
        return self.kind != "valid"


# -- valid messages --------------------------------------------------------------------------

unit = st.floats(0.0, 1.0, allow_nan=False)
short_text = st.text(max_size=12)
metadata_value = st.one_of(
    st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), short_text,
)  # fmt: skip
metadata = st.dictionaries(short_text, metadata_value, max_size=4)
pool_id = st.integers(0, POOL - 1).map(lambda i: f"g{i:05d}")
encode = st.sampled_from([True, False])  # ensure_ascii: \u escapes or raw UTF-8


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


def query_fields(scope: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "query_id": pool_id,
            "scope": st.just(scope),
            "scores": st.fixed_dictionaries({m: unit for m in MODELS}),
        },
        optional={
            "p_abstain": st.none() | unit,
            "event_time": st.none() | st.floats(0, 4e9),
            "metadata": metadata,
            "text": st.none() | short_text,
            "embedding": st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=4),
        },
    )


def feedback_fields(scope: str) -> st.SearchStrategy[dict[str, Any]]:
    # Mostly ids of valid queries, some never queried (the labels are held for them);
    # event_time in the future (counted) or from 1970 (late: dropped, a defined outcome).
    ids = st.one_of(pool_id, pool_id, pool_id, st.integers(0, 99).map(lambda i: f"h{i:03d}"))
    label = st.sampled_from([0, 1, True, False])
    labels = st.fixed_dictionaries(dict.fromkeys(MODELS, label)) | st.dictionaries(
        st.sampled_from(MODELS), label, min_size=1
    )  # every model graded at once, or some of them
    return st.fixed_dictionaries(
        {"query_id": ids, "scope": st.just(scope), "labels": labels},
        optional={
            "event_time": st.none() | st.floats(4e9, 5e9) | st.floats(0, 1e6),
            "grader": st.none() | short_text,
        },
    )


@st.composite
def valid(draw: Any, fields: st.SearchStrategy[dict[str, Any]], model: Any) -> Item:
    value = draw(fields)
    raw = dumps(value, draw(encode))
    return Item("valid", raw, value["query_id"].encode(), model.parse(raw))


# -- bad messages: each strategy makes one class -----------------------------------------------

hostile_key = st.none() | st.binary(max_size=40)
not_utf8 = st.sampled_from(
    [b"\xff", b"\xfe\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80"]
)
number_token = st.sampled_from(
    [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"nan", b"inf"]
)
json_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | short_text
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner,
                                                                             max_size=3),
    max_leaves=6,
)  # fmt: skip
letters = st.text(alphabet="abcxyz! ", min_size=1, max_size=6)  # never a number, even lax
not_a_number = st.one_of(  # null is no number either, but it means "absent" where optional
    st.lists(json_scalar, max_size=2), st.dictionaries(short_text, json_scalar, max_size=2),
    letters | st.just(""),
)  # fmt: skip
not_a_string = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.lists(json_scalar, max_size=2), st.dictionaries(short_text, json_scalar, max_size=2),
)  # fmt: skip
not_a_dict = st.one_of(st.booleans(), st.integers(), short_text, st.lists(json_scalar, max_size=2))


def marked(value: dict[str, Any], path: tuple[str, ...], mark: str) -> dict[str, Any]:
    """A copy of ``value`` with the field at ``path`` set to a placeholder string."""
    out = json.loads(json.dumps(value))
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = mark
    return out


@st.composite
def corrupted_json(draw: Any, fields: st.SearchStrategy[dict[str, Any]]) -> bytes:
    raw = dumps(draw(fields))
    how = draw(st.sampled_from(["truncate", "trailing", "quotes", "binary", "control"]))
    if how == "truncate":  # a proper prefix of an object is never complete
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "trailing":
        return raw + draw(st.sampled_from([b"}", b",", b"]", b"x", b"\x00", b'{"a":1}']))
    if how == "quotes":
        return raw.replace(b'"', b"'")
    if how == "control":  # a raw newline inside a string
        return raw.replace(b'"query_id": "', b'"query_id": "\n', 1)
    return b"\x00" + draw(st.binary(max_size=60))  # a NUL first: never JSON


@st.composite
def bad_utf8(draw: Any, fields: st.SearchStrategy[dict[str, Any]], paths: list[Any]) -> bytes:
    path = draw(st.sampled_from(paths))
    raw = dumps(marked(draw(fields), path, "@@X@@"))
    return raw.replace(b"@@X@@", b"ok" + draw(not_utf8))


@st.composite
def bad_number(draw: Any, fields: st.SearchStrategy[dict[str, Any]], paths: list[Any]) -> bytes:
    path = draw(st.sampled_from(paths))
    raw = dumps(marked(draw(fields), path, "@@N@@"))
    return raw.replace(b'"@@N@@"', draw(number_token))


@st.composite
def replaced(draw: Any, fields: st.SearchStrategy[dict[str, Any]], table: dict[Any, Any]) -> bytes:
    """One field (a path) set to a value drawn from the strategy the table gives it."""
    path = draw(st.sampled_from(sorted(table)))
    value = json.loads(json.dumps(draw(fields)))
    node = value
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = draw(table[path])
    return dumps(value, draw(encode))


@st.composite
def extra_field(draw: Any, fields: st.SearchStrategy[dict[str, Any]], known: set[str]) -> bytes:
    value = dict(draw(fields))
    name = draw(st.text(alphabet="abz_ é", max_size=8).filter(lambda k: k not in known))
    value[name] = draw(json_scalar)
    return dumps(value, draw(encode))


@st.composite
def without(draw: Any, fields: st.SearchStrategy[dict[str, Any]], required: list[str]) -> bytes:
    value = dict(draw(fields))
    for name in draw(st.lists(st.sampled_from(required), min_size=1, unique=True)):
        value.pop(name, None)
    return dumps(value)


def long_str(low: int, high: int) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.sampled_from("ab-é€😀"), st.integers(low, high))


def other_scope(scope: str) -> st.SearchStrategy[str]:
    safe = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=12)
    return (safe | st.just("default") | st.just(scope + "x")).filter(lambda s: s != scope)


def lone_surrogate(fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    escape = st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud83d", b"\\ud800\\u0041"])
    return st.builds(
        lambda v, e: dumps(marked(v, ("query_id",), "@@S@@")).replace(b"@@S@@", e), fields, escape
    )


deep_nesting = st.builds(
    lambda depth, opener: b'{"query_id": "d", "scores": ' + opener * depth,
    st.integers(200, 20_000),
    st.sampled_from([b"[", b'{"a":']),
)
not_an_object = st.one_of(
    st.lists(json_value, max_size=3), json_scalar
).map(lambda v: dumps(v))  # fmt: skip
empty = st.sampled_from([b"{}", b"", b" ", b"null", b"[]", b'""', b"{ }"])


def dropped_score(value: dict[str, Any], model: str) -> bytes:
    return dumps({**value, "scores": {k: s for k, s in value["scores"].items() if k != model}})


def bad_queries(scope: str, fields: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    score_paths = [("scores", m) for m in MODELS]
    string_paths = [("query_id",), ("metadata", "k"), ("text",), ("scores", "m0")]
    wrong_types = {
        ("query_id",): not_a_string, ("scope",): not_a_string, ("scores",): not_a_dict,
        ("scores", "m1"): st.none() | not_a_number, ("p_abstain",): not_a_number,
        ("event_time",): not_a_number, ("metadata",): st.none() | not_a_dict,
        ("metadata", "k"): st.none() | st.lists(json_scalar, max_size=2),
        ("text",): st.integers() | st.lists(short_text, max_size=2),
        ("embedding",): st.just([]) | short_text | st.lists(letters, min_size=1, max_size=2),
    }  # fmt: skip
    huge = {
        ("query_id",): long_str(257, 3000), ("scope",): st.just("s" * 129),
        ("text",): long_str(MAX_TEXT_CHARS + 1, MAX_TEXT_CHARS + 500),
        ("metadata", "k"): long_str(MAX_METADATA_VALUE_CHARS + 1, 4000),
        ("metadata",): st.builds(lambda n: {f"k{i}": i for i in range(n)},
                                 st.integers(MAX_METADATA_ITEMS + 1, 200)),
        ("embedding",): st.builds(lambda n: [0.5] * n, st.integers(MAX_EMBEDDING_DIM + 1, 9000)),
        ("scores", "m" * 129): unit,
    }  # fmt: skip
    outside = st.floats(max_value=-1e-300) | st.floats(min_value=1.0 + 2**-52)
    out_of_range = {
        **dict.fromkeys(score_paths, outside),
        ("p_abstain",): outside,
        ("event_time",): st.floats(max_value=-1e-300),
    }
    unknown_model = {("scores", "zz"): unit, ("scores", "m0 "): unit, ("scores", "M1"): unit}
    number_paths = [*score_paths, ("p_abstain",), ("event_time",), ("metadata", "k")]
    return {
        "bad_json": corrupted_json(fields),
        "invalid_utf8": bad_utf8(fields, string_paths),
        "lone_surrogate": lone_surrogate(fields),
        "nan_infinity": bad_number(fields, number_paths),
        "wrong_type": replaced(fields, wrong_types),
        "huge_string": replaced(fields, huge),
        "out_of_range": replaced(fields, out_of_range),
        "unknown_model": replaced(fields, unknown_model),
        "missing_model": st.builds(dropped_score, fields, st.sampled_from(MODELS)),
        "unknown_scope": replaced(fields, {("scope",): other_scope(scope)}),
        "extra_field": extra_field(fields, set(QueryMessage.model_fields)),
        "missing_field": without(fields, ["query_id", "scores"]),
        "no_scores": st.builds(lambda v, extra: dumps({"query_id": v["query_id"], "scope": scope,
                                                       **extra}),
                               fields, st.sampled_from([{"text": "hi"}, {"embedding": [0.1]}])),
        "empty": empty,
        "not_an_object": not_an_object,
        "deep_nesting": deep_nesting,
    }  # fmt: skip


def bad_feedback(scope: str, fields: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    label_values = st.one_of(
        st.integers().filter(lambda y: y not in (0, 1)), st.floats(allow_nan=False),
        st.sampled_from(["1", "0", "true", None, [1], {"y": 1}]),
    )  # fmt: skip
    wrong_types = {
        ("query_id",): not_a_string, ("scope",): not_a_string, ("labels",): not_a_dict,
        ("labels", "m1"): label_values, ("event_time",): not_a_number,
        ("grader",): not_a_string.filter(lambda v: v is not None),
    }  # fmt: skip
    huge = {
        ("query_id",): long_str(257, 3000), ("scope",): st.just("s" * 129),
        ("grader",): long_str(257, 3000), ("labels", "m" * 129): st.just(1),
    }  # fmt: skip
    out_of_range = {
        ("labels", "m0"): st.sampled_from([-1, 2, 3, -0.5, 0.5, 1.5, 255]),
        ("event_time",): st.floats(max_value=-1e-300),
    }
    return {
        "bad_json": corrupted_json(fields),
        "invalid_utf8": bad_utf8(fields, [("query_id",), ("grader",), ("scope",)]),
        "lone_surrogate": lone_surrogate(fields),
        "nan_infinity": bad_number(fields, [("labels", "m0"), ("event_time",)]),
        "wrong_type": replaced(fields, wrong_types),
        "huge_string": replaced(fields, huge),
        "out_of_range": replaced(fields, out_of_range),
        "unknown_model": replaced(fields, {("labels", "zz"): st.sampled_from([0, 1])}),
        "unknown_scope": replaced(fields, {("scope",): other_scope(scope)}),
        "extra_field": extra_field(fields, set(FeedbackMessage.model_fields)),
        "missing_field": without(fields, ["query_id", "labels"]),
        "empty_labels": st.builds(lambda v: dumps({**v, "labels": {}}), fields),
        "empty": empty,
        "not_an_object": not_an_object,
        "deep_nesting": deep_nesting,
    }


def oversized(fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Valid but for its size: padded past MAX_MESSAGE_BYTES by up to 64 KiB."""

    def build(value: dict[str, Any], extra: int) -> bytes:
        raw = dumps({**value, "grader": ""} if "labels" in value else {**value, "text": ""})
        field = b'"grader": ""' if "labels" in value else b'"text": ""'
        pad = MAX_MESSAGE_BYTES + extra - len(raw)
        return raw.replace(field, field[:-1] + b"x" * pad + b'"')

    return st.builds(build, fields, st.integers(1, 64 * 1024))


# -- generation: hypothesis draws, seeded, in batches ----------------------------------------


def draw_many(strategy: st.SearchStrategy[Any], count: int, *, batch: int = 50) -> list[Any]:
    """``count`` values of ``strategy``, the same on every run (``derandomize``)."""
    got: list[Any] = []
    batch = min(batch, count)

    @settings(
        max_examples=-(-count // batch) + 2,  # spares, in case a draw overruns
        derandomize=True, database=None, deadline=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def collect(values: list[Any]) -> None:
        got.extend(values)

    collect()
    assert len(got) >= count, f"hypothesis produced {len(got)} of {count}"
    return got[:count]


PLACEHOLDER = "scope-under-test"  # the test's scope name replaces it in the bytes


def corpus(topic: str) -> list[Item]:
    """Valid and bad messages of one topic, shuffled together (seeded), for PLACEHOLDER.

    Valid messages are drawn whole. Bad ones start from one of a few hundred valid bodies
    (drawn whole once) and draw only what makes them bad: hypothesis spends ~0.1 ms per
    choice, and a whole query body takes ~25 of them.
    """
    if topic == "queries":
        fields, model, n_good = query_fields(PLACEHOLDER), QueryMessage, GOOD_QUERIES
        bases = st.sampled_from(draw_many(fields, 400))
        bad = bad_queries(PLACEHOLDER, bases)
    else:
        fields, model, n_good = feedback_fields(PLACEHOLDER), FeedbackMessage, GOOD_FEEDBACK
        bases = st.sampled_from(draw_many(fields, 400))
        bad = bad_feedback(PLACEHOLDER, bases)
    tagged = st.one_of([st.tuples(st.just(kind), bad[kind], hostile_key) for kind in sorted(bad)])
    n_bad = BAD_PER_TOPIC - OVERSIZED_PER_TOPIC - TOMBSTONES_PER_TOPIC
    items = [Item(kind, raw, key) for kind, raw, key in draw_many(tagged, n_bad)]
    items += [
        Item("oversized", raw, None) for raw in draw_many(oversized(bases), OVERSIZED_PER_TOPIC)
    ]
    items += [Item("tombstone", None, b"t") for _ in range(TOMBSTONES_PER_TOPIC)]
    items += draw_many(valid(fields, model), n_good)
    order = np.random.default_rng(7).permutation(len(items))
    return [items[i] for i in order]


def for_scope(items: list[Item], scope: str, model: Any) -> list[Item]:
    """The corpus with the test's scope name in place of PLACEHOLDER (not shorter than it,
    so an oversized message stays oversized)."""
    assert len(scope) >= len(PLACEHOLDER)
    out = []
    for item in items:
        raw = None if item.raw is None else item.raw.replace(PLACEHOLDER.encode(), scope.encode())
        good = None if item.bad else model.parse(raw)
        out.append(Item(item.kind, raw, item.key, good))
    return out


# -- the run through the broker ----------------------------------------------------------------


async def publish(deployment: Any, topic: str, items: list[Item]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=deployment.bootstrap, linger_ms=5, max_request_size=4 << 20
    )
    await producer.start()
    try:
        for first in range(0, len(items), 500):
            futures = [
                await producer.send(deployment.topics[topic], item.raw, key=item.key)
                for item in items[first : first + 500]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    deployment: Any, topic: str, done: Callable[[list[bytes]], bool], *, timeout: float
) -> list[bytes]:
    """Raw values of ``topic`` from the start until ``done`` holds (or the time is up)."""
    consumer = AIOKafkaConsumer(
        deployment.topics[topic], bootstrap_servers=deployment.bootstrap,
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
    )  # fmt: skip
    await consumer.start()
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(got) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got += [m.value for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    return got


def first_valid(items: list[Item]) -> dict[str, Any]:
    """Each valid query id's first valid message, in send order (one partition per key)."""
    first: dict[str, Any] = {}
    for item in items:
        if not item.bad:
            first.setdefault(item.good.query_id, item.good)
    return first


def expected_labels(items: list[Item]) -> dict[str, dict[str, int]]:
    """Labels each query id must hold: the first valid label of each model (late ones drop)."""
    horizon = time.time() - 86_400.0
    out: dict[str, dict[str, int]] = {}
    for item in items:
        message = item.good
        if item.bad or (message.event_time is not None and message.event_time < horizon):
            continue
        for model, y in message.labels.items():
            out.setdefault(message.query_id, {}).setdefault(model, int(y))
    return out


def identity(raw: bytes | None) -> str:
    """A sent value's identity: the SHA-256 of its bytes (None: a record without a value)."""
    return "no value" if raw is None else hashlib.sha256(raw).hexdigest()


def letter_identity(letter: bytes) -> str:
    """The identity of the value a dead letter stands for. The letter carries the raw bytes
    (base64), or, when they would not fit a Kafka record, their start and their SHA-256."""
    fields = json.loads(letter)
    if fields.get("raw_truncated"):
        return str(fields["raw_sha256"])
    raw = fields["raw_b64"]
    return identity(None if raw is None else base64.b64decode(raw))


def crash_lines(log: str) -> list[str]:
    """Lines of a worker log that show a crash (an agent or the worker died of an error)."""
    marks = ("Traceback", "crashed", "Crashed", "CRITICAL", "Fatal")
    return [line for line in log.splitlines() if any(m in line for m in marks)]


def has_crashed(deployment: Any) -> bool:
    return bool(crash_lines(deployment.log(0)))


@LARGE_RECORDS
async def test_ten_thousand_bad_messages_per_topic_go_to_the_dlq_and_the_rest_is_processed(
    deployment, redis_url
):
    deployment.write_scopes(MODELS)
    worker = deployment.start_worker()  # it starts while the messages are drawn
    started = time.monotonic()
    queries = for_scope(corpus("queries"), deployment.scope, QueryMessage)
    feedback = for_scope(corpus("feedback"), deployment.scope, FeedbackMessage)
    generated_s = time.monotonic() - started
    bad = {"queries": [i for i in queries if i.bad], "feedback": [i for i in feedback if i.bad]}
    # A valid id sent again with other scores is no redelivery: its first decision stands
    # and the repeat goes to the dead-letter topic (reused_query_id).
    first_of = first_valid(queries)
    reused = [i for i in queries if not i.bad and i.good is not first_of[i.good.query_id]
              and decided_blob(i.good) != decided_blob(first_of[i.good.query_id])]  # fmt: skip
    dead = {"queries": bad["queries"] + reused, "feedback": bad["feedback"]}
    good_queries = [i for i in queries if not i.bad and not any(i is r for r in reused)]
    n_bad = sum(map(len, dead.values()))

    sent_at = time.monotonic()
    await asyncio.gather(publish(deployment, "queries", queries),
                         publish(deployment, "feedback", feedback))  # fmt: skip
    crashed = partial(has_crashed, deployment)  # then waiting on is no use
    dlq = await read_topic(
        deployment, "dlq", lambda got: len(got) >= n_bad or crashed(), timeout=90
    )
    decisions = await read_topic(
        deployment, "decisions", lambda got: len(got) >= len(good_queries) or crashed(), timeout=30
    )
    processed_s = time.monotonic() - sent_at
    # Still processing afterwards: one more valid query gets its decision.
    probe = {"query_id": "probe", "scope": deployment.scope, "scores": dict.fromkeys(MODELS, 0.5)}
    await deployment.send("queries", [probe])
    after = await read_topic(
        deployment, "decisions",
        lambda got: any(b'"probe"' in raw for raw in got) or crashed(), timeout=30,
    )  # fmt: skip

    # Dead letters: exactly the bad messages, raw bytes and all, each with a reason.
    letters = [DeadLetter.model_validate_json(raw) for raw in dlq]
    sent = {name: Counter(identity(i.raw) for i in dead[name]) for name in dead}
    got = {name: Counter(letter_identity(raw) for raw in dlq
                         if json.loads(raw)["source_topic"] == deployment.topics[name])
           for name in bad}  # fmt: skip
    missing = {name: sent[name] - got[name] for name in bad}
    unexpected = {name: got[name] - sent[name] for name in bad}
    by_digest = {identity(i.raw): i.raw for items in dead.values() for i in items}
    cut_wrong = sum(  # a cut raw must be the start of the message it stands for
        not by_digest.get(letter_identity(raw), b"").startswith(d.raw or b"")
        for raw, d in zip(dlq, letters, strict=True) if json.loads(raw).get("raw_truncated")
    )  # fmt: skip
    reasons = Counter(d.error_class for d in letters)
    no_reason = sum(not d.reason for d in letters)

    # Decisions: one per valid query message; a repeated id gets the first decision again.
    first = first_valid(queries)
    per_id: dict[str, list[dict[str, Any]]] = {}
    for raw in decisions:
        decision = json.loads(raw)
        per_id.setdefault(decision["query_id"], []).append(decision)
    repeats = len(good_queries) - len(first)
    # A redelivery's decision is rebuilt from the query and what the store kept: the same
    # bytes as the first one, not only the same fields.
    raws: dict[str, list[bytes]] = {}
    for raw in decisions:
        raws.setdefault(json.loads(raw)["query_id"], []).append(raw)
    differing = sum(r != rs[0] for rs in raws.values() for r in rs[1:])
    wrong_scores = sum(per_id[q][0]["scores"] != decided_scores(m) for q, m in first.items()
                       if q in per_id)  # fmt: skip

    # Feedback: the first valid label of each model is in Redis; complete records entered.
    labels = expected_labels(feedback)
    config = StoreConfig({deployment.scope: MODELS}, pending_ttl_s=86_400, window_size=10**4)
    store = RedisStore.from_url(redis_url, config)
    try:
        stored = await store.pending_records(deployment.scope, list(labels))
        window = await store.read_window(deployment.scope)
        held: dict[bytes, bytes] = {}  # labels of ids never routed, waiting for their query
        for key in await store.client.keys(keys.held(deployment.scope) + "*"):
            held |= await store.client.hgetall(key)
    finally:
        await store.close()
    label_mismatches = sum(
        (held_labels(held.get(query_hash(q), b"")) if got is None else stored_labels(got[1]))
        != want
        for (q, want), got in zip(labels.items(), stored, strict=True)
    )
    entering = Counter(
        (tuple(decided_scores(first[q]).values()), "".join(str(want[m]) for m in MODELS))
        for q, want in labels.items() if q in first and len(want) == len(MODELS)
    )  # fmt: skip
    entered = Counter(
        (tuple(unpack_scores(e.scores)[: len(MODELS)].tolist()), e.labels) for e in window
    )

    log = deployment.log(0)
    alive = worker.poll() is None
    if crash_lines(log):
        deployment.kill(worker)  # a worker with a crashed agent hangs on SIGTERM
    figures = {
        "sent": {"queries": len(queries), "feedback": len(feedback)},
        "bad_sent": {name: len(items) for name, items in bad.items()},
        "bad_by_class": {name: dict(sorted(Counter(i.kind for i in items).items()))
                         for name, items in bad.items()},
        "dlq_received": len(letters), "dlq_missing": sum(sum(c.values()) for c in missing.values()),
        "dlq_unexpected": sum(sum(c.values()) for c in unexpected.values()),
        "dlq_raw_cut": sum(b'"raw_truncated":true' in raw for raw in dlq),
        "dlq_cut_not_a_prefix": cut_wrong,
        "dlq_error_classes": dict(reasons.most_common()), "dlq_without_reason": no_reason,
        "valid_queries": len(good_queries), "distinct_valid_query_ids": len(first),
        "repeated_valid_ids": repeats, "decisions": len(decisions),
        "decided_ids": len(per_id), "repeat_decisions_differing": differing,
        "decision_scores_wrong": wrong_scores,
        "valid_feedback": sum(not i.bad for i in feedback),
        "feedback_ids_checked": len(labels), "label_mismatches": label_mismatches,
        "window_expected": sum(entering.values()), "window_records": len(window),
        "window_mismatch": sum(((entering - entered) + (entered - entering)).values()),
        "worker_alive": alive, "crash_lines": crash_lines(log)[:5],
        "probe_decided": any(b'"probe"' in raw for raw in after),
        "generate_s": round(generated_s, 1), "process_s": round(processed_s, 1),
    }  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bad_input.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nbad_input: {json.dumps(figures)}")
    summary = (
        f"{n_bad} bad sent, {len(letters)} dead letters ({figures['dlq_missing']} missing, "
        f"{figures['dlq_unexpected']} unexpected); {len(good_queries)} valid queries "
        f"({repeats} repeated ids) -> {len(decisions)} decisions for {len(per_id)} ids, "
        f"{differing} repeats differing; {label_mismatches} label mismatches of {len(labels)} "
        f"ids; window {len(window)} of {figures['window_expected']}; worker alive "
        f"{figures['worker_alive']}, crash lines {figures['crash_lines'][:2]}"
    )
    assert figures["worker_alive"] and not figures["crash_lines"], summary
    assert figures["probe_decided"], summary
    assert len(letters) == n_bad and not figures["dlq_missing"] and not no_reason, summary
    assert cut_wrong == 0, summary
    assert len(decisions) == len(good_queries) and len(per_id) == len(first), summary
    assert differing == 0 and wrong_scores == 0, summary
    assert label_mismatches == 0 and figures["window_mismatch"] == 0, summary


# -- two edge cases of the run above, each on its own --------------------------------------------


async def dead_letters_and_probe(deployment: Any, values: list[bytes | None], topic: str) -> Any:
    """Send ``values`` to ``topic``, then a valid query; return (letters, probe decided)."""
    deployment.write_scopes(MODELS)
    worker = deployment.start_worker()
    items = [Item("bad", raw, b"k") for raw in values]
    await publish(deployment, topic, items)
    probe = {"query_id": "probe", "scope": deployment.scope, "scores": dict.fromkeys(MODELS, 0.5)}
    await deployment.send("queries", [probe])
    crashed = partial(has_crashed, deployment)
    decided = await read_topic(
        deployment, "decisions",
        lambda got: any(b'"probe"' in raw for raw in got) or crashed(), timeout=30,
    )  # fmt: skip
    letters = await read_topic(
        deployment, "dlq", lambda got: len(got) >= len(values) or crashed(), timeout=10
    )
    if crashed():
        deployment.kill(worker)  # a worker with a crashed agent hangs on SIGTERM
    return letters, any(b'"probe"' in raw for raw in decided)


@pytest.mark.parametrize("topic", ["queries", "feedback"])
async def test_a_record_without_a_value_goes_to_the_dlq(deployment, topic):
    letters, decided = await dead_letters_and_probe(deployment, [None], topic)
    crashes = crash_lines(deployment.log(0))
    assert len(letters) == 1 and decided and not crashes, (
        f"a tombstone on {topic}: {len(letters)} dead letters, later query decided: {decided}; "
        f"{crashes[:2]}"
    )
    assert json.loads(letters[0])["raw_b64"] is None


@LARGE_RECORDS
async def test_a_dead_letter_fits_a_kafka_record_whatever_the_message_size(deployment):
    body = {"query_id": "big", "scope": deployment.scope, "scores": dict.fromkeys(MODELS, 0.5)}
    under_limit = dumps({**body, "text": "x" * 900_000})  # too long a text, under the limit
    over_limit = dumps({**body, "text": "x" * (MAX_MESSAGE_BYTES + 10)})
    letters, decided = await dead_letters_and_probe(
        deployment, [under_limit, over_limit], "queries"
    )
    crashes = crash_lines(deployment.log(0))
    assert len(letters) == 2 and decided and not crashes, (
        f"{len(letters)} of 2 dead letters for messages of {len(under_limit)} and "
        f"{len(over_limit)} bytes, later query decided: {decided}; {crashes[:2]}"
    )
    assert sorted(map(letter_identity, letters)) == sorted(map(identity, [under_limit, over_limit]))


# -- the parsers alone: nothing but MessageError, whatever the bytes -----------------------------

FIELD_NAMES = sorted(
    set(QueryMessage.model_fields) | set(FeedbackMessage.model_fields) | set(MODELS)
)
any_text = st.text(st.characters(codec=None)) | st.text(st.characters(categories=["Cs"]))
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | any_text, inner, max_size=6)
    ),
    max_leaves=25,
)


def only_message_errors(raw: bytes | str) -> None:
    for model in (QueryMessage, FeedbackMessage):
        try:
            model.parse(raw)
        except MessageError as error:
            assert error.reason and "\n" not in error.reason


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=400))
def test_parsers_raise_only_message_error_on_arbitrary_bytes(raw: bytes) -> None:
    only_message_errors(raw)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(json_documents, st.booleans())
def test_parsers_raise_only_message_error_on_arbitrary_json(
    document: Any, ascii_only: bool
) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)  # NaN and Infinity tokens included
    only_message_errors(text.encode("utf-8", "surrogatepass"))  # a lone surrogate: bad UTF-8
    only_message_errors(text)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.sampled_from(FIELD_NAMES), json_documents, max_size=6))
def test_parsers_raise_only_message_error_on_near_messages(fields: dict[str, Any]) -> None:
    only_message_errors(json.dumps(fields).encode())


def decided_scores(query: QueryMessage) -> dict[str, float]:
    """The scores a decision reports and the window holds: the query's, quantised."""
    assert query.scores is not None
    values = quantise(np.array([query.scores[m] for m in MODELS]))
    return dict(zip(MODELS, values.tolist(), strict=True))


def decided_blob(query: QueryMessage) -> bytes:
    """The quantised scores a query is decided on, packed (what its record's content hash
    covers)."""
    if query.scores is None:
        return b""
    scores = quantise(np.array([[query.scores[m] for m in MODELS]]))
    given = query.p_abstain
    p_abstain = quantise(np.array([np.prod(1.0 - scores) if given is None else given]))
    return pack_scores(scores, p_abstain)[0]


def held_labels(masks: bytes) -> dict[str, int]:
    width = mask_width(len(MODELS))
    if not masks:
        return {}
    known, correct = (int.from_bytes(masks[i * width : (i + 1) * width], "little") for i in (0, 1))
    return {m: correct >> j & 1 for j, m in enumerate(MODELS) if known >> j & 1}


def stored_labels(record: PendingRecord) -> dict[str, int]:
    text = record.labels(len(MODELS))
    return {m: int(y) for m, y in zip(MODELS, text, strict=True) if y != "?"}
