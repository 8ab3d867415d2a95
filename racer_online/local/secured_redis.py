"""Debian's redis-server with TLS only and an ACL user, on a free loopback port.

``port 0`` turns the plain port off, ``tls-port`` serves TLS with a certificate from
`racer_online.local.tls`, the default user is off and one ACL user (``user NAME on
>password ~* &* +@all``) may do everything: what a managed Redis with TLS and AUTH looks
like to a client. ``env()`` gives a client's RACER_REDIS_* settings for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self

import redis

from racer_online.local.services import EmbeddedServiceError, _Child, free_port
from racer_online.local.tls import Certificates


class SecuredRedis(_Child):
    def __init__(
        self, certificates: Certificates, *, username: str = "racer",
        password: str = "racer-redis-secret", workdir: str | Path | None = None,
    ) -> None:  # fmt: skip
        super().__init__(workdir, "redis.log")
        self.certificates, self.username, self.password = certificates, username, password
        self.port = free_port()
        self.url = f"rediss://127.0.0.1:{self.port}/0"

    def env(self) -> dict[str, str]:
        return {
            "RACER_REDIS_URL": self.url,
            "RACER_REDIS_USERNAME": self.username,
            "RACER_REDIS_PASSWORD": self.password,
            "RACER_REDIS_CA_FILE": str(self.certificates.ca),
        }

    def client(self) -> redis.Redis:
        """A blocking client with the right credentials (for tests and the ready check)."""
        return redis.Redis.from_url(
            self.url, username=self.username, password=self.password, socket_timeout=2,
            ssl_ca_certs=str(self.certificates.ca), ssl_cert_reqs="required",
        )  # fmt: skip

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedServiceError("no redis-server on PATH (apt-get install redis-server)")
        certs = self.certificates
        args = [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
                "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--user", "default", "off"]  # fmt: skip
        args += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
        self._spawn(args, self.answers, timeout)
        return self
