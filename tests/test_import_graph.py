"""The import graph of ``nifi_lib`` flows one way (docs/architecture.md).

Every module is parsed with ``ast``; module-level AND function-level imports count (``import``, ``from ... import``
with relative imports resolved, ``importlib.import_module`` / ``__import__`` of a literal or of
``f"{__package__}..."``, and the ``COMMAND_MODULES`` list of ``nifi_lib/cli.py``). Each module maps to a node:
``nifi_lib.<subpackage>`` -> ``<subpackage>``, the top-level modules (config, errors, paths, warnings_policy,
verify) -> ``core``, ``nifi_lib.cli`` (the ``nifi`` command, which assembles every area) -> ``cli``.
The graph of nodes must have no cycle and respect :data:`LAYERS` (nothing imports a higher layer).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nifi_lib"

# Bottom to top; a node may import only nodes at or below its own position (docs/architecture.md).
LAYERS = ["core", "io", "metrics", "gs", "data", "synthesis", "diffusion", "restoration", "training",
          "evaluation", "experiments", "bench", "viz", "cli"]
TOP_LEVEL_NODES = {"cli": "cli"}       # top-level modules that are not 'core'


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_init = parts[-1] == "__init__"
    if is_init:
        parts = parts[:-1]
    return ".".join(parts), is_init


def collect_modules(root: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    return {module_name(p, root)[0]: (p, module_name(p, root)[1]) for p in sorted((root / package).rglob("*.py"))}


def node_of(module: str, root: Path, package: str = PACKAGE) -> str | None:
    parts = module.split(".")
    if parts[0] != package:
        return None
    if len(parts) == 1:
        return "core"
    if (root / package / parts[1]).is_dir():
        return parts[1]
    return TOP_LEVEL_NODES.get(parts[1], "core")


def _literal_target(arg: ast.expr, own_package: str) -> str | None:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):     # f"{__package__}.scenes"
        out = []
        for v in arg.values:
            if isinstance(v, ast.Constant):
                out.append(str(v.value))
            elif isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name) and v.value.id == "__package__":
                out.append(own_package)
            else:
                return None
        return "".join(out)
    return None


def imports_of(path: Path, module: str, is_init: bool, modules: dict) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of ``path``, at any depth (functions, methods, branches)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_init else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package.split(".")
                base = base[:len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            for a in n.names:       # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{a.name}"
                found.append((sub if sub in modules else target, n.lineno))
        elif isinstance(n, ast.Call) and n.args:
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in ("import_module", "__import__"):
                t = _literal_target(n.args[0], package)
                if t:
                    found.append((t, n.lineno))
        elif isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMMAND_MODULES"
                                               for t in n.targets) and isinstance(n.value, (ast.List, ast.Tuple)):
            found += [(e.value, e.lineno) for e in n.value.elts
                      if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return found


def import_graph(root: Path = REPO_ROOT, package: str = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """``graph[a][b]`` = the import sites (``module:line``) by which node ``a`` imports node ``b`` (a != b)."""
    modules = collect_modules(root, package)
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for mod, (path, is_init) in modules.items():
        a = node_of(mod, root, package)
        graph[a]                                  # every node appears, even without imports
        for target, line in imports_of(path, mod, is_init, modules):
            b = node_of(target, root, package)
            if b is not None and b != a:
                graph[a][b].append(f"{mod}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as a node path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(a: str) -> list[str] | None:
        state[a] = 1
        stack.append(a)
        for b in sorted(graph.get(a, {})):
            if state.get(b) == 1:
                return stack[stack.index(b):] + [b]
            if state.get(b) is None:
                found = visit(b)
                if found:
                    return found
        stack.pop()
        state[a] = 2
        return None

    for a in sorted(graph):
        if state.get(a) is None:
            found = visit(a)
            if found:
                return found
    return None


def describe_cycle(graph, cycle: list[str]) -> str:
    lines = [" -> ".join(cycle)]
    for a, b in zip(cycle, cycle[1:]):
        lines.append(f"  {a} -> {b}: {', '.join(graph[a][b][:5])}")
    return "\n".join(lines)


def layer_violations(graph, layers=LAYERS) -> list[str]:
    rank = {n: i for i, n in enumerate(layers)}
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if rank[b] > rank[a]:
                out.append(f"{a} (layer {rank[a]}) imports {b} (layer {rank[b]}): {', '.join(graph[a][b][:5])}")
    return out


# ------------------------------------------------------------------------------------------------


def test_every_node_has_a_layer():
    graph = import_graph()
    unknown = sorted(set(graph) - set(LAYERS))
    assert not unknown, f"subpackages without a layer in LAYERS (and docs/architecture.md): {unknown}"


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between subpackages:\n" + describe_cycle(graph, cycle)


def test_imports_respect_the_layer_order():
    bad = layer_violations(import_graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_the_graph_counts_lazy_imports_and_the_cli():
    """The walk sees function-level imports and the CLI's module list (else the two tests above prove little)."""
    graph = import_graph()
    # function-level only: ensure_trained's ``from ..training.trainer import train``
    assert any(s.startswith("nifi_lib.experiments.embedded:") for s in graph["experiments"]["training"])
    # the trainer's validation metrics are imported inside functions
    assert any(s.startswith("nifi_lib.training.trainer:") for s in graph["training"]["metrics"])
    assert {"data", "gs", "experiments", "evaluation"} <= set(graph["cli"])


def test_cycle_finder_reports_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "toypkg"
    for sub in ("low", "high"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "high" / "a.py").write_text("from ..low import b\n")
    (pkg / "low" / "b.py").write_text("def f():\n    from ..high.a import x\n")
    graph = import_graph(tmp_path, "toypkg")
    cycle = find_cycle(graph)
    assert cycle in (["high", "low", "high"], ["low", "high", "low"])
    assert "toypkg.low.b:2" in describe_cycle(graph, cycle)
    assert layer_violations(graph, ["low", "high"]) == ["low (layer 0) imports high (layer 1): toypkg.low.b:2"]


def test_architecture_doc_states_the_layers_and_every_module():
    doc = (REPO_ROOT / "docs" / "architecture.md").read_text()
    assert " -> ".join(f"`{n}`" for n in LAYERS) in doc, "docs/architecture.md must state LAYERS in order"
    missing = [m for m in collect_modules(REPO_ROOT) if m.count(".") >= 1 and f"`{m.split('.', 1)[1]}`" not in doc]
    assert not missing, f"modules without a line in docs/architecture.md: {missing}"


@pytest.mark.parametrize("module", ["nifi_lib.diffusion.latents", "nifi_lib.metrics.metrics", "nifi_lib.verify",
                                    "nifi_lib.experiments.embedded", "nifi_lib.data.fit_cli"])
def test_moved_modules_import(module):
    __import__(module)
