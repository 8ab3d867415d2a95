"""Apache Kafka (KRaft) on loopback: one node, or three for the broker faults.

Each node is one ``java kafka.Kafka`` process, broker and controller at once, with a static
quorum (``controller.quorum.voters``), on free loopback ports, its log in its own folder.
A node keeps its ports and folder across a kill or a restart, so it comes back on its log.
The jars come from Maven Central (`racer_online.local.kafka_jars`). Where the settings
differ from a broker's defaults, `TEST_SETTINGS` says why. With `SaslSsl`, each node also
listens for SASL_SSL with SCRAM users stored at format time (``kafka-storage format
--add-scram``, KIP-900), its certificate a PEM key store: clients get that listener from
``env()``, while ``bootstrap`` stays the PLAINTEXT one for a test's own observers.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from racer_online.local import kafka_wire
from racer_online.local.kafka_jars import (
    DEFAULT_VERSION,
    check_version,
    java,
    kafka_jars,
    log_configs,
    major,
    properties,
)
from racer_online.local.processes import EmbeddedServiceError, ServerProcess, free_port
from racer_online.local.tls import Certificates

# For tests: a new group joins at once (not after 3 s of waiting for more members), the
# tests' 2 s session timeouts are allowed (Kafka's floor is 6 s), and the offsets topic is
# small, so it is quick to create. docs/operations.md lists what else differs from Tansu.
TEST_SETTINGS: dict[str, object] = {
    "group.initial.rebalance.delay.ms": 0,
    "group.min.session.timeout.ms": 500,
    "offsets.topic.num.partitions": 4,
}
WIRE_ERRORS = (OSError, ValueError, IndexError)  # not listening yet, or a cut answer
SCRAM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener (SCRAM-SHA-512) beside PLAINTEXT: its certificates and users."""

    certificates: Certificates
    users: Mapping[str, str]  # name -> password

    def broker_settings(self) -> dict[str, object]:
        prefix = "listener.name.sasl_ssl."
        return {
            "sasl.enabled.mechanisms": SCRAM,
            f"{prefix}{SCRAM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}ssl.keystore.type": "PEM",  # the key, then its chain, in one file
            f"{prefix}ssl.keystore.location": self.certificates.chain,
        }  # fmt: skip

    def format_args(self) -> list[str]:
        found = []
        for name, password in self.users.items():
            found += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
        return found


class KafkaNode(ServerProcess):
    """One combined broker+controller process; its ports and folder are fixed."""

    def __init__(self, node_id: int, workdir: Path, heap: str, *, sasl_ssl: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, "server.log")
        self.node_id, self.heap = node_id, heap
        self.port, self.controller_port = free_port(), free_port()
        self.sasl_ssl_port = free_port() if sasl_ssl else None
        self.lib = Path()

    def command(self, main: str, *args: str) -> list[str]:
        # One GC thread per node: three nodes share two cores with the tests.
        options = [f"-Xmx{self.heap}", "-XX:ParallelGCThreads=1", "-XX:+ExitOnOutOfMemoryError"]
        options += [f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}"]
        options += [f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}"]
        return [java(), *options, "-cp", f"{self.lib}/*", main, *args]

    def configure(self, cluster_wide: dict[str, object]) -> None:
        advertised = f"PLAINTEXT://127.0.0.1:{self.port}"
        if self.sasl_ssl_port is not None:
            advertised += f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}"
        own = {
            "node.id": self.node_id, "process.roles": "broker,controller",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised, "log.dirs": self.workdir / "data",
        }  # fmt: skip
        (self.workdir / "server.properties").write_text(properties(own | cluster_wide))
        for name, text in log_configs(self.log_path).items():
            (self.workdir / name).write_text(text)

    def answers(self, brokers: int = 1) -> bool:
        """It serves metadata listing at least ``brokers`` registered brokers."""
        try:
            return len(kafka_wire.metadata(self.port, [], timeout=1.0).brokers) >= brokers
        except WIRE_ERRORS:
            return False

    def launch(self, timeout: float, *, wait: bool = True) -> None:
        """Start the process; with ``wait``, return once it serves metadata (a node of a new
        cluster cannot before a quorum of its peers runs: start them all first)."""
        args = self.command("kafka.Kafka", str(self.workdir / "server.properties"))
        self._spawn(args, self.answers if wait else lambda: True, timeout)

    def exited(self) -> str | None:
        """The end of its log if the process died by itself, else None."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-3:])

    def kill(self) -> None:
        """SIGKILL: a crash; the log stays for a restart."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
        self._reap()


class ApacheKafka:
    """Apache Kafka on 1 node, or 3 (replication factor 3, min.insync.replicas 2).

    The interface of `EmbeddedBroker` (``bootstrap``, ``url``, ``env()``, ``start``,
    ``stop``, ``pause``/``resume``), plus ``kill``/``restart`` of one node and metadata.
    ``version`` defaults to ``$RACER_KAFKA_VERSION``, else docker-compose.yml's."""

    name = "apache"

    def __init__(
        self, nodes: int = 1, *, version: str | None = None,
        workdir: str | Path | None = None, heap: str = "768m", sasl_ssl: SaslSsl | None = None,
    ) -> None:  # fmt: skip
        if nodes not in (1, 3):
            raise EmbeddedServiceError(f"Apache Kafka runs here on 1 or 3 nodes, not {nodes}")
        chosen = version or os.environ.get("RACER_KAFKA_VERSION") or DEFAULT_VERSION
        self.version = check_version(chosen)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="racer-kafka-"))
        self.sasl_ssl = sasl_ssl
        self.nodes = [KafkaNode(i, self.workdir / f"node-{i}", heap, sasl_ssl=sasl_ssl is not None)
                      for i in range(1, nodes + 1)]  # fmt: skip
        self.replication = nodes
        self.port = self.nodes[0].port
        self.bootstrap = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        self.url = "kafka://" + self.bootstrap

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path

    def env(self) -> dict[str, str]:
        """A client's settings. Kafka answers a fetch as soon as a record is there, so the
        default fetch wait (0.5 s) only paces idle polls and stays."""
        if self.sasl_ssl is None:
            return {"RACER_KAFKA_BROKER": self.url}
        return {"RACER_KAFKA_BROKER": self.secured_url} | self.client_security_env()

    @property
    def secured_url(self) -> str:
        """The SASL_SSL listeners (``url`` is the PLAINTEXT ones)."""
        return "kafka://" + ",".join(f"127.0.0.1:{n.sasl_ssl_port}" for n in self.nodes)

    def client_security_env(self, user: str | None = None) -> dict[str, str]:
        """A client's RACER_KAFKA_SECURITY__* for ``user`` (the first one by default)."""
        assert self.sasl_ssl is not None, "a broker without a SASL_SSL listener"
        name = user or next(iter(self.sasl_ssl.users))
        prefix = "RACER_KAFKA_SECURITY__"
        return {
            f"{prefix}PROTOCOL": "SASL_SSL", f"{prefix}SASL_MECHANISM": SCRAM,
            f"{prefix}USERNAME": name, f"{prefix}PASSWORD": self.sasl_ssl.users[name],
            f"{prefix}CA_FILE": str(self.sasl_ssl.certificates.ca),
        }  # fmt: skip

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def settings(self) -> dict[str, object]:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        rf, isr = self.replication, min(self.replication, 2)
        values: dict[str, object] = {
            "controller.quorum.voters": voters, "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "num.partitions": 4, "default.replication.factor": rf, "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf, "transaction.state.log.min.isr": isr,
        }  # fmt: skip
        if self.sasl_ssl is not None:
            values["listener.security.protocol.map"] = (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
            )
            values |= self.sasl_ssl.broker_settings()
        if major(self.version) >= 4:  # the share groups' state topic is new in Kafka 4
            values["share.coordinator.state.topic.replication.factor"] = rf
            values["share.coordinator.state.topic.min.isr"] = isr
        return values | TEST_SETTINGS

    def start(self, timeout: float = 90.0) -> Self:
        """Configure and format on the first start; launch every node; return once each
        serves metadata listing all brokers and a group coordinator answers."""
        lib = kafka_jars(self.version)
        for node in self.nodes:
            node.lib = lib
        if not (self.nodes[0].workdir / "data").exists():
            self._format()
        try:
            for node in self.nodes:
                node.launch(timeout, wait=False)
            count = len(self.nodes)
            self.wait(lambda: all(n.answers(count) for n in self.nodes), timeout, "brokers")
            self.wait(self._coordinator_up, timeout, "group coordinator")
        except BaseException:
            self.stop(keep_data=True)
            raise
        return self

    def _format(self) -> None:
        cluster_wide = self.settings()
        for node in self.nodes:
            node.configure(cluster_wide)
        made = subprocess.run(self.nodes[0].command("kafka.tools.StorageTool", "random-uuid"),
                              capture_output=True, text=True, check=False)  # fmt: skip
        cluster_id = (made.stdout.split() or ["-"])[-1]
        users = self.sasl_ssl.format_args() if self.sasl_ssl is not None else []
        formats = [self._format_node(n, cluster_id, users) for n in self.nodes]  # in parallel
        for proc in formats:
            said = proc.communicate()[0].decode(errors="replace").strip().splitlines()
            if proc.returncode:
                raise EmbeddedServiceError(f"Kafka's storage format failed: {said[-1:]}")

    @staticmethod
    def _format_node(node: KafkaNode, cluster_id: str, users: list[str]) -> subprocess.Popen[bytes]:
        config = str(node.workdir / "server.properties")
        args = node.command("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", config)
        args += users  # SCRAM credentials, stored in the bootstrap metadata
        out, err = subprocess.PIPE, subprocess.STDOUT
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def _coordinator_up(self) -> bool:
        try:  # asking makes the broker create its offsets topic
            return kafka_wire.coordinator(self.port, "racer-ready") >= 0
        except WIRE_ERRORS:
            return False

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``condition`` until it holds; the seconds it took. A node that died fails it."""
        started = time.monotonic()
        while not condition():
            for node in self.nodes:
                if (tail := node.exited()) is not None:
                    node._reap()
                    raise EmbeddedServiceError(f"Kafka node {node.node_id} exited: {tail}")
            if time.monotonic() - started > timeout:
                raise EmbeddedServiceError(f"Apache Kafka: no {what} within {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def metadata(self, topics: list[str] | None = None) -> kafka_wire.Metadata:
        """Metadata from the first running node that answers."""
        for node in self.nodes:
            if node.pid is not None:
                try:
                    return kafka_wire.metadata(node.port, topics)
                except WIRE_ERRORS:
                    continue
        raise EmbeddedServiceError("no Apache Kafka node answers")

    def everywhere_led(self, topics: list[str], partitions: int) -> bool:
        """Every running node's metadata lists every partition of ``topics`` with a leader:
        KRaft spreads a new topic to the brokers one by one, and a client that asks a node
        that has not heard of it yet fails with UnknownTopicOrPartition."""
        for node in self.nodes:
            if node.pid is None:
                continue
            try:
                seen = kafka_wire.metadata(node.port, topics)
            except WIRE_ERRORS:
                return False
            if any(len(seen.leaders(t)) < partitions or min(seen.leaders(t).values()) < 0
                   for t in topics):  # fmt: skip
                return False
        return True

    def in_sync(self) -> bool:
        """Every replica of every partition is in its partition's in-sync set."""
        try:
            return not self.metadata().under_replicated()
        except EmbeddedServiceError:
            return False

    def kill(self, node_id: int) -> None:
        self.node(node_id).kill()

    def restart(self, node_id: int, *, kill: bool = False, timeout: float = 90.0) -> None:
        """Stop a node (SIGTERM: a controlled shutdown that hands its leaderships over;
        ``kill``: SIGKILL), start it on its log, return once the cluster lists it again."""
        node = self.node(node_id)
        node.kill() if kill else node._reap(grace=60)
        node.launch(timeout)
        self.wait(lambda: node_id in self.metadata([]).brokers, timeout, f"node {node_id}")

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def stop(self, *, keep_data: bool = False) -> None:
        """Data thrown away: SIGKILL every node at once (the last nodes' controlled shutdown
        would wait for a quorum that is gone). ``keep_data``: SIGTERM, for a later start."""
        for node in self.nodes:
            if node.pid is not None:
                node._signal(signal.SIGCONT)
                node._signal(signal.SIGTERM if keep_data else signal.SIGKILL)
        for node in self.nodes:
            node._reap(grace=60)
        if self._own_dir and not keep_data:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
