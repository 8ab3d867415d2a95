"""The layers hold: Faust is loaded only by the worker, the core does no I/O."""

import pkgutil
import subprocess
import sys

import racer_online

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(racer_online.__path__, prefix="racer_online.")
    if m.name != "racer_online.__main__"  # runs the CLI
)


def loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_package_is_walked() -> None:
    assert "racer_online.service.leader" in MODULES
    assert "racer_online.apps.cli" in MODULES


def test_faust_is_loaded_only_by_the_worker() -> None:
    loaded = loaded_after_import(MODULES)
    assert "faust" not in loaded
    assert "faust" in loaded_after_import(["worker.app"])  # the check can fail


def test_the_core_loads_no_client_or_framework() -> None:
    core = [m for m in MODULES if m.startswith("racer_online.core")]
    loaded = loaded_after_import(core)
    for client in ("redis", "aiokafka", "faust", "pydantic_settings", "typer"):
        assert client not in loaded, client


def test_the_client_loads_no_broker_store_or_stream_framework() -> None:
    """A gateway imports the client alone: no Kafka, Redis or Faust comes with it."""
    loaded = loaded_after_import(["racer_online.client"])
    for heavy in ("redis", "aiokafka", "faust", "litellm"):
        assert heavy not in loaded, heavy
