"""The schemes of ``RACER_REDIS_URL``: one server, a Redis Cluster, or a Sentinel deployment.

``redis://`` / ``rediss://`` name one server, ``redis+cluster://`` / ``rediss+cluster://``
any node of a Cluster, and ``redis+sentinel://`` / ``rediss+sentinel://`` the sentinels
and the service they watch::

    redis+sentinel://[user[:password]@]host1[:26379],host2[:26379]/mymaster[/db]

The credentials and the ``s`` (TLS) are the data nodes'; the sentinels' own credentials,
if they have any, are settings (``RACER_REDIS_SENTINEL_USERNAME``/``_PASSWORD``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL_PORT = 26379
SCHEMES = {  # scheme: (kind, TLS)
    "redis": ("server", False), "rediss": ("server", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
}  # fmt: skip
_NAMES = [f"{scheme}://" for scheme in SCHEMES]
URL_SCHEMES = f"must be a {', '.join(_NAMES[:-1])} or {_NAMES[-1]} URL"


def url_kind(url: str) -> tuple[str, bool]:
    """``("server" | "cluster" | "sentinel", tls)``; ValueError for another scheme."""
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(URL_SCHEMES)
    return SCHEMES[scheme]


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a ``redis+sentinel://`` URL; ValueError naming what is wrong."""
    kind, tls = url_kind(url)
    if kind != "sentinel":
        raise ValueError("not a redis+sentinel:// or rediss+sentinel:// URL")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("a Sentinel URL takes no ?query or #fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    sentinels = tuple(_host_port(h) for h in hosts.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("name the service, and the database if not 0: .../mymaster/0")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"database {path[1]!r} is not a number")
    return SentinelUrl(
        sentinels, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
        unquote(user) or None, unquote(password) if colon else None, tls,
    )  # fmt: skip


def _host_port(address: str) -> tuple[str, int]:
    host, colon, port = address.strip().rpartition(":")
    if not colon or address.endswith("]"):  # no port (IPv6 hosts come in brackets)
        host, port = address.strip(), str(SENTINEL_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel {address!r} is not host:port")
    return host.strip("[]"), int(port)
