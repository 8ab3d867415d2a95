"""The deployment files, checked offline against the code they deploy.

docker-compose.yml, deploy/Dockerfile, deploy/k8s/*.yaml (schema-validated with
kubernetes-validate against a pinned Kubernetes version), Prometheus and Grafana config:
every RACER_* name is a real setting, ports and paths agree everywhere, the topics created
are the settings' topics, images are the official ones, the image runs as non-root.
"""

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis.crc
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from racer_online.errors import ConfigError
from racer_online.scopes import load_scopes
from racer_online.service import metrics
from racer_online.settings import Settings, TopicsConfig
from racer_online.store import keys
from racer_online.store.connection import redis_options
from worker.security import check_web_exposure, kafka_options, web_token

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31"  # the oldest Kubernetes the manifests promise to run on
WEB_PORT = 6066


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = read_yaml(ROOT / "docker-compose.yml")
    return loaded


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def kind(manifests: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == name]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """``source:target[:mode]`` volumes as {target: source}."""
    found = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("RACER_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("RACER_"):
            monkeypatch.setenv(name, value)
    # The container's scopes file is the example the manifests mount; Settings.load() reads it.
    return Settings.load(_env_file=None, scopes_file=ROOT / "deploy/scopes.example.toml")


# --- RACER_* names -----------------------------------------------------------------------


def setting_env_names(model: type[BaseModel] = Settings, prefix: str = "RACER_") -> set[str]:
    """Every env name Settings reads: RACER_FIELD, and RACER_SECTION__FIELD for sections."""
    names = set()
    for name, info in model.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names |= setting_env_names(nested, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_setting_env_names_cover_the_public_contract() -> None:
    names = setting_env_names()
    assert {"RACER_KAFKA_BROKER", "RACER_REDIS_URL", "RACER_TOPICS__PARTITIONS",
            "RACER_KAFKA_SECURITY__PASSWORD", "RACER_REDIS_PASSWORD"} <= names  # fmt: skip


DEPLOY_FILES = [
    ROOT / "docker-compose.yml",
    DEPLOY / "Dockerfile",
    *sorted((DEPLOY / "k8s").glob("*.yaml")),
    ROOT / "docs" / "operations.md",
]


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_racer_env_name_is_a_setting(path: Path) -> None:
    used = set(re.findall(r"\bRACER_[A-Z0-9_]*[A-Z0-9]\b(?!__)", path.read_text()))
    unknown = sorted(used - setting_env_names())
    assert not unknown, f"{path.name} uses env names that no setting reads: {unknown}"


# --- docker-compose ------------------------------------------------------------------------

OFFICIAL_IMAGES = {
    "kafka": "apache/kafka:",
    "kafka-init": "apache/kafka:",
    "redis": "redis:",
    "prometheus": "prom/prometheus:",
    "grafana": "grafana/grafana:",
}


def test_compose_services_and_official_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*OFFICIAL_IMAGES, "worker"}
    for name, prefix in OFFICIAL_IMAGES.items():
        image = services[name]["image"]
        assert image.startswith(prefix), image
        assert not image.endswith((":latest", ":")), f"{name}: pin the image version"
    assert services["kafka"]["image"] == services["kafka-init"]["image"]
    assert services["worker"]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}


def test_kafka_runs_kraft_on_one_node(compose: dict[str, Any]) -> None:
    env = env_of(compose["services"]["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert not any("ZOOKEEPER" in name for name in env)
    cluster_id = env["CLUSTER_ID"]  # kafka-storage.sh wants a base64url UUID
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_redis_persists_with_aof_and_never_evicts(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    command = " ".join(redis_service["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis_service["volumes"])


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "kafka-init":
            assert service["restart"] == "no"  # one shot
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_depends_on_waits_for_health_and_topics(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for target, how in service.get("depends_on", {}).items():
            assert target in services and how["condition"] in conditions, (name, target)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[target], target
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "kafka-init": {"condition": "service_completed_successfully"},
    }
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_monitoring_is_a_profile(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        expected = ["monitoring"] if name in ("prometheus", "grafana") else None
        assert service.get("profiles") == expected, name


def test_workers(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    worker = compose["services"]["worker"]
    assert worker["command"] == ["racer-online", "worker"]
    assert worker["deploy"]["replicas"] == 2
    env = env_of(worker)
    settings = settings_from(env, monkeypatch)  # every value validates as a setting
    assert settings.web_host == "0.0.0.0" and settings.web_port == WEB_PORT
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.redis_url.startswith("redis://redis:6379")
    assert settings.topics == TopicsConfig()
    assert kafka_options(settings) == {} and redis_options(settings) == {}  # plain compose
    source = mounts(worker)[env["RACER_SCOPES_FILE"]]
    assert source == "./deploy/scopes.example.toml"
    assert load_scopes(ROOT / source)  # the mounted scopes file is valid
    assert worker["expose"] == [str(WEB_PORT)]
    assert f"127.0.0.1:{WEB_PORT}/health" in " ".join(worker["healthcheck"]["test"])


def secret_path(compose: dict[str, Any], service: str, secret: str) -> str:
    """Where compose mounts ``secret`` in ``service`` (short syntax: /run/secrets/NAME)."""
    assert secret in compose["secrets"], f"no top-level secret {secret}"
    assert secret in compose["services"][service].get("secrets", []), (service, secret)
    return f"/run/secrets/{secret}"


def test_compose_workers_bind_beyond_loopback_with_a_token_from_a_secret(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = env_of(compose["services"]["worker"])
    assert "RACER_WEB_TOKEN" not in env  # never a value in the compose file itself
    assert env["RACER_WEB_TOKEN_FILE"] == secret_path(compose, "worker", "racer_web_token")
    # The secret's value comes from the shell that runs compose, not from a file in the repo.
    assert compose["secrets"]["racer_web_token"] == {"environment": "RACER_WEB_TOKEN"}
    token = tmp_path / "racer_web_token"
    token.write_text("a-token\n")
    settings = settings_from(env | {"RACER_WEB_TOKEN_FILE": str(token)}, monkeypatch)
    check_web_exposure(settings)  # 0.0.0.0 with a token: accepted
    assert web_token(settings) == "a-token"
    without = {k: v for k, v in env.items() if k != "RACER_WEB_TOKEN_FILE"}
    with pytest.raises(ConfigError, match="without a token"):  # closed by default
        check_web_exposure(settings_from(without, monkeypatch))


def test_compose_workers_share_an_audit_key_from_the_uncommitted_env_file(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Required (``:?``: compose refuses to start without it), with no default written in
    the file, from ``.env``, which git ignores."""
    env = env_of(compose["services"]["worker"])
    assert re.fullmatch(r"\$\{RACER_AUDIT_KEY:\?[^}]+\}", env["RACER_AUDIT_KEY"])
    assert "audit_key" in settings_from(env, monkeypatch).model_fields_set
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def run_topic_creation(compose: dict[str, Any], tmp_path: Path) -> list[list[str]]:
    """Run kafka-init's script with a stub kafka-topics.sh that records its arguments."""
    init = compose["services"]["kafka-init"]
    assert init["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = init["command"]
    assert not re.search(r"(?<!\$)\$(?!\$)", script), "a single $ would be compose-interpolated"
    calls = tmp_path / "calls"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path)} | env_of(init)
    subprocess.run(["/bin/sh", "-c", script.replace("$$", "$")], env=env, check=True, timeout=30)
    return [line.split() for line in calls.read_text().splitlines()]


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_topic_creation_makes_exactly_the_settings_topics(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    calls = run_topic_creation(compose, tmp_path)
    creates = [args for args in calls if "--create" in args]
    defaults = TopicsConfig()
    values = (getattr(defaults, name) for name in TopicsConfig.model_fields)
    expected = {value for value in values if isinstance(value, str)}  # the topic names
    assert sorted(option(a, "--topic") for a in creates) == sorted(expected)
    for args in creates:
        assert option(args, "--partitions") == str(defaults.partitions)
        assert option(args, "--bootstrap-server") == "kafka:9092"
        assert "--if-not-exists" in args  # re-running compose up is harmless


# --- Dockerfile ----------------------------------------------------------------------------


def stages(dockerfile: str) -> list[list[str]]:
    """Instructions (continuation lines joined) per build stage."""
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_dockerfile_is_multi_stage_slim_and_non_root(dockerfile: str) -> None:
    builder, runtime = stages(dockerfile)
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim AS builder$", builder[0])
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim AS runtime$", runtime[0])
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[1-9]$", dockerfile, re.M)
    assert any(i.startswith("RUN pip wheel --wheel-dir /wheels") for i in builder)
    assert any("from=builder" in i and "pip install --no-index" in i for i in runtime)
    users = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(i.startswith("CMD ") for i in runtime)
    assert json.loads(runtime[-1].removeprefix("CMD ")) == ["racer-online", "worker"]


def test_dockerfile_ports_and_healthcheck(dockerfile: str) -> None:
    assert re.search(rf"^EXPOSE {WEB_PORT}$", dockerfile, re.M)
    assert f"RACER_WEB_PORT={WEB_PORT}" in dockerfile
    assert "RACER_WEB_HOST=0.0.0.0" in dockerfile
    healthcheck = re.sub(r"\\\n\s*", " ", dockerfile.split("HEALTHCHECK", 1)[1]).splitlines()[0]
    assert "/health" in healthcheck and "RACER_WEB_PORT" in healthcheck


def test_dockerignore_keeps_what_the_image_copies(dockerfile: str) -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and r[0] != "#"]
    assert rules[0] == "*"  # an allow-list: nothing else reaches the build context
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for line in stages(dockerfile)[0]:
        if line.startswith("COPY "):
            copied |= {src.rstrip("/") for src in line.split()[1:-1]}
    assert copied == allowed == {"pyproject.toml", "README.md", "racer_online", "worker"}


# --- web port, probes, scraping ----------------------------------------------------------


@pytest.fixture(scope="module")
def worker_routes() -> set[str]:
    from worker.app import Worker

    return set(Worker(Settings.load(_env_file=None)).app.web.views)


def test_the_worker_serves_what_deployments_probe(worker_routes: set[str]) -> None:
    assert {"/health", "/ready", "/metrics"} <= worker_routes


def test_prometheus_scrapes_every_worker_on_the_web_port(compose: dict[str, Any]) -> None:
    config = read_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "racer-online"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == WEB_PORT
    # The workers ask for a token: Prometheus sends the workers' own secret.
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": secret_path(compose, "prometheus", "racer_web_token"),
    }
    mounted = mounts(compose["services"]["prometheus"])
    for rule_file in config["rule_files"]:
        assert (ROOT / mounted[rule_file]).is_file()
    assert mounted["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"


def exported_series() -> set[str]:
    """Every series name racer_online.service.metrics exports, with the client's suffixes."""
    names = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            suffixes = {
                "counter": ["_total", "_created"],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
            }.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def racer_names(text: str) -> set[str]:
    return set(re.findall(r"\bracer_[a-z0-9_]+", text))


def test_alert_rules_use_exported_metrics() -> None:
    rules = read_yaml(DEPLOY / "prometheus" / "alerts.yml")
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set().union(*map(racer_names, exprs))
    assert used and used <= exported_series(), used - exported_series()


# --- Grafana -------------------------------------------------------------------------------

REQUIRED_ON_DASHBOARD = {
    "racer_threshold",
    "racer_realised_miss_rate",
    "racer_set_size_bucket",
    "racer_abstentions_total",
    "racer_consumer_lag",
}


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounted = mounts(grafana)
    assert mounted["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = read_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090" in compose["services"]["prometheus"]["healthcheck"]["test"][-1]
    (provider,) = read_yaml(provisioning / "dashboards" / "racer-online.yml")["providers"]
    assert mounted[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/racer-online.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} | {
        t["datasource"]["uid"] for t in dashboard["templating"]["list"]
    }
    assert uids == {source["uid"]}


def test_dashboard_plots_the_required_metrics_by_scope() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/racer-online.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = set().union(*map(racer_names, exprs))
    assert used >= REQUIRED_ON_DASHBOARD
    assert exported_series() >= REQUIRED_ON_DASHBOARD  # they exist in racer_online.service.metrics
    assert used <= exported_series(), used - exported_series()
    (scope,) = dashboard["templating"]["list"]
    assert scope["name"] == "scope"
    scoped = [e for e in exprs if "racer_threshold" in e or "racer_realised" in e]
    assert all('scope=~"$scope"' in e for e in scoped)


# --- Kubernetes ----------------------------------------------------------------------------


def test_every_manifest_validates_against_the_pinned_kubernetes(
    manifests: list[dict[str, Any]],
) -> None:
    checked = 0
    for doc in manifests:
        if doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
            continue
        body = {k: v for k, v in doc.items() if k != "_file"}
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 7


def test_the_validator_rejects_a_typo(manifests: list[dict[str, Any]]) -> None:
    (deployment,) = kind(manifests, "Deployment")
    body = json.loads(json.dumps({k: v for k, v in deployment.items() if k != "_file"}))
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template(
    manifests: list[dict[str, Any]],
) -> None:
    kustomization = read_yaml(DEPLOY / "k8s" / "kustomization.yaml")
    files = {m["_file"] for m in manifests} - {"kustomization.yaml", "secret.template.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.fixture(scope="module")
def pod(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kind(manifests, "Deployment")
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_deployment_probes_ports_and_shutdown(pod: dict[str, Any], dockerfile: str) -> None:
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["racer-online", "worker"]
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": WEB_PORT, "protocol": "TCP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(WEB_PORT)
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] >= pause + 30  # room for Faust to leave
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    uid = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/app" in {m["mountPath"] for m in container["volumeMounts"]}  # Faust's datadir
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)


def test_deployment_env_comes_from_the_configmap_and_secret(
    pod: dict[str, Any], manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = pod["spec"]["containers"]
    configmaps = {m["metadata"]["name"]: m for m in kind(manifests, "ConfigMap")}
    secrets = {m["metadata"]["name"]: m for m in kind(manifests, "Secret")}
    refs = container["envFrom"]
    (env_map,) = [configmaps[r["configMapRef"]["name"]] for r in refs if "configMapRef" in r]
    (secret,) = [secrets[r["secretRef"]["name"]] for r in refs if "secretRef" in r]
    env = env_map["data"] | secret["stringData"]
    settings = settings_from(env, monkeypatch)  # the values validate as settings
    assert settings.web_host == "0.0.0.0" and settings.web_port == WEB_PORT
    assert settings.topics == TopicsConfig()
    assert settings.kafka_security.protocol == "SASL_SSL"
    assert "broker_credentials" in kafka_options(settings)  # the credentials fit together
    assert redis_options(settings)["password"] == "CHANGE-ME"
    check_web_exposure(settings)  # 0.0.0.0, with the Secret's token
    assert web_token(settings) == "CHANGE-ME"
    # Secret things only in the Secret.
    assert not {n for n in env_map["data"] if "PASSWORD" in n or "TOKEN" in n}
    assert set(secret["stringData"]) == {
        "RACER_KAFKA_SECURITY__USERNAME", "RACER_KAFKA_SECURITY__PASSWORD", "RACER_REDIS_PASSWORD",
        "RACER_WEB_TOKEN", "RACER_AUDIT_KEY",
    }  # fmt: skip
    tokenless = {k: v for k, v in env.items() if k != "RACER_WEB_TOKEN"}
    with pytest.raises(ConfigError, match="without a token"):  # a Secret without it: refused
        check_web_exposure(settings_from(tokenless, monkeypatch))
    # Every replica reads the same audit key, from the Secret.
    assert "audit_key" in settings.model_fields_set
    assert settings.audit_key.get_secret_value() == "CHANGE-ME"
    assert "RACER_AUDIT_KEY" not in env_map["data"]


def test_secrets_are_placeholders_only(manifests: list[dict[str, Any]]) -> None:
    for secret in kind(manifests, "Secret"):
        assert secret["_file"] == "secret.template.yaml"
        assert "data" not in secret  # no base64 blobs that could hide a real value
        assert set(secret["stringData"].values()) == {"CHANGE-ME"}


def test_scopes_configmap_is_the_example_file_and_mounted_where_settings_look(
    pod: dict[str, Any], manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    configmaps = {m["metadata"]["name"]: m for m in kind(manifests, "ConfigMap")}
    example = (DEPLOY / "scopes.example.toml").read_text()
    assert load_scopes(DEPLOY / "scopes.example.toml")
    (container,) = pod["spec"]["containers"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    scopes_file = Path(configmaps["racer-online-env"]["data"]["RACER_SCOPES_FILE"])
    volume = mounts[str(scopes_file.parent)]
    assert configmaps[volume["configMap"]["name"]]["data"][scopes_file.name] == example


def test_service_hpa_and_pdb_select_the_workers(
    pod: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    labels = pod["metadata"]["labels"]
    (deployment,) = kind(manifests, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    (service,) = kind(manifests, "Service")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["publishNotReadyAddresses"] is True  # scrape unready workers too
    (port,) = service["spec"]["ports"]
    assert port["port"] == WEB_PORT and port["targetPort"] == "http"
    (pdb,) = kind(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    (hpa,) = kind(manifests, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    partitions = TopicsConfig().partitions
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] <= partitions  # more would idle


# --- Redis Cluster -------------------------------------------------------------------------


def all_keys(scope: str, query_id: str) -> list[str]:
    """Every key racer_online.store.keys builds for a scope (not the deployment's own keys,
    which take no argument)."""
    built = []
    for name in dir(keys):
        build = getattr(keys, name)
        if callable(build) and not name.startswith("_") and build.__module__ == keys.__name__:
            arity = build.__code__.co_argcount
            if arity:
                built.append(build(scope) if arity == 1 else build(scope, query_id))
    return built


@pytest.mark.parametrize("scope", ["default", "strict", "tenant-42.eu_west", "x"])
@pytest.mark.parametrize("query_id", ["q1", "{q}", "a}b{c", "q:{default}"])
def test_all_keys_of_a_scope_share_one_cluster_slot(scope: str, query_id: str) -> None:
    built = all_keys(scope, query_id)
    assert len(built) >= 4  # pending, window, threshold, history at least
    slots = {redis.crc.key_slot(k.encode()) for k in built}
    assert slots == {redis.crc.key_slot(scope.encode())}
