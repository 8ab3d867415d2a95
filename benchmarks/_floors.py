"""The floors a worker is compared with, each in its own process like a worker: a Faust agent
that batches and sends but routes nothing, and a raw aiokafka consume-and-produce."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks._harness import Services
from benchmarks._load import PARTITIONS, producer, tail_consumer, use_broker
from racer_online.testing import die_with_parent

# -- the Faust floor: the worker's batching and sends, without the service ---------------------


def faust_floor_app() -> Any:
    """A Faust route agent (``take_events`` of 500 within 50 ms, one send per event, every
    send awaited per batch) that only copies the value: what a worker built on a Faust
    stream could reach if routing cost nothing (why worker/ reads its input topics with
    batch consumers instead). Configured by FLOOR_* env."""
    import faust

    env = os.environ
    app = faust.App(
        env["FLOOR_APP"], broker=env["FLOOR_BROKER"], processing_guarantee="at_least_once",
        topic_partitions=PARTITIONS, web_enabled=False, datadir=env["FLOOR_DIR"],
        broker_session_timeout=2, broker_heartbeat_interval=0.5, broker_rebalance_timeout=2,
    )  # fmt: skip
    options: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    src = app.topic(env["FLOOR_SRC"], partitions=PARTITIONS, internal=True, **options)
    dst = app.topic(env["FLOOR_DST"], partitions=PARTITIONS, internal=True, **options)

    @app.agent(src)
    async def copy(stream: Any) -> None:
        async for events in stream.take_events(500, 0.05):
            sends = [
                await app.producer.send(dst.get_topic_name(), e.message.key, e.value,
                                        None, None, None)
                for e in events
            ]  # fmt: skip
            await asyncio.gather(*sends)

    return app


def start_faust_floor(svc: Services, src: str, dst: str) -> subprocess.Popen[bytes]:
    workdir = Path(tempfile.mkdtemp(prefix="racer-floor-"))
    env = os.environ | {
        "FLOOR_APP": f"floor-{uuid.uuid4().hex[:8]}", "FLOOR_BROKER": svc.broker.url,
        "FLOOR_SRC": src, "FLOOR_DST": dst, "FLOOR_DIR": str(workdir / "data"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }  # fmt: skip
    with open(workdir / "floor.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks._floors", "worker", "-l", "warn", "--without-web"],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )


# -- raw aiokafka pass-through, in its own process like a worker ------------------------------


async def passthrough(bootstrap: str, src: str, dst: str, kind: str) -> None:
    """Consume ``src`` from the start (no group) and produce every record to ``dst`` as it
    comes, awaiting the acks of each fetched batch, until SIGTERM; ``kind``: the broker's."""
    use_broker(kind)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = await tail_consumer(bootstrap, src, from_start=True)
    prod = await producer(bootstrap)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            sends = [
                await prod.send(dst, m.value, key=m.key)
                for messages in batch.values()
                for m in messages
            ]
            await asyncio.gather(*sends)
    finally:
        await consumer.stop()
        await prod.stop()


def start_passthrough(svc: Services, src: str, dst: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = ["passthrough", svc.broker.bootstrap, src, dst, svc.broker.name]
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks._floors", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["passthrough"]:
        asyncio.run(passthrough(*sys.argv[2:6]))
    else:
        faust_floor_app().main()  # ``worker ...``: the Faust floor
