"""The docs: the site builds with --strict (no broken link, every results marker rendered, every API name
resolved), every Python snippet in README.md and docs/ runs (a page's snippets in order, in a fresh
interpreter, as a reader pastes them; a block marked `<!-- fragment -->` is an excerpt and is only compiled),
and README.md fits on a screen."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(<!-- fragment -->\s*\n)?```python\n(.*?)```", re.S)


def snippets(page: Path) -> tuple[list, list]:
    """(runnable blocks, fragments) of a page, in order."""
    runnable, fragments = [], []
    for match in FENCE.finditer(page.read_text()):
        (fragments if match.group(1) else runnable).append(match.group(2))
    return runnable, fragments


RUNNABLE = [p for p in PAGES if snippets(p)[0]]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_a_pages_python_runs_as_a_reader_pastes_it(page, tmp_path):
    runnable, _ = snippets(page)
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(runnable))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_fragment_is_python(page):
    for block in snippets(page)[1]:
        compile(block, f"{page.name} (fragment)", "exec")


def test_readme_fits_on_a_screen_and_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for page in ("docs/porting-guide.md", "docs/check-your-port.md", "docs/verdict.md"):
        assert page in text and (ROOT / page).exists()


def test_the_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    guide = (tmp_path / "site" / "porting-guide" / "index.html").read_text()
    assert "Measured by" in guide and "results/port_writer.json" in guide  # a results marker rendered
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "jaxtrain port" in cli and "--input-shape" in cli
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "check_port" in api and "assert_port" in api


def test_no_measured_figure_in_docs_prose_without_its_source():
    """Dated timing diaries belong to results/: no page says 'measured' or quotes seconds outside a rendered
    table or a line that names the command, machine kind and date."""
    for page in (ROOT / "docs").rglob("*.md"):
        for line in page.read_text().splitlines():
            if re.search(r"\b\d+(\.\d+)?\s*(s|seconds|min|minutes)\b", line) and "fresh clone" not in line \
                    and not line.startswith(("|", "compile:", "jaxtrain", "    ", "```")):
                assert re.search(r"20\d\d-\d\d-\d\d", line), f"{page.name}: a measured time without its date: {line}"
