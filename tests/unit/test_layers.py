"""The package's import structure: folders are layers, every import (lazy ones included) points down or sideways
within a layer, there are no import circles, no module is over 450 lines, and the product imports nothing from
tests/ or benchmarks/. Read from the source (ast), so it needs no imports of its own."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dfdtrain"
MAX_LINES = 450

# Lowest first. A module may import modules of its own rank or below. The longest matching prefix decides.
LAYERS = {
    "dfdtrain": 0, "dfdtrain.core": 0,
    "dfdtrain.config": 1,
    "dfdtrain.metrics": 2,
    "dfdtrain.data.storage": 2, "dfdtrain.data.decode": 2.1, "dfdtrain.data.perturb": 2.1, "dfdtrain.data.ingest": 2.2,
    "dfdtrain.data.faces": 2.3, "dfdtrain.data.shards": 2.4, "dfdtrain.data.loading": 2.5, "dfdtrain.data": 2.6,
    "dfdtrain.models": 3,
    "dfdtrain.evaluation": 4,
    "dfdtrain.training": 5,
    "dfdtrain.checks": 6,
    "dfdtrain.inference": 7, "dfdtrain.demo": 7, "dfdtrain.testing": 7,
    "dfdtrain.commands": 8, "dfdtrain.cli": 9, "dfdtrain.__main__": 10,
}


def module_names():
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def rank(module):
    prefixes = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(prefixes, key=len)]


def imports(modules):
    """{module: {imported dfdtrain module: line}}, every import statement anywhere in the file (lazy ones too)."""
    found = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = found.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                         for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("tests", "benchmarks", "conftest"):
                    targets[name] = node.lineno
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != module:
                    targets.setdefault(name, node.lineno)
    return found


def circles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_import_points_down():
    modules = module_names()
    upward = [f"{modules[module].relative_to(REPO)}:{line} imports {target}"
              for module, targets in imports(modules).items() for target, line in targets.items()
              if target in modules and rank(target) > rank(module)]
    assert upward == []


def test_no_import_circles():
    graph = {module: set(targets) for module, targets in imports(module_names()).items()}
    assert circles(graph) == []


def test_the_product_imports_nothing_from_tests_or_benchmarks():
    modules = module_names()
    outside = [f"{modules[module].relative_to(REPO)}:{line} imports {target}"
               for module, targets in imports(modules).items() for target, line in targets.items()
               if target.split(".")[0] in ("tests", "benchmarks", "conftest")]
    assert outside == []


def test_no_module_is_over_450_lines():
    files = [*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
    long = {str(path.relative_to(REPO)): count for path in files
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_sees_a_lazy_upward_import_and_a_circle(tmp_path):
    """The checks above can fail: an import inside a function counts, and a two-module loop is a circle."""
    assert rank("dfdtrain.config.schema") < rank("dfdtrain.models.backbones")
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
