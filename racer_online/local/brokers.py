"""The two local brokers behind one interface: Tansu (embedded, no Java) and Apache Kafka."""

from pathlib import Path
from typing import Any, Protocol

from racer_online.local.kafka import ApacheKafka
from racer_online.local.processes import EmbeddedServiceError
from racer_online.local.tansu import EmbeddedBroker


class LocalBroker(Protocol):
    """What `EmbeddedBroker` (Tansu) and `ApacheKafka` both offer."""

    name: str
    port: int  # the first node's
    bootstrap: str  # for aiokafka: host:port[,host:port]
    url: str  # for Faust and RACER_KAFKA_BROKER
    replication: int  # the replication factor its topics can have

    @property
    def pid(self) -> int | None: ...

    def env(self) -> dict[str, str]: ...

    def start(self, timeout: float = ...) -> Any: ...

    def stop(self, *, keep_data: bool = False) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


BROKERS = ("tansu", "apache")


def local_broker(
    kind: str = "tansu", *, nodes: int = 1, workdir: str | Path | None = None
) -> LocalBroker:
    """A broker not yet started: ``tansu`` (the embedded default, no Java) or ``apache``
    (Apache Kafka on 1 or 3 nodes, version from ``RACER_KAFKA_VERSION``)."""
    if kind == "apache":
        return ApacheKafka(nodes, workdir=workdir)
    if kind != "tansu" or nodes != 1:
        raise EmbeddedServiceError(f"no broker {kind!r} of {nodes} nodes: tansu (1) or apache")
    return EmbeddedBroker(log_dir=workdir)
