"""The layers hold: Faust is loaded only by the worker, the core does no I/O, every import
points down (docs/architecture.md), and no modules import each other in a circle."""

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import racer_online

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(racer_online.__path__, prefix="racer_online.")
    if m.name != "racer_online.__main__"  # runs the CLI
)
ROOT = Path(racer_online.__file__).parent.parent

# The rooms from the bottom up (docs/architecture.md, "Layers"). A module imports from its
# own room, from a room of a lower rank, or, among the contracts, from another contract.
RANKS = {
    "errors": -1,  # every room raises them
    "core": 0,
    **dict.fromkeys(("files", "messages", "settings", "scopes", "records", "redis_urls"), 1),
    **dict.fromkeys(("datasets", "data"), 1),  # the outcomes files, the shipped one
    **dict.fromkeys(("store", "routers"), 2),  # what the service is handed
    "client": 2,  # the decision API's client: messages only, so a gateway imports it alone
    "integrations": 3,  # gateway plugins, on the client
    "service": 3,
    **dict.fromkeys(("kafka", "offline", "local", "dashboard"), 4),
    **dict.fromkeys(("testing", "worker"), 5),
    "apps": 6,
    "__main__": 7,
}
CONTRACTS = 1
MAX_LINES = 400


def loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def room(module: str) -> str | None:
    """``racer_online.service.leader`` -> ``service``; ``worker.app`` -> ``worker``."""
    parts = module.split(".")
    if parts[0] == "worker":
        return "worker"
    return parts[1] if parts[0] == "racer_online" and len(parts) > 1 else None


def imports_of(source: str, module: str, modules: set[str]) -> Iterator[str]:
    """Every project module ``source`` imports, at the top or inside a function alike (an
    import hidden in a function points the same way). ``from package import name`` is the
    submodule ``name`` if there is one, else the package."""
    package = module if source.startswith("#package") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports, less its own packages (a submodule that
    imports its package's ``__init__`` finds it being imported already)."""
    files = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for top in ("racer_online", "worker")
        for p in (root / top).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        source = path.read_text()
        if path.name == "__init__.py":
            source = "#package\n" + source
        named = set(imports_of(source, module, set(files)))
        graph[module] = {
            n for n in named if n in files and n != module and not module.startswith(f"{n}.")
        }
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        here = room(module)
        for target in sorted(targets):
            there = room(target)
            if here is None or there is None or here == there:
                continue
            rank, other = RANKS[here], RANKS[there]
            if other > rank or (other == rank and rank != CONTRACTS):
                wrong.append(f"{module} -> {target}")
    return wrong


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (each once, as found by a depth-first walk)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state[target] == 1:
                found.append([*path[path.index(target) :], target])
            elif state[target] == 0:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            walk(module, [module])
    return found


def test_the_package_is_walked() -> None:
    assert "racer_online.service.leader" in MODULES
    assert "racer_online.apps.cli" in MODULES


def test_every_room_has_a_rank() -> None:
    rooms = {room(m) for m in import_graph()} - {None}
    assert rooms <= set(RANKS), rooms - set(RANKS)


def test_faust_is_loaded_only_by_the_worker() -> None:
    loaded = loaded_after_import(MODULES)
    assert "faust" not in loaded
    assert "faust" in loaded_after_import(["worker.app"])  # the check can fail


def test_the_core_loads_no_client_or_framework() -> None:
    core = [m for m in MODULES if m.startswith("racer_online.core")]
    loaded = loaded_after_import(core)
    for client in ("redis", "aiokafka", "faust", "pydantic_settings", "typer"):
        assert client not in loaded, client


def test_every_import_points_down() -> None:
    assert upward_imports(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(import_graph()) == []


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The two checks can fail: the imports this project once had, in a tree of their own."""
    tree = {
        "racer_online/__init__.py": "",
        "racer_online/offline/__init__.py": "",
        "racer_online/offline/backtest.py": "from racer_online.apps import replay\n",
        "racer_online/apps/__init__.py": "",
        "racer_online/apps/replay.py": "",
        "racer_online/service/__init__.py": "",
        "racer_online/service/window_sync.py": (
            "def warm():\n    from racer_online.offline.backtest import x\n"
        ),
        "racer_online/local/__init__.py": "",
        "racer_online/local/brokers.py": "from racer_online.local.services import Tansu\n",
        "racer_online/local/kafka.py": "from racer_online.local.services import free_port\n",
        "racer_online/local/services.py": (
            "def start():\n    from racer_online.local.brokers import local_broker\n"
        ),
        "worker/__init__.py": "",
        "worker/dashboard.py": "from racer_online.apps.replay import live_page\n",
    }
    for name, text in tree.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == [
        "racer_online.offline.backtest -> racer_online.apps.replay",
        "racer_online.service.window_sync -> racer_online.offline.backtest",
        "worker.dashboard -> racer_online.apps.replay",
    ]
    assert circles(graph) == [
        ["racer_online.local.brokers", "racer_online.local.services", "racer_online.local.brokers"]
    ]


def test_no_module_is_over_400_lines() -> None:
    """Short modules: none in the package, the worker or the benchmarks is over 400 lines."""
    long = {
        str(path.relative_to(ROOT)): lines
        for top in ("racer_online", "worker", "benchmarks")
        for path in (ROOT / top).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_client_loads_no_broker_store_or_stream_framework() -> None:
    """A gateway imports the client alone: no Kafka, Redis or Faust comes with it."""
    loaded = loaded_after_import(["racer_online.client"])
    for heavy in ("redis", "aiokafka", "faust", "litellm"):
        assert heavy not in loaded, heavy
