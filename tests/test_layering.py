"""The house's layering: the torch twin does not depend on the JAX command line, and the installed
packages (jaxtrain, torchref) never reach into the test folders, which `pip install` leaves out."""

import ast
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
