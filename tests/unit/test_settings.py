"""Settings from the environment and the scopes file, as an operator would use them."""

import csv
import re
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from racer_online.datasets import default_dataset_dir
from racer_online.errors import ConfigError
from racer_online.scopes import ScopeConfig, load_scopes
from racer_online.settings import Settings

EXAMPLE_SCOPES = Path(__file__).parents[2] / "deploy/scopes.example.toml"

DATA = default_dataset_dir()
VERBATIM_SCOPES = """\
[scopes.default]
alpha = 0.1
delta = 0.1
bound = "binomial"
rule = "threshold"
miss = "augmented"
[scopes.default.models]
m0 = { price = 0.1 }
m1 = { price = 0.2 }
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("RACER_"):
            monkeypatch.delenv(name)


def settings() -> Settings:
    return Settings.load(_env_file=None)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app_id", "racer-online"),
        ("kafka_broker", "kafka://127.0.0.1:9092"),
        ("kafka_bootstrap", "127.0.0.1:9092"),
        ("redis_url", "redis://127.0.0.1:6379/0"),
        ("scopes_file", None),
        ("router_file", None),
        ("audit_rate", 0.1),
        ("recalibrate_interval_s", 10.0),
        ("recalibrate_every_records", 200),
        ("pending_ttl_s", 86_400.0),
        ("window_size", 10_000),
        ("window_max_age_s", 7 * 86_400.0),
        ("min_records", 1),
        ("web_host", "127.0.0.1"),
        ("web_port", 6066),
        ("web_enabled", True),
        ("threshold_poll_s", 0.5),
        ("leader_lease_s", 5.0),
        ("leader_tick_s", 0.5),
        ("threshold_max_age_s", 3600.0),
        ("batch_size", 500),
        ("batch_timeout_s", 0.05),
        ("fetch_max_wait_s", 0.5),
        ("broker_session_timeout_s", None),
        ("broker_heartbeat_interval_s", None),
        ("broker_rebalance_timeout_s", None),
        ("log_level", "WARNING"),
    ],
)
def test_defaults(name: str, expected: object) -> None:
    assert getattr(settings(), name) == expected


def test_default_topics() -> None:
    topics = settings().topics
    assert (topics.queries, topics.decisions, topics.feedback) == (
        "racer.queries",
        "racer.decisions",
        "racer.feedback",
    )
    assert (topics.thresholds, topics.alerts, topics.dlq) == (
        "racer.thresholds",
        "racer.alerts",
        "racer.dlq",
    )
    assert topics.partitions == 4


@pytest.mark.parametrize(
    ("env", "value", "path", "expected"),
    [
        ("RACER_KAFKA_BROKER", "kafka://10.0.0.5:19092", "kafka_broker", "kafka://10.0.0.5:19092"),
        ("RACER_REDIS_URL", "redis://cache:6380/2", "redis_url", "redis://cache:6380/2"),
        ("RACER_REDIS_URL", "rediss://:pw@cache:6380/1", "redis_url", "rediss://:pw@cache:6380/1"),
        (
            "RACER_SCOPES_FILE",
            str(EXAMPLE_SCOPES),
            "scopes_file",
            EXAMPLE_SCOPES,
        ),
        ("RACER_SCOPES_FILE", "", "scopes_file", None),
        ("RACER_AUDIT_RATE", "0.25", "audit_rate", 0.25),
        ("RACER_AUDIT_RATE", "0", "audit_rate", 0.0),
        ("RACER_AUDIT_RATE", "1", "audit_rate", 1.0),
        ("RACER_RECALIBRATE_INTERVAL_S", "2.5", "recalibrate_interval_s", 2.5),
        ("RACER_WEB_PORT", "7001", "web_port", 7001),
        ("RACER_WEB_ENABLED", "false", "web_enabled", False),
        ("RACER_WEB_HOST", "0.0.0.0", "web_host", "0.0.0.0"),
        ("RACER_APP_ID", "racer-test", "app_id", "racer-test"),
        ("RACER_RECALIBRATE_EVERY_RECORDS", "50", "recalibrate_every_records", 50),
        ("RACER_PENDING_TTL_S", "3600", "pending_ttl_s", 3600.0),
        ("RACER_WINDOW_SIZE", "1", "window_size", 1),
        ("RACER_WINDOW_MAX_AGE_S", "60", "window_max_age_s", 60.0),
        ("RACER_MIN_RECORDS", "100", "min_records", 100),
        ("RACER_THRESHOLD_POLL_S", "0.1", "threshold_poll_s", 0.1),
        ("RACER_THRESHOLD_MAX_AGE_S", "600", "threshold_max_age_s", 600.0),
        ("RACER_BATCH_SIZE", "64", "batch_size", 64),
        ("RACER_BATCH_TIMEOUT_S", "0.2", "batch_timeout_s", 0.2),
        ("RACER_FETCH_MAX_WAIT_S", "0.02", "fetch_max_wait_s", 0.02),
        ("RACER_BROKER_SESSION_TIMEOUT_S", "2", "broker_session_timeout_s", 2.0),
        ("RACER_BROKER_HEARTBEAT_INTERVAL_S", "0.5", "broker_heartbeat_interval_s", 0.5),
        ("RACER_BROKER_REBALANCE_TIMEOUT_S", "2", "broker_rebalance_timeout_s", 2.0),
        ("RACER_ROUTER_FILE", "router.joblib", "router_file", Path("router.joblib")),
        ("RACER_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("RACER_TOPICS__PARTITIONS", "8", "topics.partitions", 8),
        ("RACER_TOPICS__QUERIES", "tenant1.queries", "topics.queries", "tenant1.queries"),
        ("RACER_TOPICS__DLQ", "tenant1.dlq", "topics.dlq", "tenant1.dlq"),
        ("racer_audit_rate", "0.3", "audit_rate", 0.3),  # case-insensitive, like the OS
    ],
)
def test_env_names(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, path: str, expected: object
) -> None:
    monkeypatch.setenv(env, value)
    target: object = settings()
    for part in path.split("."):
        target = getattr(target, part)
    assert target == expected


def test_nested_env_keeps_the_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACER_TOPICS__PARTITIONS", "12")
    topics = settings().topics
    assert (topics.partitions, topics.queries, topics.dlq) == (12, "racer.queries", "racer.dlq")


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("RACER_AUDIT_RATE", "1.5", "RACER_AUDIT_RATE: Input should be less than or equal to 1"),
        ("RACER_AUDIT_RATE", "-0.1", "RACER_AUDIT_RATE: Input should be greater than or equal"),
        ("RACER_AUDIT_RATE", "nan", "RACER_AUDIT_RATE: Input should be a finite number"),
        ("RACER_AUDIT_RATE", "often", "RACER_AUDIT_RATE: Input should be a valid number"),
        ("RACER_WINDOW_SIZE", "0", "RACER_WINDOW_SIZE: Input should be greater than or equal to 1"),
        ("RACER_MIN_RECORDS", "0", "RACER_MIN_RECORDS: Input should be greater than or equal"),
        ("RACER_RECALIBRATE_INTERVAL_S", "0", "RACER_RECALIBRATE_INTERVAL_S: Input should be"),
        ("RACER_RECALIBRATE_INTERVAL_S", "inf", "RACER_RECALIBRATE_INTERVAL_S: Input should be"),
        ("RACER_RECALIBRATE_EVERY_RECORDS", "0", "RACER_RECALIBRATE_EVERY_RECORDS: Input should"),
        ("RACER_BATCH_SIZE", "0", "RACER_BATCH_SIZE: Input should be greater than or equal to 1"),
        ("RACER_BATCH_TIMEOUT_S", "-1", "RACER_BATCH_TIMEOUT_S: Input should be greater than 0"),
        ("RACER_PENDING_TTL_S", "0", "RACER_PENDING_TTL_S: Input should be greater than 0"),
        ("RACER_WEB_PORT", "70000", "RACER_WEB_PORT: Input should be less than or equal to 65535"),
        ("RACER_WEB_PORT", "0", "RACER_WEB_PORT: Input should be greater than or equal to 1"),
        ("RACER_TOPICS__PARTITIONS", "0", "RACER_TOPICS__PARTITIONS: Input should be greater"),
        ("RACER_TOPICS__QUERIES", "bad topic", "RACER_TOPICS__QUERIES: String should match"),
        ("RACER_KAFKA_BROKER", "http://h:9092", "RACER_KAFKA_BROKER: broker 'http://h:9092' is"),
        ("RACER_KAFKA_BROKER", "kafka://h:99999", "RACER_KAFKA_BROKER: broker 'kafka://h:99999'"),
        ("RACER_KAFKA_BROKER", "kafka://a:1,", "RACER_KAFKA_BROKER: broker '' is not"),
        (
            "RACER_REDIS_URL",
            "http://cache:6379",
            "RACER_REDIS_URL: must be a redis://, rediss://, redis+cluster://, rediss+cluster://,",
        ),
        ("RACER_LOG_LEVEL", "chatty", "RACER_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"),
        ("RACER_WEB_ENABLED", "maybe", "RACER_WEB_ENABLED: Input should be a valid boolean"),
    ],
)
def test_bad_env_values_give_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as caught:
        settings()
    assert str(caught.value).startswith("setting ")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValidationError):  # plain construction keeps pydantic's error
        Settings(_env_file=None)


def test_heartbeat_must_be_below_session_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACER_BROKER_SESSION_TIMEOUT_S", "2")
    monkeypatch.setenv("RACER_BROKER_HEARTBEAT_INTERVAL_S", "2")
    with pytest.raises(ConfigError, match="RACER_BROKER_HEARTBEAT_INTERVAL_S: must be below"):
        settings()


def test_the_leader_lease_outlives_two_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACER_THRESHOLD_POLL_S", "1")
    monkeypatch.setenv("RACER_LEADER_LEASE_S", "1.5")  # would lapse between two renewals
    with pytest.raises(
        ConfigError, match=r"RACER_LEADER_LEASE_S: at least two leader ticks \(2 s\)"
    ):
        settings()


def test_keyword_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACER_WEB_PORT", "7001")
    assert Settings.load(_env_file=None, web_port=7002).web_port == 7002


def test_dotenv_file_is_read_and_its_other_variables_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("RACER_WEB_PORT=7003\nCOMPOSE_PROJECT_NAME=racer\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().web_port == 7003
    assert Settings(_env_file=None).web_port == 6066


@pytest.mark.parametrize(
    ("url", "bootstrap"),
    [
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092"),
        ("kafka://a:9092,b:9093", "a:9092,b:9093"),
        ("kafka://a:9092,kafka://b:9093", "a:9092,b:9093"),
        ("kafka://a:9092;b:9093", "a:9092,b:9093"),
        ("kafka://a:9092, b:9093", "a:9092,b:9093"),
        ("broker.internal:9092", "broker.internal:9092"),
        ("kafka://broker", "broker:9092"),
        ("kafka://[::1]:9092", "[::1]:9092"),
    ],
)
def test_kafka_bootstrap(monkeypatch: pytest.MonkeyPatch, url: str, bootstrap: str) -> None:
    monkeypatch.setenv("RACER_KAFKA_BROKER", url)
    assert settings().kafka_bootstrap == bootstrap


def test_verbatim_scopes_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text(VERBATIM_SCOPES)
    monkeypatch.setenv("RACER_SCOPES_FILE", str(path))
    scope = settings().scopes["default"]
    assert (scope.alpha, scope.delta, scope.bound) == (0.1, 0.1, "binomial")
    assert (scope.rule, scope.miss) == ("threshold", "augmented")
    assert scope.model_names == ("m0", "m1") and scope.prices == (0.1, 0.2)


def test_scope_defaults_and_catalogue_order(tmp_path: Path) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text(
        "[scopes.fast]\nalpha = 0.2\ndelta = 0.05\n"
        '[scopes.fast.models]\nzeta = {}\nalpha-model = { price = 3 }\n"m.1" = { price = 0 }\n'
        "[scopes.strict]\nalpha = 0.01\ndelta = 0.01\nbound = 'hb'\nrule = 'cost'\n"
        "[scopes.strict.models]\nx = {}\ny = {}\n"
    )
    scopes = load_scopes(path)
    assert list(scopes) == ["fast", "strict"]
    fast, strict = scopes["fast"], scopes["strict"]
    assert (fast.bound, fast.rule, fast.miss) == ("anytime", "cumulative", "answerable")
    assert fast.model_names == ("zeta", "alpha-model", "m.1")  # file order, not sorted
    assert fast.prices == (0.0, 3.0, 0.0)
    assert strict.rule == "cost" and strict.prices == (0.0, 0.0)  # ties keep catalogue order


def test_scopes_are_loaded_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text(VERBATIM_SCOPES)
    monkeypatch.setenv("RACER_SCOPES_FILE", str(path))
    loaded = settings()
    first = loaded.scopes
    path.write_text("not toml at all")
    assert loaded.scopes is first


def test_packaged_default_scopes_match_the_shipped_data() -> None:
    assert resources.files("racer_online").joinpath("default_scopes.toml").is_file()
    scope = settings().scopes["default"]
    assert list(settings().scopes) == ["default"]
    assert (scope.alpha, scope.delta, scope.bound) == (0.1, 0.1, "anytime")
    assert (scope.rule, scope.miss) == ("cumulative", "answerable")
    assert scope.model_names == (
        "codegemma-7b",
        "gemma-2-9b-it",
        "llama-3.1-8b-instruct",
        "llama-3.1-nemotron-51b-instruct",
        "llama-3.3-nemotron-super-49b-v1",
        "llama3-chatqa-1.5-70b",
        "llama3-chatqa-1.5-8b",
        "mistral-7b-instruct-v0.3",
        "qwen2.5-7b-instruct",
    )
    assert scope.prices == (0.2, 0.1, 0.2, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2)
    with (DATA / "outcomes.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header[header.index("question") + 1 :] == list(scope.model_names)
    with (DATA / "prices.csv").open(newline="") as handle:
        prices = {
            row["model"]: float(row["input_price_usd_per_M"]) for row in csv.DictReader(handle)
        }
    assert scope.prices == tuple(prices[name] for name in scope.model_names)


def scope_file(catalogue: str = "m0 = { price = 0.1 }", **keys: str | None) -> str:
    """Scope ``default`` with alpha = delta = 0.1; ``keys`` (TOML literals) change or drop keys."""
    body = "".join(
        f"{key} = {value}\n"
        for key, value in {"alpha": "0.1", "delta": "0.1", **keys}.items()
        if value is not None
    )
    return f"[scopes.default]\n{body}" + (
        f"[scopes.default.models]\n{catalogue}\n" if catalogue else ""
    )


FIELD = "scopes.default."


def test_a_scopes_file_with_two_mistakes_names_both(tmp_path: Path) -> None:
    """The second mistake is not hidden behind the first: one run shows what to fix."""
    path = tmp_path / "scopes.toml"
    path.write_text(scope_file(delta=None, bound="'binomal'"))
    with pytest.raises(ConfigError) as caught:
        load_scopes(path)
    assert str(caught.value) == (
        f"scopes file {path}: {FIELD}delta: Field required; {FIELD}bound: Input should be "
        "'anytime', 'binomial', 'hoeffding', 'bentkus', 'hb' or 'crc'"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("alpha = \n", "invalid TOML: Invalid value (at line 1, column 9)"),
        ("", "scopes: Field required"),
        ("[scopes]\n", "scopes: Dictionary should have at least 1 item"),
        (
            "[scope.default]\nalpha = 0.1\n",
            "scopes: Field required; scope: Extra inputs are not permitted",
        ),
        (scope_file(alpha="1"), FIELD + "alpha: Input should be less than 1"),
        (scope_file(alpha="0"), FIELD + "alpha: Input should be greater than 0"),
        (scope_file(alpha="nan"), FIELD + "alpha: Input should be a finite number"),
        (scope_file(alpha="'ten percent'"), FIELD + "alpha: Input should be a valid number"),
        (scope_file(alpha=None), FIELD + "alpha: Field required"),
        (scope_file(delta="1.5"), FIELD + "delta: Input should be less than 1"),
        (scope_file(bound="'gauss'"), FIELD + "bound: Input should be 'anytime'"),
        (scope_file(rule="'cheapest'"), FIELD + "rule: Input should be 'cumulative'"),
        (scope_file(miss="'strict'"), FIELD + "miss: Input should be 'answerable'"),
        (scope_file(alpah="0.2"), FIELD + "alpah: Extra inputs are not permitted"),
        (scope_file(catalogue=""), FIELD + "models: Field required"),
        (
            scope_file(catalogue="", models="{}"),
            FIELD + "models: Dictionary should have at least",
        ),
        (
            scope_file(catalogue="m0 = { price = -1 }"),
            FIELD + "models.m0.price: Input should be greater",
        ),
        (
            scope_file(catalogue="m0 = { price = inf }"),
            FIELD + "models.m0.price: Input should be a finite",
        ),
        (scope_file(catalogue="m0 = { cost = 1 }"), FIELD + "models.m0.cost: Extra inputs are not"),
        (
            scope_file().replace("default", "'a b'"),
            "scopes.a b.[key]: use 1 to 128 letters, digits",
        ),
    ],
)
def test_bad_scopes_files_name_the_file_and_the_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_scopes(path)
    text = str(caught.value)
    assert text.startswith(f"scopes file {path}: ") and "\n" not in text
    assert message in text


def test_load_checks_the_scopes_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bad scopes file fails at start, with the settings, not at the first query."""
    path = tmp_path / "scopes.toml"
    path.write_text(scope_file(alpha="2"))
    monkeypatch.setenv("RACER_SCOPES_FILE", str(path))
    with pytest.raises(ConfigError, match=rf"^scopes file {path}: scopes.default.alpha"):
        Settings.load(_env_file=None)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.toml", None, "not found"),
        ("", None, "cannot read"),  # the directory itself
        ("latin1.toml", b"# caf\xe9\n", "cannot read"),
    ],
)
def test_unreadable_scopes_files(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^scopes file {re.escape(str(path))}: {message}"):
        load_scopes(path)


def test_bad_scopes_file_surfaces_through_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RACER_SCOPES_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml: not found"):
        settings().scopes  # noqa: B018


def test_scope_config_built_in_code() -> None:
    scope = ScopeConfig(alpha=0.05, delta=0.1, models={"a": {"price": 1}, "b": {}})
    assert scope.model_names == ("a", "b") and scope.prices == (1.0, 0.0)
    with pytest.raises(ValidationError):
        ScopeConfig(alpha=0.05, delta=0.1, models={})
