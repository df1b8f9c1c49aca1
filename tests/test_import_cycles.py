"""No import cycle among sam_edge's modules: the graph of every import statement
(module level or inside a function, absolute or relative) read from the source
with ast, and its strongly connected components. `from package import submodule`
is an edge to the submodule. An import from one of the module's own ancestor
packages (`from .. import __version__`) is not an edge, and neither is the
implicit import of parents: Python initialises those before the module itself."""

import ast
import os

import sam_edge

PACKAGE_DIR = os.path.dirname(os.path.abspath(sam_edge.__file__))


def _modules():
    """{dotted name: path} of every module under sam_edge/: .py files, and the
    compiled extensions (whose path is None: they import nothing of ours)."""
    root = os.path.dirname(PACKAGE_DIR)
    found = {}
    for directory, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            path = os.path.join(directory, name)
            if name.endswith(".py"):
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
            elif name.endswith((".so", ".pyd")):
                parts = os.path.relpath(path, root).split(os.sep)
                parts[-1] = name.split(".")[0]
                found[".".join(parts)] = None
    return found


def _imports(module, path, modules):
    """The sam_edge modules that `module` (at `path`) names in an import statement."""
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from package import submodule` depends on the submodule alone: the package,
            # a parent of this module or imported as one, is initialised before it anyway.
            names = [f"{source}.{alias.name}" for alias in node.names]
            targets.update(n for n in names if n in modules)
            if not all(n in modules for n in names):
                targets.add(source)
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {t for t in targets if t in modules and t != module and t not in ancestors}


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_walker_sees_imports_inside_functions(tmp_path):
    """The walker itself: a cycle made only by function-level relative imports is found."""
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "b.py").write_text("def g():\n    from . import a\n")
    modules = {"pkg.a": str(tmp_path / "a.py"), "pkg.b": str(tmp_path / "b.py")}
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle():
    modules = _modules()
    assert "sam_edge.export.build" in modules and "sam_edge.runtime.bundle" in modules
    graph = {m: _imports(m, p, modules) if p else set() for m, p in modules.items()}
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
