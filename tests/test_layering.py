"""The house's layering: no import circle in the product and no arrow from a library module up to the command
line; the torch twin does not depend on the JAX command line; the installed packages (jaxtrain, torchref) never
reach into the test folders, which `pip install` leaves out; the public imports users write."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jaxtrain", "torchref")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def product_files():
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_scan_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from parity_tests import corpus\n    import tests.x\n")
    assert {"parity_tests", "parity_tests.corpus", "tests.x"} <= imported_modules(probe)


def test_no_product_module_imports_the_test_folders():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in product_files() for m in imported_modules(p)
                 if m.split(".")[0] in ("parity_tests", "tests", "conftest")]
    assert not offenders, offenders


def test_nothing_in_the_product_loads_the_examples():
    """`pip install` leaves examples/ out: no import of it, and no MODULE:ATTR string naming it."""
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in product_files() for m in imported_modules(p)
                 if m.split(".")[0] == "examples"]
    offenders += [f"{p.relative_to(ROOT)} loads {node.value!r}" for p in product_files()
                  for node in ast.walk(ast.parse(p.read_text(), str(p)))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.fullmatch(r"examples(\.\w+)+:\w+", node.value)]
    assert not offenders, offenders


def test_the_torch_twin_does_not_import_the_jax_command_line():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in (ROOT / "torchref").rglob("*.py")
                 for m in imported_modules(p) if m == "jaxtrain.cli" or m.startswith("jaxtrain.cli.")]
    assert not offenders, offenders


def test_the_installed_package_works_outside_the_checkout(tmp_path):
    """As a user runs it from another folder: the checkout's root is not on the path there, so a
    module that needed parity_tests would fail to import."""
    script = ("import importlib, importlib.util, pkgutil, sys\n"
              "assert importlib.util.find_spec('parity_tests') is None, 'the checkout is on the path'\n"
              "import jaxtrain, torchref\n"
              "for pkg in (jaxtrain, torchref):\n"
              "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
              "        if not m.name.endswith('__main__'):\n"
              "            importlib.import_module(m.name)\n"
              "from jaxtrain.parity import corpus\n"
              "assert corpus.QUICK_HEALTHY and corpus.QUICK_BUGS\n"
              "print('ok')\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    helped = subprocess.run([sys.executable, "-m", "jaxtrain.gpu_report", "--allow-cpu", "--quick", "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--allow-cpu" in helped.stdout, helped.stderr[-2000:]


# --------------------------------------------------------------------------- the import graph


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Product module -> the product modules it imports (at any depth). `from package import submodule`
    is an arrow to the submodule; an arrow to a module's own enclosing package is left out (Python has
    initialised that package before the module runs)."""
    modules = {module_name(p): p for p in product_files()}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if node.level == 0 else ".".join(
                    name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    + [node.module])
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets.update(m for m in subs if m in modules)
                if any(m not in modules for m in subs):
                    targets.add(base)
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_product_has_no_import_circle():
    assert not circles(import_graph()), circles(import_graph())


def test_no_library_module_imports_the_command_line():
    offenders = [f"{m} imports {t}" for m, targets in import_graph().items() for t in targets
                 if t == "jaxtrain.cli" and m not in ("jaxtrain.__main__",)]
    assert not offenders, offenders


def test_the_public_imports_users_write_keep_working():
    import jaxtrain.convert
    from jaxtrain.bench import compare_port
    from jaxtrain.optim import from_torch
    from jaxtrain.parity import check_port

    assert all(callable(f) for f in (compare_port, from_torch, check_port, jaxtrain.convert.torch_to_flax,
                                     jaxtrain.convert.flax_to_torch))


def test_every_product_module_says_what_it_is_for():
    missing = [str(p.relative_to(ROOT)) for p in product_files()
               if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, missing
