"""The README's streaming walk-through, run as a user would: real processes only."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from racer_online.local.processes import free_port

pytestmark = pytest.mark.e2e


def cli(*args, env, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "racer_online", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ctrl_c_as_in_a_terminal() -> None:
    """Children of a background shell start with SIGINT ignored; a terminal's do not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(*procs):
    """Ctrl-C each in turn, as a user would; kill what does not stop in 30 s."""
    for proc in procs:
        if proc is None:
            continue
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_dev_services_worker_publish_feedback_thresholds(tmp_path, broker_kind):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    # records.csv as the README makes it: a router, then its held-out scores and labels.
    trained = cli("train-router", "--out", str(tmp_path / "router"), env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr
    path = tmp_path / "records.csv"
    made = cli("records", "--router", str(tmp_path / "router.json"), "--out", str(path),
               "--limit", "400", env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stderr.strip() == (
        f"wrote 400 records (the rows the router did not train on) to {path}"
    )
    services = subprocess.Popen(
        [sys.executable, "-m", "racer_online", "dev-services", "--broker", broker_kind],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    worker = None
    try:
        # Tansu holds fetches: its clients are told to ask for a short wait; Kafka's not.
        names = ["RACER_KAFKA_BROKER", "RACER_REDIS_URL"]
        tansu = ["RACER_FETCH_MAX_WAIT_S", "RACER_PRODUCER_IDEMPOTENCE"]
        names += tansu if broker_kind == "tansu" else []
        lines = [services.stdout.readline().strip() for _ in names]
        assert [line.split("=", 1)[0] for line in lines] == names
        env |= dict(line.split("=", 1) for line in lines) | {
            "RACER_AUDIT_RATE": "1", "RACER_RECALIBRATE_INTERVAL_S": "1",
            "RACER_WEB_PORT": str(free_port()), "RACER_BROKER_SESSION_TIMEOUT_S": "2",
            "RACER_BROKER_HEARTBEAT_INTERVAL_S": "0.5", "RACER_BROKER_REBALANCE_TIMEOUT_S": "2",
            "RACER_OFFSET_RESET": "earliest",
        }  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, "-m", "racer_online", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=ctrl_c_as_in_a_terminal,
        )
        published = cli("publish", str(path), env=env)
        assert published.returncode == 0 and "published 400 queries" in published.stderr
        graded = cli("feedback", str(path), env=env)
        assert graded.returncode == 0 and "published 400 feedback events" in graded.stderr
        deadline = time.monotonic() + 60
        while True:
            shown = cli("thresholds", "--json", env=env)
            assert shown.returncode == 0, shown.stderr
            current = json.loads(shown.stdout)["default"]
            if current["n"] == 400 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert current["n"] == 400 and current["certified"] and current["version"] >= 1
        assert 0 <= current["lam"] < 1
        unknown = cli("thresholds", "--scope", "nope", env=env)
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == "racer-online: error: unknown scope 'nope'"
    finally:
        stop(worker, services)
    assert services.returncode == 0


@pytest.mark.apache
def test_dev_services_secured_serves_sasl_ssl_and_redis_tls(tmp_path):
    """`dev-services --secured` prints settings that the CLI reaches both servers with;
    Ctrl-C stops them and removes their certificates and data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    services = subprocess.Popen(
        [sys.executable, "-m", "racer_online", "dev-services", "--secured"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    try:
        assert services.stdout is not None
        printed: dict[str, str] = {}
        while "RACER_REDIS_CA_FILE" not in printed:  # the last line it prints
            line = services.stdout.readline()
            assert line, f"dev-services exited: {services.stderr.read() if services.stderr else ''}"
            name, _, value = line.strip().partition("=")
            printed[name] = value
        assert printed["RACER_KAFKA_SECURITY__PROTOCOL"] == "SASL_SSL"
        assert printed["RACER_KAFKA_SECURITY__SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert printed["RACER_REDIS_URL"].startswith("rediss://")
        secured = env | printed
        queries = tmp_path / "queries.jsonl"
        queries.write_text(json.dumps({"query_id": "q1", "scope": "default",
                                       "scores": {"gemma-2-9b-it": 0.7}}) + "\n")  # fmt: skip
        sent = cli("publish", str(queries), "--force", env=secured)  # over SASL_SSL
        assert sent.returncode == 0 and "published 1" in sent.stderr, sent.stderr
        shown = cli("thresholds", "--json", env=secured)  # over TLS, as the ACL user
        assert shown.returncode == 0 and "default" in json.loads(shown.stdout), shown.stderr
        folder = printed["RACER_REDIS_CA_FILE"].rsplit("/tls/", 1)[0]
    finally:
        stop(services)
    assert services.returncode == 0
    assert not os.path.exists(folder)
