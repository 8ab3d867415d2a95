"""Broker and Redis credentials: the options each client gets, one-line errors, no leaks."""

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import faust
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from redis.exceptions import ConnectionError as RedisConnectionError

from racer_online.errors import ConfigError
from racer_online.kafka.clients import aiokafka_options
from racer_online.settings import Settings
from racer_online.store.connection import redis_options
from worker.security import kafka_options

SECRET = "s3cret-value"
KEY_PASSWORD = "keypass"
K = "RACER_KAFKA_SECURITY__"

# A throwaway test CA and a client certificate it signed (EC P-256, made with openssl for
# these tests only; the encrypted key is the same key under KEY_PASSWORD).
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBhjCCAS2gAwIBAgIUctVoRTq11Cq4zkwFAGEib0W8GIswCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNcmFjZXItdGVzdC1jYTAgFw0yNjExMjgwNDAwNTNaGA8yMTI2
MTEwNDA0MDA1M1owGDEWMBQGA1UEAwwNcmFjZXItdGVzdC1jYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABN8d74WZiEd4D56U8iftxd7Zm1WQS2XnDgr9f8o8xNDT
yaUsR+VxZ00Yh+jhO3r1sw+w3yVaaoea4C1AcF7sonyjUzBRMB0GA1UdDgQWBBSl
xwROjbD/3iPvk4irMqGq4IPC1DAfBgNVHSMEGDAWgBSlxwROjbD/3iPvk4irMqGq
4IPC1DAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIBXhtZ2BGnn8
mLAZBJM4OWl7vK4+FvVoB8COy7ruiVl4AiBOkBvROWU3uG8067m5LY/nEyXuwz36
D25Ssjw6RFtngw==
-----END CERTIFICATE-----
"""
CLIENT_PEM = """-----BEGIN CERTIFICATE-----
MIIBMDCB1wIUP8H2oCfJ/2cIcL3yLjW9WuhzktUwCgYIKoZIzj0EAwIwGDEWMBQG
A1UEAwwNcmFjZXItdGVzdC1jYTAgFw0yNjExMjgwNDAwNTNaGA8yMTI2MTEwNDA0
MDA1M1owHDEaMBgGA1UEAwwRcmFjZXItdGVzdC1jbGllbnQwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAARBCZVs7EvlwvpHXLSeKzeGpuWV16ZgriaiqqvPzuIuChCY
SKENv2qQTLLvIibbodI+NbqwnBeQTrmDHGuKn0WbMAoGCCqGSM49BAMCA0gAMEUC
IBqBKyTPJO1mrxAlCCJKRiU5UPVbtDS6xdg5/fFdktFtAiEAxyQoPTPFSstxdhHd
+dHhL5sdHNI5m0Mi6n6Pjoq6nkE=
-----END CERTIFICATE-----
"""
CLIENT_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgv017you4BeqSmu9W
w1oUCgZdPiWK8EecQ4CrCL2otZyhRANCAARBCZVs7EvlwvpHXLSeKzeGpuWV16Zg
riaiqqvPzuIuChCYSKENv2qQTLLvIibbodI+NbqwnBeQTrmDHGuKn0Wb
-----END PRIVATE KEY-----
"""
CLIENT_KEY_ENCRYPTED = """-----BEGIN EC PRIVATE KEY-----
Proc-Type: 4,ENCRYPTED
DEK-Info: AES-256-CBC,9731690F0CB90958A1D37D63A8C34A0F

r7F0Sa145g4swqqlptgXqlWdN4IBdyC+AH7ffqLgb+kpRUxOf6yjk54tQXp9o3Yt
VAwV7Q0HO1BRweOKEeJkRtygZn8NU3DaGXvcKsRxco+ZtC2r7d2upFGE1YF0b/YO
24MTVwc27Jl5q3e4ONHQQvQ3wknnMTegLij1fk3pw+s=
-----END EC PRIVATE KEY-----
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("RACER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    files = {
        "ca": CA_PEM,
        "cert": CLIENT_PEM,
        "key": CLIENT_KEY,
        "key_encrypted": CLIENT_KEY_ENCRYPTED,
        "garbage": "not a certificate\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.pem").write_text(text)
    return {name: tmp_path / f"{name}.pem" for name in files}


def load(monkeypatch: pytest.MonkeyPatch, **env: object) -> Settings:
    """Settings from RACER_* variables, as an operator sets them."""
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings.load(_env_file=None)


def kafka(monkeypatch: pytest.MonkeyPatch, **fields: object) -> Settings:
    return load(monkeypatch, **{K + name.upper(): value for name, value in fields.items()})


def test_plaintext_is_the_default_and_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch)
    assert settings.kafka_security.protocol == "PLAINTEXT"
    assert kafka_options(settings) == {}
    assert aiokafka_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert redis_options(settings) == {}


def test_ssl_verifies_the_broker_against_the_ca(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]
) -> None:
    settings = kafka(monkeypatch, protocol="ssl", ca_file=pem["ca"])
    credentials = kafka_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    context = credentials.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [str(c["subject"]) for c in context.get_ca_certs()]
    assert any("racer-test-ca" in subject for subject in subjects)
    auth = credentials_to_aiokafka_auth(credentials)  # what Faust hands to aiokafka
    assert auth == {"security_protocol": "SSL", "ssl_context": context}
    plain = aiokafka_options(settings)
    assert plain["security_protocol"] == "SSL" and isinstance(plain["ssl_context"], ssl.SSLContext)


def test_ssl_without_a_ca_file_trusts_the_system_cas(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = kafka_options(kafka(monkeypatch, protocol="SSL"))["broker_credentials"]
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("key", "password"), [("key", None), ("key_encrypted", KEY_PASSWORD)])
def test_ssl_with_a_client_certificate(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path], key: str, password: str | None
) -> None:
    fields = {
        "protocol": "SSL",
        "ca_file": pem["ca"],
        "cert_file": pem["cert"],
        "key_file": pem[key],
    }
    if password:
        fields["key_password"] = password
    credentials = kafka_options(kafka(monkeypatch, **fields))["broker_credentials"]
    assert isinstance(credentials.context, ssl.SSLContext)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_credentials(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path], protocol: str, mechanism: str
) -> None:
    fields: dict[str, object] = {"protocol": protocol, "sasl_mechanism": mechanism}
    fields |= {"username": "racer", "password": SECRET}
    if protocol == "SASL_SSL":
        fields["ca_file"] = pem["ca"]
    settings = kafka(monkeypatch, **fields)
    credentials = kafka_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == protocol
    assert auth["sasl_mechanism"] == mechanism.upper()
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("racer", SECRET)
    assert (auth["ssl_context"] is not None) == (protocol == "SASL_SSL")
    plain = aiokafka_options(settings)
    assert {k: v for k, v in plain.items() if k != "ssl_context"} == {
        k: v for k, v in auth.items() if k != "ssl_context"
    }
    assert SECRET not in repr(credentials)


async def test_aiokafka_accepts_the_options(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]
) -> None:
    settings = kafka(
        monkeypatch, protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="u",
        password=SECRET, ca_file=pem["ca"],
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **aiokafka_options(settings))
    assert producer.client._security_protocol == "SASL_SSL"
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    await producer.stop()


def test_faust_app_takes_the_options(monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]) -> None:
    settings = kafka(
        monkeypatch, protocol="SASL_SSL", username="u", password=SECRET, ca_file=pem["ca"]
    )
    app = faust.App("racer-security-test", broker="kafka://127.0.0.1:9", **kafka_options(settings))
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.protocol.value == "SASL_SSL"


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"protocol": "SASL_SSL", "username": "u"}, "needs RACER_KAFKA_SECURITY__USERNAME and"),
        ({"protocol": "SASL_PLAINTEXT", "password": SECRET}, "needs"),
        ({"password": SECRET}, "USERNAME/PASSWORD: used only with"),
        ({"protocol": "SASL_PLAINTEXT", "username": "u", "password": SECRET, "ca_file": "x"},
         "CA_FILE: used only with PROTOCOL=SSL or SASL_SSL, not SASL_PLAINTEXT"),
        ({"protocol": "SSL", "key_file": "k"}, "KEY_FILE/KEY_PASSWORD: set"),
    ],
)  # fmt: skip
def test_kafka_settings_that_do_not_fit_fail_at_load(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigError, match="^setting RACER_KAFKA_SECURITY__.*" + names) as caught:
        kafka(monkeypatch, **fields)  # not only when a client is built
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"protocol": "SSL", "ca_file": "/nonexistent/ca.pem"},
         "RACER_KAFKA_SECURITY__CA_FILE: /nonexistent/ca.pem not found"),
        ({"protocol": "SSL", "cert_file": "/nonexistent/c.pem"}, "CERT_FILE: /nonexistent/c.pem"),
    ],
)  # fmt: skip
def test_kafka_files_that_cannot_be_read_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], names: str
) -> None:
    settings = kafka(monkeypatch, **fields)
    for build in (kafka_options, aiokafka_options):
        with pytest.raises(ConfigError, match=names.replace(".", r"\.")) as caught:
            build(settings)
        message = str(caught.value)
        assert "\n" not in message and SECRET not in message


def test_a_missing_ca_file_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError) as caught:
        kafka_options(kafka(monkeypatch, protocol="SASL_SSL", username="u", password=SECRET,
                            ca_file=missing))  # fmt: skip
    assert str(caught.value) == f"RACER_KAFKA_SECURITY__CA_FILE: {missing} not found"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"ca_file": "garbage"}, "CA_FILE: .* is not a PEM CA bundle"),
        ({"cert_file": "cert", "key_file": "ca"}, "CERT_FILE: cannot load the client"),
        ({"cert_file": "cert", "key_file": "key_encrypted", "key_password": SECRET},
         "CERT_FILE: cannot load the client"),
    ],
)  # fmt: skip
def test_unusable_pem_files(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path], fields: dict[str, Any], expected: str
) -> None:
    named = {k: (pem[v] if k.endswith("_file") else v) for k, v in fields.items()}
    with pytest.raises(ConfigError, match=expected) as caught:
        kafka_options(kafka(monkeypatch, protocol="SSL", **named))
    assert "\n" not in str(caught.value) and SECRET not in str(caught.value)


def test_bad_protocol_or_mechanism_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^setting RACER_KAFKA_SECURITY__PROTOCOL: "):
        kafka(monkeypatch, protocol="TLS")
    monkeypatch.delenv(K + "PROTOCOL")
    with pytest.raises(ConfigError, match=r"^setting RACER_KAFKA_SECURITY__SASL_MECHANISM: "):
        kafka(monkeypatch, sasl_mechanism="GSSAPI", password=SECRET)


def test_redis_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, RACER_REDIS_USERNAME="racer", RACER_REDIS_PASSWORD=SECRET)
    assert redis_options(settings) == {"username": "racer", "password": SECRET}
    client = aioredis.Redis.from_url(settings.redis_url, **redis_options(settings))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("racer", SECRET)


def test_rediss_with_ca_and_client_certificate(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]
) -> None:
    settings = load(
        monkeypatch, RACER_REDIS_URL="rediss://redis.example:6380/0",
        RACER_REDIS_PASSWORD=SECRET, RACER_REDIS_CA_FILE=pem["ca"],
        RACER_REDIS_CERT_FILE=pem["cert"], RACER_REDIS_KEY_FILE=pem["key"],
    )  # fmt: skip
    options = redis_options(settings)
    assert options == {
        "password": SECRET,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(pem["ca"]),
        "ssl_certfile": str(pem["cert"]),
        "ssl_keyfile": str(pem["key"]),
    }
    pool = aioredis.Redis.from_url(settings.redis_url, **options).connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    connection: Any = pool.make_connection()  # type: ignore[no-untyped-call]
    assert connection.ssl_context.ca_certs == str(pem["ca"])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RACER_REDIS_CA_FILE": "ca.pem"}, "RACER_REDIS_CA_FILE: needs a rediss://"),
        ({"RACER_REDIS_URL": "rediss://h:6380/0", "RACER_REDIS_KEY_FILE": "k.pem"},
         "RACER_REDIS_KEY_FILE: set RACER_REDIS_CERT_FILE too"),
        ({"RACER_REDIS_URL": "redis://:other@h:6379/0", "RACER_REDIS_PASSWORD": SECRET},
         "RACER_REDIS_PASSWORD: RACER_REDIS_URL holds a password too"),
        ({"RACER_REDIS_URL": "redis://u:p@h:6379/0", "RACER_REDIS_USERNAME": "v"},
         "RACER_REDIS_USERNAME: RACER_REDIS_URL holds a user name too"),
    ],
)  # fmt: skip
def test_redis_settings_that_do_not_fit_fail_at_load(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match="^setting " + expected.replace(".", r"\.")) as caught:
        load(monkeypatch, **env)
    assert "\n" not in str(caught.value) and SECRET not in str(caught.value)


def test_a_missing_redis_ca_file_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch, RACER_REDIS_URL="rediss://h:6380/0", RACER_REDIS_CA_FILE="/nonexistent/ca.pem"
    )
    with pytest.raises(ConfigError, match=r"^RACER_REDIS_CA_FILE: /nonexistent/ca\.pem not found"):
        redis_options(settings)


def secret_env() -> dict[str, str]:
    return {
        K + "PROTOCOL": "SASL_SSL",
        K + "USERNAME": "racer",
        K + "PASSWORD": SECRET,
        K + "CERT_FILE": "client.pem",  # a key password goes with a client certificate
        K + "KEY_PASSWORD": SECRET + "-key",
        "RACER_REDIS_PASSWORD": SECRET + "-redis",
    }


def test_secrets_never_show_in_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, **secret_env())
    assert settings.kafka_security.password is not None
    assert settings.kafka_security.password.get_secret_value() == SECRET
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
    ):
        assert SECRET not in text
    assert json.loads(settings.model_dump_json())["kafka_security"]["password"] == "**********"


async def test_secrets_never_reach_the_logs(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = secret_env() | {K + "CA_FILE": str(pem["ca"])}
    env.pop(K + "KEY_PASSWORD"), env.pop(K + "CERT_FILE")
    settings = load(monkeypatch, **env)
    options = kafka_options(settings)
    aiokafka_options(settings)
    app = faust.App("racer-log-test", broker="kafka://127.0.0.1:9", **options)
    logging.getLogger("racer_online").info("settings: %r, credentials %r", settings, options)
    logging.getLogger("racer_online").info("conf: %r", app.conf.broker_credentials)
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", **redis_options(settings))
        with pytest.raises(RedisConnectionError) as caught:
            await client.ping()
        await client.aclose()
    assert SECRET not in str(caught.value)
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    return subprocess.run(
        [sys.executable, "-m", "racer_online", *args],
        capture_output=True, text=True, timeout=60, env=clean | env,
    )  # fmt: skip


def test_cli_errors_never_show_secrets(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        env = secret_env() | {"RACER_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        unreachable = run_cli(env, "thresholds", "--json")
    assert unreachable.returncode == 1, unreachable.stderr
    assert unreachable.stderr.startswith("racer-online: error: ")
    assert str(port) in unreachable.stderr  # the error is about the closed port
    bad_setting = run_cli(env | {K + "PROTOCOL": "bogus"}, "thresholds", "--json")
    assert bad_setting.returncode == 1
    assert "RACER_KAFKA_SECURITY__PROTOCOL" in bad_setting.stderr
    for proc in (unreachable, bad_setting):
        for secret in (SECRET, SECRET + "-key", SECRET + "-redis"):
            assert secret not in proc.stdout + proc.stderr
