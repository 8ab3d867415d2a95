"""Real TLS, SASL and ACLs: Apache Kafka with a SASL_SSL listener and a SCRAM-SHA-512 user,
redis-server on TLS only with an ACL user (certificates made by openssl for the session).

A worker routes over both with the settings docs/operations.md gives, feedback joins, a
threshold is certified; a wrong password or an untrusted certificate stops it in one line
that names what was refused. The test's own observers read the topics on the broker's
PLAINTEXT listener; everything the worker and the CLI do goes through SASL_SSL and TLS.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from racer_online.datasets import load_outcomes
from racer_online.offline.evaluation import task_router_records

pytestmark = [pytest.mark.integration, pytest.mark.apache]
N = 600  # labelled queries: enough for the window to certify at alpha = delta = 0.1


@pytest.fixture(scope="module")
def records():
    data = task_router_records(load_outcomes())
    return data.take(np.random.default_rng(3).permutation(len(data))[:N])


@pytest.fixture
async def secured(secured_deployment, records):
    secured_deployment.write_scopes(records.models)
    return secured_deployment


def cli(deployment, *args, **env):
    return subprocess.run([sys.executable, "-m", "racer_online", *args],
                          env=deployment.env | env, cwd=deployment.dir, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


async def test_a_worker_routes_joins_and_certifies_over_sasl_ssl_and_redis_tls(secured, records):
    assert secured.env["RACER_KAFKA_SECURITY__PROTOCOL"] == "SASL_SSL"
    assert secured.env["RACER_REDIS_URL"].startswith("rediss://")
    secured.start_worker()
    scope, models = secured.scope, records.models
    queries = [{"query_id": records.query_ids[i], "scope": scope,
                "scores": dict(zip(models, records.scores[i].tolist(), strict=True))}
               for i in range(N)]  # fmt: skip
    labels = [{"query_id": records.query_ids[i], "scope": scope,
               "labels": dict(zip(models, records.labels[i].astype(int).tolist(), strict=True))}
              for i in range(N)]  # fmt: skip
    sent = cli(secured, "publish", jsonl(secured.dir / "queries.jsonl", queries))
    assert sent.returncode == 0, sent.stderr  # the CLI's producer: SASL_SSL too
    decisions = await secured.collect("decisions", N, timeout=120)
    assert sorted(d["query_id"] for d in decisions) == sorted(q["query_id"] for q in queries)
    graded = cli(secured, "feedback", jsonl(secured.dir / "labels.jsonl", labels))
    assert graded.returncode == 0, graded.stderr
    updates = await secured.collect("thresholds", 10**6, timeout=120,
                                    until=lambda got: got[-1]["n"] == N)  # fmt: skip
    assert updates[-1]["status"] == "certified", updates[-1]
    # The threshold stored in Redis (read over TLS, as the ACL user) is the certified one.
    stored = cli(secured, "thresholds", "--json")
    assert stored.returncode == 0, stored.stderr
    mine = json.loads(stored.stdout)[scope]
    assert mine["status"] == "certified" and mine["version"] == updates[-1]["version"]


def refused_worker(deployment, **env):
    """``racer-online worker`` that must stop before it starts: its one stderr line."""
    result = cli(deployment, "worker", **env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("racer-online: error: "), result.stderr
    return lines[0]


async def test_a_wrong_kafka_password_stops_the_worker_naming_the_user(secured):
    line = refused_worker(secured, RACER_KAFKA_SECURITY__PASSWORD="not-the-password")
    assert "refused us" in line and "user 'racer' (SCRAM-SHA-512" in line, line
    assert "RACER_KAFKA_SECURITY__PASSWORD" in line and "not-the-password" not in line


async def test_an_untrusted_kafka_certificate_stops_the_worker_naming_the_ca(secured, certificates):
    line = refused_worker(secured, RACER_KAFKA_SECURITY__CA_FILE=str(certificates.other_ca))
    assert "not trusted by RACER_KAFKA_SECURITY__CA_FILE" in line, line
    assert str(certificates.other_ca) in line


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [("RACER_REDIS_PASSWORD", "invalid username-password pair"),
     ("RACER_REDIS_CA_FILE", "CERTIFICATE_VERIFY_FAILED")],
)  # fmt: skip
async def test_a_wrong_redis_password_or_ca_is_one_line(secured, certificates, setting, refusal):
    wrong = str(certificates.other_ca) if setting.endswith("CA_FILE") else "not-the-password"
    result = cli(secured, "thresholds", **{setting: wrong})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("racer-online: error: ") and refusal in lines[0], lines[0]
    assert "not-the-password" not in lines[0]


def test_the_plain_port_of_the_secured_redis_is_off(secured_redis):
    """``port 0``: nothing but TLS; and the default user cannot log in."""
    import redis

    with secured_redis.client() as client:
        assert client.config_get("port") == {"port": "0"}
        assert client.acl_getuser("default")["enabled"] is False
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(
        secured_redis.url, ssl_ca_certs=os.fspath(secured_redis.certificates.ca),
        password="anything",
    ) as anonymous:  # fmt: skip
        anonymous.ping()
