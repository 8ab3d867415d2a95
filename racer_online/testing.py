"""Run real workers on local services and wait on what they say: used by the tests, the
benchmarks and the demo, so "start a worker process" is written once.

A `LocalDeployment` gives one run its own topics, scope (so its Redis keys) and consumer
group on a broker and Redis it is handed, and starts ``python -m racer_online worker``
processes with that RACER_* environment. `until` polls a fact (never a fixed sleep);
`metric_total` reads Prometheus text with prometheus_client's parser; `ProcessStat` reads
/proc.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from racer_online.local.processes import die_with_parent, free_port, stop_process
from racer_online.local.tansu import EMBEDDED_BROKER_ENV

T = TypeVar("T")
TOPIC_NAMES = ("queries", "decisions", "feedback", "thresholds", "alerts", "dlq",
               "queries_retry", "feedback_retry")  # fmt: skip
# A worker that joins, leaves or dies is noticed within about two seconds instead of the
# client defaults' 10 to 300: tests and benchmarks start and kill workers on purpose.
FAST_GROUP_ENV = {
    "RACER_BROKER_SESSION_TIMEOUT_S": "2",
    "RACER_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
    "RACER_BROKER_REBALANCE_TIMEOUT_S": "2",
    "RACER_LEADER_LEASE_S": "2",  # a SIGKILLed leader's lease lapses within the session timeout
}
# Each local deployment's consumer groups are new: they read their topics from the start,
# the explicit choice a production deployment makes once (docs/operations.md).
NEW_GROUP_ENV = {"RACER_OFFSET_RESET": "earliest"}
# The audit key of local deployments (tests, the demo): every worker on a Redis shares one,
# or the later ones refuse to start (store/startup_checks.py). Not a secret: local only.
LOCAL_AUDIT_KEY = "racer-online-local"


async def until(
    condition: Callable[[], T | Awaitable[T]], *, timeout: float, what: str, every: float = 0.2
) -> T:
    """Poll ``condition`` (plain or async) until it returns something truthy; return it.
    Raise AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if asyncio.iscoroutine(held) or isinstance(held, asyncio.Future):
            held = await held
        if held:
            return held  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


# -- Prometheus text and /proc ------------------------------------------------------------


def scrape(port: int, *, host: str = "127.0.0.1", path: str = "/metrics") -> str:
    """The worker's /metrics text ("" when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def metric_samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` whose labels include ``labels``."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (e.g. ``racer_decisions_total``) matching ``labels``."""
    return sum(value for _, value in metric_samples(text, name, **labels))


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/PID/stat and /proc/PID/status say about a process (None: it is gone)."""

    state: str  # R, S, D, Z, ...
    ppid: int
    cpu_seconds: float  # user + system so far
    rss_mb: float  # VmRSS

    @classmethod
    def read(cls, pid: int | None) -> ProcessStat | None:
        if pid is None:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return None
        rss_kb = next((int(s.split()[1]) for s in status if s.startswith("VmRSS:")), 0)
        ticks = int(fields[11]) + int(fields[12])
        return cls(fields[0], int(fields[1]), ticks / os.sysconf("SC_CLK_TCK"), rss_kb / 1024)

    @staticmethod
    def alive(pid: int) -> bool:
        """Running: neither gone nor a zombie waiting for its parent to reap it."""
        stat = ProcessStat.read(pid)
        return stat is not None and stat.state != "Z"


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on TCP ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


# -- a deployment ---------------------------------------------------------------------------


class LocalDeployment:
    """Workers with topics, a scope and a consumer group of their own, on given services
    (or, with no ``scope``, the settings' own topics and scopes).

    ``broker_url`` is for the workers (Faust), ``bootstrap`` for aiokafka clients; ``env``
    entries override the deployment's RACER_* environment; each worker gets a free web port
    unless its ``start_worker`` environment names one.
    """

    def __init__(
        self,
        *,
        broker_url: str,
        bootstrap: str,
        redis_url: str,
        directory: Path,
        scope: str | None,
        partitions: int = 4,
        replication: int = 1,
        embedded_broker: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.scope, self.dir, self.partitions = scope, directory, partitions
        self.replication = replication  # 3 on a 3-node cluster
        self.broker_url, self.bootstrap, self.redis_url = broker_url, bootstrap, redis_url
        self.topics = {name: f"{scope}.{name}" for name in TOPIC_NAMES} if scope else {}
        self.scopes_file = directory / "scopes.toml"
        self.env: dict[str, str] = (
            {"RACER_AUDIT_KEY": LOCAL_AUDIT_KEY}  # unless the environment names one
            | dict(os.environ)
            | {"RACER_KAFKA_BROKER": broker_url, "RACER_REDIS_URL": redis_url}
            | FAST_GROUP_ENV
            | NEW_GROUP_ENV
            | (EMBEDDED_BROKER_ENV if embedded_broker else {})
            | (self._isolated_env() if scope else {})
            | (env or {})
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.web_ports: list[int] = []

    def _isolated_env(self) -> dict[str, str]:
        """Topics, a consumer group and a scopes file of this deployment's own."""
        return {
            "RACER_APP_ID": f"racer-{self.scope}",
            "RACER_SCOPES_FILE": str(self.scopes_file),
            "RACER_TOPICS__PARTITIONS": str(self.partitions),
            "RACER_LOG_LEVEL": "INFO",  # the tests read the leader's recalibration lines
        } | {f"RACER_TOPICS__{name.upper()}": topic for name, topic in self.topics.items()}

    def write_scopes(
        self,
        models: Iterable[str],
        *,
        price: float = 0.1,
        **rules: Any,
    ) -> None:
        """This deployment's scope over ``models`` with the given rules (alpha, delta, ...)."""
        lines = [f"[scopes.{self.scope}]"]
        lines += [f"{k} = {v!r}" if isinstance(v, float | int) else f'{k} = "{v}"'
                  for k, v in rules.items()]  # fmt: skip
        lines += [f"[scopes.{self.scope}.models]"]
        lines += [f'"{m}" = {{ price = {price} }}' for m in models]
        self.scopes_file.write_text("\n".join(lines) + "\n")

    async def create_topics(self, config: dict[str, str] | None = None) -> None:
        """This deployment's topics (with a topic ``config``), once every partition has a
        leader: Apache Kafka acknowledges a creation before its brokers know the leaders."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(t, self.partitions, self.replication, topic_configs=config or {})
                for t in self.topics.values()
            ])  # fmt: skip
            deadline = time.monotonic() + 30
            while not await self._led(admin):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no leaders for {list(self.topics.values())} in 30 s")
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    async def _led(self, admin: Any) -> bool:
        described = await admin.describe_topics(list(self.topics.values()))
        return all(
            t["error_code"] == 0 and len(t["partitions"]) == self.partitions
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        )  # fmt: skip

    def log_path(self, index: int = 0) -> Path:
        return self.dir / f"worker-{index}.log"

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """``python -m racer_online worker`` with this deployment's environment plus ``env``;
        its output goes to `log_path`."""
        index = len(self.workers)
        port = int(env.get("RACER_WEB_PORT") or free_port())
        with open(self.log_path(index), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "racer_online", "worker"],
                env=self.env | {"RACER_WEB_PORT": str(port)} | env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, preexec_fn=die_with_parent,
            )  # fmt: skip
        self.workers.append(proc)
        self.web_ports.append(port)
        return proc

    async def all_committed(self, topic: str, group: str) -> bool:
        """Whether ``group`` committed every record of this deployment's ``topic`` (by name,
        e.g. "feedback"): then nothing of it can be delivered again."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
        )  # subscribes to nothing, so it never joins the group
        await reader.start()
        try:
            tps = [TopicPartition(self.topics[topic], p) for p in range(self.partitions)]
            ends = await reader.end_offsets(tps)
            committed = [await reader.committed(tp) or 0 for tp in tps]
            return all(done >= ends[tp] for done, tp in zip(committed, tps, strict=True))
        finally:
            await reader.stop()

    def log(self, index: int = 0) -> str:
        return self.log_path(index).read_text(errors="replace")

    def ready(self, index: int = 0) -> dict[str, Any]:
        """Worker ``index``'s /ready body ({} while it does not answer)."""
        import json

        request = f"http://127.0.0.1:{self.web_ports[index]}/ready"
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return dict(json.loads(reply.read()))
        except urllib.error.HTTPError as not_ready:  # 503 still carries the body
            return dict(json.loads(not_ready.read()))
        except OSError:
            return {}

    async def wait_answering(self, index: int = 0, *, timeout: float = 60.0) -> None:
        """Until worker ``index``'s web server answers; fail at once if it exited."""

        def answering() -> bool:
            proc = self.workers[index]
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker {index} exited with {proc.returncode}; see {self.log_path(index)}"
                )
            return bool(self.ready(index))

        await until(answering, timeout=timeout, what=f"worker {index}'s web server")

    def stop(self, *, grace: float = 30.0) -> None:
        for proc in self.workers:
            stop_process(proc, grace=grace)
