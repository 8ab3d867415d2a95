"""Shared pieces of the stream benchmarks: services and a worker deployment.

Everything runs on loopback: an embedded Tansu broker, a Redis (``RACER_REDIS_URL`` if it
answers, else a fresh local one) and real ``python -m racer_online worker`` processes with
their own topics, scope (so Redis keys) and consumer group, as tests/integration does.
Load and probes: `benchmarks._load`; machine facts: `benchmarks._machine`; the floors a
worker is compared with: `benchmarks._floors`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks._load import (
    MODELS,
    PARTITIONS,
    PRICES,
    Traffic,
    collect,
    producer,
    tail_consumer,
    use_broker,
)
from racer_online.local.brokers import LocalBroker, local_broker
from racer_online.local.services import EmbeddedRedis
from racer_online.testing import LocalDeployment, die_with_parent, stop_process

__all__ = ["Deployment", "Services", "Traffic", "scopes_toml", "services", "wait_ready"]

# -- services ---------------------------------------------------------------------------------


@dataclass
class Services:
    broker: LocalBroker
    redis: EmbeddedRedis

    @property
    def redis_pid(self) -> int | None:
        return self.redis.pid  # None for an external Redis


@contextlib.contextmanager
def services(broker_kind: str = "tansu") -> Iterator[Services]:
    """A broker (`local_broker`'s kind) and a Redis (``RACER_REDIS_URL`` if it answers, else
    fresh)."""
    broker, store = local_broker(broker_kind), EmbeddedRedis()
    use_broker(broker_kind)
    try:
        broker.start()
        store.start()
        yield Services(broker, store)
    finally:
        broker.stop()
        store.stop()


# -- a deployment: topics, scope, workers ------------------------------------------------------


class Deployment(LocalDeployment):
    """Per-run topics, scope (hence Redis keys) and consumer group, and its worker; the
    audit rate and the batching knobs stay at the settings' defaults."""

    scope: str

    def __init__(self, svc: Services, *, label: str, env: dict[str, str] | None = None) -> None:
        scope = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        super().__init__(
            broker_url=svc.broker.url, bootstrap=svc.broker.bootstrap, redis_url=svc.redis.url,
            directory=Path(tempfile.mkdtemp(prefix=f"racer-{scope}-")), scope=scope,
            partitions=PARTITIONS, replication=svc.broker.replication, embedded_broker=False,
            env=svc.broker.env() | (env or {}),  # the fetch wait this broker needs
        )  # fmt: skip
        self.svc = svc
        self.scopes_file.write_text(scopes_toml(scope))
        self.worker: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.pythonpath: str | None = None  # e.g. a patched copy of the code, to compare
        self.web_port = 0

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """``python -m racer_online worker`` with this deployment's RACER_* environment."""
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        self.worker = super().start_worker(**env)
        self.web_port = self.web_ports[-1]
        return self.worker

    def profile(self, output: Path) -> None:
        """Sample the running worker with py-spy (raw collapsed stacks) until it stops."""
        spy = Path(sys.executable).with_name("py-spy")
        self.profiler = subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(self.worker_pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(output),
                "--nonblocking",
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_profiler(self) -> None:
        spy, self.profiler = self.profiler, None
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()

    def alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    @property
    def worker_pid(self) -> int | None:
        return self.worker.pid if self.worker else None

    def stop_worker(self, grace: float = 30.0) -> None:
        self.stop_profiler()
        proc, self.worker = self.worker, None
        if proc is not None:
            stop_process(proc, grace=grace)

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_path(len(self.workers) - 1)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.svc.redis.url)

    def delete_keys(self) -> None:
        """Remove this run's Redis keys (a shared Redis stays tidy)."""
        with self.redis_client() as client:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"racer:{{{self.scope}}}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)


def scopes_toml(scope: str) -> str:
    lines = [f"[scopes.{scope}]", "alpha = 0.1", "delta = 0.1", 'bound = "binomial"',
             'rule = "cumulative"', 'miss = "answerable"', f"[scopes.{scope}.models]"]  # fmt: skip
    lines += [f'"{m}" = {{ price = {p} }}' for m, p in zip(MODELS, PRICES, strict=True)]
    return "\n".join(lines) + "\n"


async def wait_ready(dep: Deployment, traffic: Traffic, *, timeout: float = 90.0) -> float:
    """Send probe queries until one decision comes back; return the seconds it took."""
    started = time.monotonic()
    consumer = await tail_consumer(dep.bootstrap, dep.topics["decisions"], from_start=False)
    prod = await producer(dep.bootstrap)
    try:
        while time.monotonic() - started < timeout:
            ids, queries, _ = traffic.batch(1)
            await prod.send_and_wait(dep.topics["queries"], queries[0], key=ids[0].encode())
            got = await collect(consumer, 1, timeout=1.0)
            if got.count:
                return time.monotonic() - started
            if dep.worker is not None and dep.worker.poll() is not None:
                break
    finally:
        await prod.stop()
        await consumer.stop()
    raise RuntimeError(f"worker not ready after {timeout}s:\n{dep.log_tail()}")
