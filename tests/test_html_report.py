"""The parity report as a page: self-contained (no network), the verdict in words, the trajectories, and step 1
layer by layer with the first layer beyond its allowance marked; rendered by a real headless browser."""

import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from flax import nnx

from examples.layernorm_mlp import NnxLayerNormMLP, TorchLayerNormMLP
from jaxtrain.parity import check_port

RED = "#d62728"  # matplotlib's tab:red: the first layer beyond its allowance


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A port with Flax's LayerNorm epsilon, checked briefly in both dtypes, and its page."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(128, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 128)
    torch.manual_seed(0)
    report = check_port(TorchLayerNormMLP(), NnxLayerNormMLP(epsilon=1e-6, rngs=nnx.Rngs(0)), train=(x[:96], y[:96]),
                        test=(x[96:], y[96:]), optimizer="adam", optimizer_kwargs={"lr": 1e-3}, batch_size=32, steps=3)
    assert not report.passed
    return report, report.save_html(tmp_path_factory.mktemp("page") / "report.html")


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.ids, self.text = [], [], set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if "id" in attrs:
            self.ids.add(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_holds_the_verdict_trajectories_and_layers_without_the_network(planted):
    report, path = planted
    page = Page()
    page.feed(path.read_text())
    assert {"verdict", "report", "trajectories", "epochs", "layers"} <= page.ids
    assert page.tags.count("svg") == 3
    assert not [link for link in page.links if "://" in link]  # nothing fetched
    text = " ".join(page.text)
    assert "FAILED" in text and "LayerNorm eps" in text and "net.2" in text
    assert RED in path.read_text()  # the first layer beyond its allowance stands out


@pytest.mark.corpus  # a real browser (Debian's chromium; make corpus installs it)
def test_headless_chromium_renders_the_page(planted, tmp_path):
    _, path = planted
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed (apt-get install chromium)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<svg" in dom.stdout and "FAILED" in dom.stdout, dom.stderr[-2000:]
    assert 'id="trajectories"' in dom.stdout and "stage forward, net.2" in dom.stdout  # the localised layer
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 50  # the red bar, drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a rendered page, not a blank one
