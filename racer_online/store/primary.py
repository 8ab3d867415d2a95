"""Connections that only ever talk to a primary, and one log line per change of where it is.

A failover leaves the old primary reachable at its address as a replica: every write there
answers READONLY, and redis-py's plain connection keeps the socket, so a pooled connection
would keep asking the replica forever, even after the address (a DNS name, a proxy, a
cloud endpoint) leads to the new primary. Here a READONLY reply, or a new connection whose
server says it is a replica (``HELLO``: no ACL permission needed, unlike ``ROLE``), drops
the connection and raises `ConnectionError`: redis-py's retry reconnects, the store reports
an outage (`StoreUnavailableError`), and the next attempt opens a new socket. With a
``redis+sentinel://`` URL redis-py's `SentinelManagedConnection` does the READONLY part and
asks the sentinels for the primary on every connect; `WatchedSentinelPool` logs each change
of the primary's address.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

log = logging.getLogger(__name__)
NO_PRIMARY = ("", "")


class RoleWatch:
    """What a client last found at one address: a primary, a replica, or nothing yet. Logs
    one line when that changes (each pooled connection reports, the client logs once)."""

    def __init__(self) -> None:
        self.replica: bool | None = None
        self.demotions = 0  # connections opened before the last one are on a replica

    def found(self, address: str, *, replica: bool) -> None:
        if replica == self.replica:
            return
        if replica:
            self.demotions += 1
            log.warning(
                "Redis at %s is a replica (read only): nothing is stored while it is; "
                "reconnecting until it is a primary (a redis+sentinel:// URL follows a failover)",
                address,
            )
        elif self.replica:
            log.warning("Redis at %s is a primary again: storing resumes", address)
        self.replica = replica


def _is_replica(hello: Any) -> bool | None:
    """The ``role`` of a HELLO reply (a RESP2 list of pairs or a RESP3 map)."""
    if isinstance(hello, list):
        hello = dict(zip(hello[::2], hello[1::2], strict=False))
    if not isinstance(hello, dict):
        return None
    role = hello.get(b"role", hello.get("role"))
    if isinstance(role, bytes):
        role = role.decode()
    return None if role is None else role != "master"


class PrimaryConnection(Connection):
    """A connection to the server a plain ``redis://`` URL names, kept only while that
    server is a primary."""

    def __init__(self, *, role_watch: RoleWatch, **kwargs: Any) -> None:
        self.role_watch = role_watch
        self.demotions_seen = role_watch.demotions
        super().__init__(**kwargs)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> None:
        """The pool calls this on every checkout: a connection opened before the server was
        found a replica (by another connection) is dropped too, not only the one that met
        READONLY, so that no read or PING is served by the replica meanwhile."""
        if self.is_connected and self.demotions_seen < self.role_watch.demotions:
            await self.disconnect()
        await super().connect()  # type: ignore[no-untyped-call]

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        self.demotions_seen = self.role_watch.demotions
        await super().on_connect_check_health(check_health)
        try:
            await self.send_command("HELLO", check_health=False)
            replica = _is_replica(await super().read_response())
        except ResponseError:  # a server before HELLO, or an ACL without it: READONLY tells
            return
        if replica is None:
            return
        self.role_watch.found(self.address, replica=replica)
        if replica:
            await self.disconnect()
            raise RedisConnectionError(f"Redis at {self.address} is a replica")

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError:
            self.role_watch.found(self.address, replica=True)
            await self.disconnect()  # the next attempt opens a new socket
            raise RedisConnectionError(f"Redis at {self.address} turned replica") from None


class PrimarySSLConnection(PrimaryConnection, SSLConnection):
    pass


def primary_connection_class(tls: bool) -> type[Connection]:
    return PrimarySSLConnection if tls else PrimaryConnection


class WatchedSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool (it asks the sentinels for the primary on every connect and
    drops connections to an old one) that logs where the primary is when that changes."""

    _announced: tuple[Any, Any] | None = None  # None: nothing yet; NO_PRIMARY: none found

    async def get_master_address(self) -> Any:
        try:
            address = await super().get_master_address()  # type: ignore[no-untyped-call]
        except MasterNotFoundError:
            if self._announced != NO_PRIMARY:
                log.warning("Redis Sentinel: no primary for %r; waiting", self.service_name)
                self._announced = NO_PRIMARY
            raise
        if tuple(address) != self._announced:
            before = self._announced
            if before is None:
                log.info("Redis Sentinel: the primary of %r is at %s:%s",
                         self.service_name, *address)  # fmt: skip
            else:
                log.warning("Redis Sentinel: the primary of %r is at %s:%s now",
                            self.service_name, *address)  # fmt: skip
            self._announced = tuple(address)
        return address
