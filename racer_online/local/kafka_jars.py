"""Apache Kafka's jars from Maven Central, and the Java to run them.

``deploy/kafka/pom.xml`` names the broker; Maven copies it and its dependencies once per
version into ``~/.cache/racer-online/kafka-<version>/lib`` (``$XDG_CACHE_HOME`` if set),
which every later start reuses. Without Java or Maven, one line says what to install.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from racer_online.local.processes import EmbeddedServiceError

DEFAULT_VERSION = "3.9.1"  # docker-compose.yml's
POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
INSTALL_HINT = "Apache Kafka needs Java 17 and Maven: apt-get install openjdk-17-jdk-headless maven"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "racer-online"


def check_version(version: str) -> str:
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise EmbeddedServiceError(f"Kafka version {version!r} is not like {DEFAULT_VERSION}")
    return version


def major(version: str) -> int:
    return int(check_version(version).split(".")[0])


def java() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        raise EmbeddedServiceError(INSTALL_HINT)
    return found


def kafka_jars(version: str) -> Path:
    """The folder of the broker's jars for ``version``, resolved with Maven if not cached."""
    lib = cache_root() / f"kafka-{check_version(version)}" / "lib"
    if (lib / ".complete").exists():
        return lib
    java()  # no point in fetching what cannot run
    if not shutil.which("mvn"):
        raise EmbeddedServiceError(INSTALL_HINT)
    if not POM.exists():
        raise EmbeddedServiceError(f"{POM} is missing: Apache Kafka runs from a source checkout")
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))  # renamed when complete
    profile = "kafka4" if major(version) >= 4 else "kafka3"  # each has its logging binding
    args = ["mvn", "-q", "-B", "-f", str(POM), f"-P{profile}", f"-Dkafka.version={version}"]
    args += ["dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
    done = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode:
        shutil.rmtree(staging, ignore_errors=True)
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-2:])
        raise EmbeddedServiceError(f"Maven could not fetch Apache Kafka {version}: {tail}")
    (staging / ".complete").touch()
    try:
        staging.rename(lib)
    except OSError:  # a parallel run finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return lib


def properties(values: dict[str, object]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def log_configs(log: Path) -> dict[str, str]:
    """Kafka 3 reads the reload4j file, Kafka 4 the log4j 2 one; both write to ``log``."""
    pattern = "[%d] %p %m (%c)%n"
    return {
        "log4j.properties": properties({
            "log4j.rootLogger": "INFO, file",
            "log4j.appender.file": "org.apache.log4j.FileAppender",
            "log4j.appender.file.File": log,
            "log4j.appender.file.layout": "org.apache.log4j.PatternLayout",
            "log4j.appender.file.layout.ConversionPattern": pattern,
        }),
        "log4j2.properties": properties({
            "rootLogger.level": "INFO",
            "rootLogger.appenderRef.file.ref": "file",
            "appender.file.type": "File",
            "appender.file.name": "file",
            "appender.file.fileName": log,
            "appender.file.layout.type": "PatternLayout",
            "appender.file.layout.pattern": pattern,
        }),
    }  # fmt: skip
