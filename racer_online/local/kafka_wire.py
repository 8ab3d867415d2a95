"""Two Kafka requests over a plain socket, for a launcher that has no event loop.

`metadata` tells which brokers answer, which node leads each partition and which replicas
are in sync: what "ready", "leader of the queries partitions" and "back in sync" mean to
the launcher and the fault tests. `coordinator` asks for a group's coordinator, which makes
the broker create its offsets topic: the first group of a test then joins at once.
Metadata v4 and FindCoordinator v1 are served by Kafka 1.0 to 4.x alike.
"""

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

PartitionState = tuple[int, list[int], list[int]]  # leader, replicas, in-sync replicas


@dataclass
class Metadata:
    brokers: dict[int, int] = field(default_factory=dict)  # node id -> port
    controller: int = -1
    partitions: dict[tuple[str, int], PartitionState] = field(default_factory=dict)

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> the node that leads it (-1 while none does)."""
        return {p: state[0] for (t, p), state in self.partitions.items() if t == topic}

    def under_replicated(self) -> list[tuple[str, int]]:
        states = self.partitions.items()
        return [tp for tp, (_, replicas, isr) in states if len(isr) < len(replicas)]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str | None:
        size = self.take(">h")
        if size < 0:
            return None
        self.at += size
        return self.data[self.at - size : self.at].decode()

    def int_array(self) -> list[int]:
        return [self.take(">i") for _ in range(self.take(">i"))]


def _string(value: str) -> bytes:
    return struct.pack(">h", len(value)) + value.encode()


def _call(port: int, api_key: int, version: int, body: bytes, timeout: float) -> _Reader:
    """One request on a fresh connection; the reader is past the correlation id."""
    request = struct.pack(">hhi", api_key, version, 1) + _string("racer-launcher") + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            raise ConnectionError("closed before answering")
        size = struct.unpack(">i", head)[0]
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed mid-answer")
            data += chunk
    reader = _Reader(bytes(data))
    reader.take(">i")  # correlation id
    return reader


def metadata(port: int, topics: list[str] | None = None, timeout: float = 2.0) -> Metadata:
    """Metadata v4 of ``topics`` (all when None) as the broker on ``port`` sees it."""
    names = struct.pack(">i", -1) if topics is None else struct.pack(">i", len(topics))
    names += b"".join(_string(t) for t in topics or [])
    r = _call(port, 3, 4, names + b"\x00", timeout)  # no auto-creation
    r.take(">i")  # throttle time
    meta = Metadata()
    for _ in range(r.take(">i")):
        node = r.take(">i")
        r.string()
        meta.brokers[node] = r.take(">i")
        r.string()  # rack
    r.string()  # cluster id
    meta.controller = r.take(">i")
    for _ in range(r.take(">i")):
        r.take(">h")  # topic error: an unknown topic simply has no partitions
        name = r.string() or ""
        r.take(">b")  # internal
        for _ in range(r.take(">i")):
            r.take(">h")
            index, leader = r.take(">i"), r.take(">i")
            meta.partitions[(name, index)] = (leader, r.int_array(), r.int_array())
    return meta


def coordinator(port: int, group: str, timeout: float = 2.0) -> int:
    """FindCoordinator v1: the coordinator's node id, or -1 while there is none yet."""
    r = _call(port, 10, 1, _string(group) + b"\x00", timeout)  # key type 0: a group
    r.take(">i")  # throttle time
    error = r.take(">h")
    r.string()  # error message
    node = r.take(">i")
    return node if error == 0 else -1
