"""A local server as a child process: started on a free loopback port, stopped however we end.

`ServerProcess` is what the Tansu broker, Apache Kafka's nodes, Redis and a Redis Cluster's
nodes have in common; the probes say when a server answers its protocol.
"""

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

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


def die_with_parent() -> None:
    """Pre-exec hook: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux;
    a no-op elsewhere). Call start() from a long-lived thread: Linux sends it when that dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
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
                cwd=self.workdir, start_new_session=True, preexec_fn=die_with_parent,
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
