"""Secured local services: Debian's redis-server with TLS only and an ACL user, and
`secured_services`, which starts it beside Apache Kafka with a SASL_SSL listener
(`racer_online.local.kafka.SaslSsl`) on certificates made by openssl now.

``port 0`` turns Redis's plain port off, ``tls-port`` serves TLS with a certificate from
`racer_online.local.tls`, the default user is off and one ACL user (``user NAME on
>password ~* &* +@all``) may do everything: what a managed Redis with TLS and AUTH looks
like to a client. ``env()`` gives a client's RACER_REDIS_* settings for it.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import redis

from racer_online.local.processes import EmbeddedServiceError, ServerProcess, free_port
from racer_online.local.tls import Certificates, make_certificates


class SecuredRedis(ServerProcess):
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


@contextlib.contextmanager
def secured_services(workdir: Path | None = None) -> Iterator[dict[str, str]]:
    """Apache Kafka (SASL_SSL, SCRAM-SHA-512 user ``racer``) and a TLS Redis (ACL user
    ``racer``), random passwords, one CA: yields a client's RACER_* settings for both."""
    from racer_online.local.kafka import ApacheKafka, SaslSsl

    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM unwinds the block, so the servers stop and their folders go.
            before = signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
            stack.callback(signal.signal, signal.SIGTERM, before)
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="racer-tls-")))
        certificates = make_certificates(workdir / "tls")
        users = {"racer": secrets.token_urlsafe(18)}
        kafka = ApacheKafka(workdir=workdir / "kafka", sasl_ssl=SaslSsl(certificates, users))
        redis_server = SecuredRedis(certificates, password=secrets.token_urlsafe(18),
                                    workdir=workdir / "redis")  # fmt: skip
        (workdir / "redis").mkdir(exist_ok=True)
        stack.enter_context(kafka)
        stack.enter_context(redis_server)
        yield kafka.env() | redis_server.env()
