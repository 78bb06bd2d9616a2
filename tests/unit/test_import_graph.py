"""The package structure: dependencies point one way and no package-level cycle exists.

The graph is read from the source with ``ast`` (every ``import`` and
``from ... import`` of a ``ppml`` module, at any depth, type-checking-only
imports included). A node is a package: ``ppml.servers.api``,
``ppml.proto.domain``, ``ppml.client``, ... (a module counts for the package
it sits in).

Rules:
* no cycle between packages, and no two modules that import each other
  (``from package import submodule`` counts as importing the submodule), indeed
  no module-level cycle at all; ``ppml.servers.mpc`` keeps at most 8 modules at
  its top level (the rest live in subpackages, one concern each);
* ``ppml.proto`` (the shared core: wire, domain types, deployment contract) imports
  no other ppml package (a deprecated alias that re-exports a moved name is left out);
* ``ppml.training`` imports only ``ppml.proto`` (and never CrypTen);
* ``ppml.client`` and ``ppml.dashboard`` never import ``ppml.servers`` (nor CrypTen);
* inside the servers: api -> kinds -> control, mpc -> store, never upwards;
  inside the MPC engine: mpc (epochs, session, worker, dealer) -> training,
  aggregation, fast.service, rep3.service -> network -> randomness -> core; fast imports
  nothing else of the servers; rep3 (replicated, three parties) only fast.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]

Graph = dict[str, set[str]]

ALLOWED: dict[str, tuple[str, ...]] = {
    "ppml.proto": ("ppml.proto", "ppml.v1"),
    "ppml.training": ("ppml.training", "ppml.proto", "ppml.v1"),
    "ppml.client": ("ppml.client", "ppml.proto", "ppml.training", "ppml.v1"),
    "ppml.dashboard": ("ppml.dashboard", "ppml.client", "ppml.proto", "ppml.v1"),
}
SERVER_LAYERS = [  # a layer may import its own and lower layers only
    ("ppml.servers.store",),
    ("ppml.servers.he",),  # CKKS inference: SEAL through TenSEAL, no MPC
    ("ppml.servers.mpc.fast",),  # pure numpy: imports nothing else of the servers
    ("ppml.servers.mpc.rep3",),  # pure numpy, three parties: fast's PRG and layers only
    ("ppml.servers.mpc.core",),  # CrypTen as ppml runs it
    ("ppml.servers.mpc.randomness",),
    ("ppml.servers.mpc.network",),
    (
        "ppml.servers.mpc.training",
        "ppml.servers.mpc.aggregation",
        "ppml.servers.mpc.fast.service",
        "ppml.servers.mpc.rep3.service",
    ),
    ("ppml.servers.control", "ppml.servers.mpc"),  # mpc: epochs, session, worker, dealer
    ("ppml.servers.kinds",),
    ("ppml.servers.api",),
    ("ppml.servers",),  # entry points and wiring
]
# Modules that only warn and re-export a moved name from its new home (one release each):
# they point against the layers on purpose and are left out of the graph.
# tests/unit/test_public_api.py checks that each warns and re-exports the same object.
DEPRECATED_ALIASES = {
    "ppml.proto.deploy.local": "ppml.client.deploy.local",
    "ppml.servers.local": "ppml.client.deploy.local",
}
NO_CRYPTEN = ("ppml.training", "ppml.client", "ppml.dashboard", "ppml.proto")


def _modules() -> Iterator[tuple[str, Path]]:
    for package, folder in PACKAGE_DIRS.items():
        if package == "ppml.v1":
            continue
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if "ppml" in rel.parts:  # generated code under proto/ppml/v1
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            module = ".".join([package, *parts])
            if module not in DEPRECATED_ALIASES:
                yield module, path


def package_of(module: str, packages: set[str]) -> str:
    """The deepest known package containing ``module`` (a package is its own)."""
    best = ""
    for package in packages:
        if (module == package or module.startswith(package + ".")) and len(package) > len(best):
            best = package
    return best or module


def _imports(path: Path, module: str, *, modules: set[str] | None = None) -> Iterator[str]:
    """Every ppml-or-other name ``path`` imports. With ``modules`` (the known modules),
    ``from package import submodule`` yields the submodule only (the module it uses)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent if is_package else parent[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{alias.name}" for alias in node.names]
            if modules is None:
                yield base
                yield from names
            else:
                submodules = [name for name in names if name in modules]
                yield from submodules
                if len(submodules) < len(names):
                    yield base


def packages() -> set[str]:
    found = set()
    for module, path in _modules():
        found.add(module if path.name == "__init__.py" else module.rsplit(".", 1)[0])
    return found


def build_graph() -> tuple[Graph, dict[str, set[str]]]:
    """Package -> packages it imports; package -> third-party top-level names it imports."""
    known = packages() | {"ppml.v1"}
    graph: Graph = {package: set() for package in known}
    external: dict[str, set[str]] = {package: set() for package in known}
    for module, path in _modules():
        source = package_of(module, known)
        for name in _imports(path, module):
            if name.startswith("ppml."):
                target = package_of(name, known)
                if target != source and target in known:
                    graph[source].add(target)
            else:
                external[source].add(name.split(".")[0])
    return graph, external


def build_module_graph() -> Graph:
    """Module -> the ppml modules it imports (a name resolves to its deepest module)."""
    paths = dict(_modules())
    known = set(paths)
    graph: Graph = {module: set() for module in known}
    for module, path in paths.items():
        for name in _imports(path, module, modules=known):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return graph


def mutual_imports(graph: Graph) -> list[tuple[str, str]]:
    pairs = ((a, b) for a, targets in graph.items() for b in targets)
    return sorted((a, b) for a, b in pairs if a < b and a in graph[b])


def find_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def violations(graph: Graph) -> list[str]:
    found = []
    for source, targets in sorted(graph.items()):
        for top, allowed in ALLOWED.items():
            if source == top or source.startswith(top + "."):
                found += [
                    f"{source} imports {t}"
                    for t in sorted(targets)
                    if not any(t == a or t.startswith(a + ".") for a in allowed)
                ]
        level = _server_level(source)
        if level is not None:
            for target in sorted(targets):
                target_level = _server_level(target)
                if target_level is not None and target_level > level:
                    found.append(f"{source} imports {target} (a higher server layer)")
    return found


def _server_level(package: str) -> int | None:
    for level, names in enumerate(SERVER_LAYERS):
        if package in names:
            return level
    return None


# ---------------------------------------------------------------- the checks


def test_no_package_level_cycle() -> None:
    graph, _ = build_graph()
    assert find_cycles(graph) == []


def test_dependencies_point_one_way() -> None:
    graph, _ = build_graph()
    assert violations(graph) == []


def test_shared_and_client_packages_never_import_crypten() -> None:
    _, external = build_graph()
    for package, names in external.items():
        if any(package == p or package.startswith(p + ".") for p in NO_CRYPTEN):
            assert "crypten" not in names, f"{package} imports crypten"


def test_no_two_modules_import_each_other() -> None:
    assert mutual_imports(build_module_graph()) == []


def test_no_module_level_cycle() -> None:
    assert find_cycles(build_module_graph()) == []


def _alias_path(alias: str) -> Path:
    package = max((p for p in PACKAGE_DIRS if alias.startswith(p + ".")), key=len)
    rest = alias[len(package) + 1 :].split(".")
    return ROOT / PACKAGE_DIRS[package] / Path(*rest).with_suffix(".py")


def test_deprecated_aliases_import_only_their_new_home() -> None:
    for alias, home in DEPRECATED_ALIASES.items():
        names = _imports(_alias_path(alias), alias)
        assert {n for n in names if n.startswith("ppml.") and n != home} <= {
            f"{home}.{attr}"
            for attr in ("LocalCluster", "free_port", "wait_serving", "write_local_topology")
        }, alias


def test_the_mpc_engine_keeps_few_top_level_modules() -> None:
    top = ROOT / "servers" / "mpc"
    modules = [p.name for p in top.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 8, modules


def test_every_server_package_has_a_layer() -> None:
    servers = {p for p in packages() if p == "ppml.servers" or p.startswith("ppml.servers.")}
    assert {p for p in servers if _server_level(p) is None} == set()


def test_pyproject_lists_every_package() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert packages() | {"ppml.v1"} == listed


# ---------------------------------------------------------------- the checker checks


def test_a_mutual_module_import_is_found() -> None:
    graph = build_module_graph()
    graph["ppml.servers.mpc.randomness.keyed_random"].add("ppml.servers.mpc.randomness.prng")
    assert (
        "ppml.servers.mpc.randomness.keyed_random",
        "ppml.servers.mpc.randomness.prng",
    ) in mutual_imports(graph)


def test_an_added_cycle_is_found() -> None:
    graph, _ = build_graph()
    graph["ppml.servers.store"].add("ppml.servers.kinds")  # store -> kinds -> store
    cycles = find_cycles(graph)
    assert any({"ppml.servers.store", "ppml.servers.kinds"} <= set(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("ppml.client", "ppml.servers.api"),
        ("ppml.training", "ppml.servers.mpc"),
        ("ppml.proto.domain", "ppml.client"),
        ("ppml.servers.store", "ppml.servers.kinds"),
        ("ppml.servers.mpc", "ppml.servers.api"),
    ],
)
def test_an_upward_import_is_a_violation(source: str, target: str) -> None:
    graph, _ = build_graph()
    graph[source].add(target)
    assert any(f"{source} imports {target}" in v for v in violations(graph))
