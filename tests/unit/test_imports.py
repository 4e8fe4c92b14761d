"""The master's package has no import cycle: every ``deploy_master`` module's imports (at the top and
inside functions alike), read from its source, form a graph without a loop."""

import ast
import os

import deploy_master

PACKAGE = os.path.dirname(deploy_master.__file__)


def _modules():
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3].replace(os.sep, ".")
                out["deploy_master" + ("" if rel == "__init__" else "." + rel.removesuffix(".__init__"))] = \
                    os.path.join(folder, name)
    return out


def _imports(path, known):
    """The ``deploy_master`` modules the file at ``path`` imports (``from deploy_master import x``: x when it
    is a module, else the package)."""
    found = set()
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deploy_master"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
    return found


def test_the_master_package_has_no_import_cycle():
    modules = _modules()
    # a package's own __init__ is where its submodules' "from package import X" lands: not a cycle
    graph = {m: {d for d in _imports(p, modules) if d != m and not m.startswith(d + ".")} for m, p in modules.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "deploy_master.config" in graph and "deploy_master.store_etcd" in graph
    assert cycles == []


def test_the_package_docstring_names_every_module():
    listed = {line.split("``")[1] for line in deploy_master.__doc__.splitlines()
              if line.startswith("``") and not line.startswith("``_")}
    modules = {m.split(".")[1] for m in _modules() if m.count(".") == 1}
    assert listed == modules
