"""The port writer: each module rule and op rule writes torch's formula (the written port's float64 forward pass
equals torch's to rounding, torch's weights loaded through `convert`), a written port trains like torch's model
(check_port's three parts), what cannot be written is said, and the file never imports torch."""

import copy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from jaxtrain.errors import PortMappingError
from jaxtrain.flax_model import pure_model
from jaxtrain.port import modules, ops, port


def forward_both(model: nn.Module, x) -> tuple[np.ndarray, np.ndarray, object]:
    """The written port's and torch's eval outputs in float64 on `x`, torch's weights in both."""
    torch.manual_seed(0)
    p = port(model, x)
    assert not p.untranslated, p.untranslated
    flax = p.flax_model()
    flax.eval()
    jax.config.update("jax_enable_x64", True)
    flax = pure_model(flax).computing_in(np.float64).module  # nnx.Embed fixes float32 as its dtype
    graphdef, state = nnx.split(flax)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    floats = lambda a: a.astype(np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a  # noqa: E731
    xs = x if isinstance(x, tuple) else (x,)
    ours = np.asarray(nnx.merge(graphdef, state)(*(jnp.asarray(floats(a)) for a in xs)))
    with torch.no_grad():
        theirs = copy.deepcopy(model).double().eval()(*(torch.from_numpy(floats(a)) for a in xs)).numpy()
    return ours, theirs, p


class Seq(nn.Module):
    """The layers under test, called in order (a user's class, so the writer writes a class for it)."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class Recurrent(nn.Module):
    """A recurrent layer's outputs and final states, summed into one tensor."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out, state = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        out = out if self.rnn.batch_first else out.transpose(0, 1)
        last = state[0] if isinstance(self.rnn, nn.LSTM) else state
        return torch.cat([out.flatten(1), last.transpose(0, 1).flatten(1)], dim=1)


class Attend(nn.Module):
    """Self-attention with a key padding mask computed from the inputs; outputs and averaged weights."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2, batch_first=batch_first)

    def forward(self, x):
        q = x if self.attn.batch_first else x.transpose(0, 1)
        out, weights = self.attn(q, q, q, key_padding_mask=x[:, :, 0] > 1.5)
        out = out if self.attn.batch_first else out.transpose(0, 1)
        return torch.cat([out.flatten(1), weights.flatten(1)], dim=1)


class TiedLM(nn.Module):
    """A head tied to the embedding (written as its attend), and a layer's tensor read by the owner's code."""

    def __init__(self, head_bias: bool = False):
        super().__init__()
        self.embed, self.mix = nn.Embedding(7, 4), nn.Linear(4, 4)
        self.head = nn.Linear(4, 7, bias=head_bias)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = torch.tanh(self.mix(self.embed(ids))) + self.mix.bias.to(self.embed.weight.dtype)
        return self.head(h @ self.mix.weight.t()).flatten(1)


class Decode(nn.Module):
    """A decoder layer attending to its own inputs as memory, causal on the targets."""

    def __init__(self, **kwargs):
        super().__init__()
        self.dec = nn.TransformerDecoderLayer(6, 2, 12, dropout=0.0, batch_first=True, **kwargs)

    def forward(self, x):
        return self.dec(x, x * 0.5, tgt_is_causal=True, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5),
                        memory_key_padding_mask=x[:, :, 1] > 1.5).flatten(1)


IMAGES = np.random.default_rng(0).normal(size=(3, 4, 8, 8)).astype(np.float32)
ROWS = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
SEQS = np.random.default_rng(2).normal(size=(3, 5, 6)).astype(np.float32)
SIGNALS = np.random.default_rng(3).normal(size=(3, 4, 10)).astype(np.float32)
IDS = np.random.default_rng(4).integers(0, 7, (3, 5))

MODULE_CASES = {
    "Linear": (lambda: Seq(nn.Linear(6, 3)), ROWS),
    "Linear (no bias)": (lambda: Seq(nn.Linear(6, 3, bias=False)), ROWS),
    "Conv2d": (lambda: Seq(nn.Conv2d(4, 5, 3, stride=2, padding=1, dilation=1), nn.Flatten()), IMAGES),
    "Conv2d (groups, reflect, dilation)": (
        lambda: Seq(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, padding_mode="reflect"), nn.Flatten()), IMAGES),
    "Conv1d": (lambda: Seq(nn.Conv1d(4, 3, 3, padding="same"), nn.Flatten()), SIGNALS),
    "BatchNorm2d": (lambda: Seq(nn.BatchNorm2d(4), nn.Flatten()), IMAGES),
    "BatchNorm1d": (lambda: Seq(nn.BatchNorm1d(6)), ROWS),
    "LayerNorm": (lambda: Seq(nn.LayerNorm(6, eps=1e-3)), SEQS),
    "GroupNorm": (lambda: Seq(nn.GroupNorm(2, 4), nn.Flatten()), IMAGES),
    "Embedding": (lambda: Seq(nn.Embedding(7, 4, padding_idx=0), nn.Flatten()), IDS),
    "LSTM": (lambda: Recurrent(nn.LSTM(6, 4, batch_first=True)), SEQS),
    "GRU (2 layers, bidirectional)": (lambda: Recurrent(nn.GRU(6, 4, num_layers=2, bidirectional=True)), SEQS),
    "MultiheadAttention": (lambda: Attend(batch_first=True), SEQS),
    "MultiheadAttention (sequence first)": (lambda: Attend(batch_first=False), SEQS),
    "TransformerEncoderLayer": (lambda: Seq(nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=True),
                                            nn.Flatten()), SEQS),
    "TransformerEncoderLayer (norm first, gelu)": (
        lambda: Seq(nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, activation="gelu", batch_first=True,
                                               norm_first=True), nn.Flatten()), SEQS),
    "TransformerDecoderLayer": (lambda: Decode(), SEQS),
    "TransformerDecoderLayer (norm first)": (lambda: Decode(norm_first=True, activation="gelu"), SEQS),
    "ConvTranspose2d": (lambda: Seq(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.Flatten()),
                        IMAGES),
    "Linear tied to Embedding, tensors read": (lambda: TiedLM(), IDS),
    "Dropout": (lambda: Seq(nn.Dropout(0.5), nn.Linear(6, 2)), ROWS),
    "MaxPool2d": (lambda: Seq(nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten()), IMAGES),
    "AvgPool2d": (lambda: Seq(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.Flatten()), IMAGES),
    "AdaptiveAvgPool2d": (lambda: Seq(nn.AdaptiveAvgPool2d((2, 4)), nn.Flatten()), IMAGES),
    "AdaptiveAvgPool2d (1)": (lambda: Seq(nn.AdaptiveAvgPool2d(1), nn.Flatten()), IMAGES),
    "activations": (lambda: Seq(nn.ReLU(), nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6), nn.GELU("tanh"), nn.SiLU(),
                                nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Mish(), nn.ReLU6(),
                                nn.Softplus(beta=2.0, threshold=1.0), nn.Hardtanh(-0.5, 0.5), nn.Identity()), ROWS),
    "Softmax, LogSoftmax": (lambda: Seq(nn.Softmax(dim=1), nn.Linear(6, 6), nn.LogSoftmax(dim=-1)), ROWS),
    "Flatten, Unflatten": (lambda: Seq(nn.Flatten(1, 2), nn.Unflatten(1, (2, 15)), nn.Flatten()), SEQS),
}


def test_every_module_rule_has_a_case():
    covered = {name.split(" ")[0].rstrip(",") for name in MODULE_CASES}
    families = {n for n in modules.RULES if not n.endswith(("1d", "3d")) or n in ("BatchNorm1d", "Conv1d")}
    activations = {"ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Mish", "LeakyReLU", "ELU", "Softplus",
                   "Hardtanh", "Identity", "LogSoftmax", "Unflatten"}
    assert families - activations - covered == set()


@pytest.mark.parametrize("case", MODULE_CASES)
def test_a_module_rule_writes_torchs_formula(case):
    make, x = MODULE_CASES[case]
    ours, theirs, _ = forward_both(make(), x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


class Ops(nn.Module):
    """Each op rule on its own, after a Linear so the tensor is computed."""

    def __init__(self, op):
        super().__init__()
        self.fc, self.op = nn.Linear(6, 24), op

    def forward(self, x):
        return self.op(self.fc(x))


def _attention(h):
    qkv = h.view(h.size(0), 2, 3, 4).transpose(1, 2).chunk(3, dim=1)  # fx indexes a traced tuple, never unpacks it
    return F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True).flatten(1)


OP_CASES = {
    "arithmetic": lambda h: (h + 1.0) * h - h / 2.0 + torch.add(h, h, alpha=0.5) - (-h) ** 2,
    "view, size, permute, reshape": lambda h: h.view(h.size(0), 4, 6).permute(0, 2, 1).reshape(-1, 24),
    "transpose, contiguous, t": lambda h: h.view(-1, 4, 6).transpose(1, 2).contiguous().flatten(1) @ h.t(),
    "cat, chunk": lambda h: torch.cat([h.chunk(2, dim=-1)[1], torch.chunk(h, 2, -1)[0], h], dim=1),
    "reductions": lambda h: h.mean(dim=-1, keepdim=True) + h.sum(1, keepdim=True) + torch.mean(h),
    "unsqueeze, squeeze, getitem": lambda h: h.unsqueeze(1)[:, 0, 2:10].squeeze(1) * h[:, :1],
    "softmax, log_softmax": lambda h: F.softmax(h, dim=-1) + h.log_softmax(-1) + torch.softmax(h, 1),
    "functional activations": lambda h: F.gelu(h) + F.relu(h) + torch.tanh(h) + F.silu(h) + F.leaky_relu(h, 0.1)
    + F.elu(h) + F.softplus(h) + torch.sigmoid(h) + F.mish(h),
    "elementwise functions": lambda h: torch.exp(-h.abs()) + torch.sqrt(h * h + 1) + torch.rsqrt(h * h + 1)
    + torch.log(h * h + 1),
    "scaled_dot_product_attention": _attention,
    "masked_fill, where, comparisons": lambda h: h.masked_fill(h > 0.1, -1.0) + torch.where(h <= 0.0, h, 2 * h)
    + (h == 0.5) + (h != 0.5).float(),
    "matmul": lambda h: torch.matmul(h.view(-1, 4, 6), h.view(-1, 6, 4)).flatten(1),
    "split, expand, stack": lambda h: torch.cat([h.split(10, dim=1)[2], torch.split(h, [4, 20], 1)[0],
                                                 h[:, :1].expand(-1, 4), torch.stack([h, -h], dim=1).flatten(1)], 1),
    "addmm, baddbmm, pow": lambda h: torch.cat([torch.addmm(h[:, :4], h[:, :6], h.view(-1)[:24].view(6, 4)),
                                                torch.baddbmm(h.view(-1, 4, 6)[:, :, :4], h.view(-1, 4, 6),
                                                              h.view(-1, 6, 4), beta=0.5).flatten(1),
                                                torch.pow(h, 2) + h.pow(3)], 1),
    "factories, finfo, max/min": lambda h: torch.max(h, torch.tensor(torch.finfo(h.dtype).min)) * torch.ones(h.size(0), 24)
    + torch.full((h.size(0), 24), 0.5, dtype=h.dtype) + torch.zeros(h.shape) + torch.min(h, h * 2)
    + torch.max(h, dim=1, keepdim=True)[0] + h.max(),
    "triangles, cumsum, index_select": lambda h: torch.cat([
        torch.triu(h.view(-1, 4, 6), 1).flatten(1), h.view(-1, 4, 6).tril(-1).flatten(1), torch.cumsum(h, dim=1),
        h.index_select(1, torch.arange(0, 24, 3))], 1),
    "in place, clone, type, detach": lambda h: _in_place(h),
}


def _in_place(h):
    m = h.clone()
    m[:, :2] = 0.0  # x[index] = value
    m.mul_(2.0)  # an in-place method whose result is not used
    return m + h.detach().type(torch.float32) * (h > 0).long()


@pytest.mark.parametrize("case", OP_CASES)
def test_an_op_rule_writes_torchs_formula(case):
    ours, theirs, _ = forward_both(Ops(OP_CASES[case]), ROWS)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def _logged(forward):
    """A decorator as libraries write them (`*args, **kwargs`): fx sees the wrapper's signature, not forward's."""
    import functools

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        return forward(*args, **kwargs)

    return wrapper


class Block(nn.Module):
    """Library habits inside one block: a decorated forward, flags and None arguments, a branch and len() on
    shapes, a shape unpacked, a buffer, a tuple of tensors as an argument, an in-place write, a module built
    inside forward, a frozen parameter, and named outputs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.register_buffer("offsets", torch.arange(6, dtype=torch.float32) / 10)
        self.scale = nn.Parameter(torch.full((6,), 0.5), requires_grad=False)

    @_logged
    def forward(self, x, pair, mask=None, use_offsets=False, output_extra=False):
        if x.shape[-1] != 6 or len(x.shape) != 2:  # a check on shapes: the example's way
            raise ValueError("wrong shape")
        h = self.fc(x) * self.scale + pair[0] * pair[1]
        if use_offsets:
            h = h + self.offsets
        if mask is not None:
            h = h * mask
        h = h.view(*x.shape[:-1], 2, 3).flatten(1).clone()
        h[:, 0] = 1.0
        return {"hidden": nn.Tanh()(h), "extra": h if output_extra else None}


class Library(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.head = Block(), nn.Linear(6, 2)

    def forward(self, x):
        out = self.block(x, (x.sin(), x.cos()), None, use_offsets=True)
        return self.head(out["hidden"] + self.block.offsets) + (out.get("extra") is None)


def test_library_habits_are_written_as_the_example_ran_them():
    ours, theirs, p = forward_both(Library(), ROWS)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert "self.scale = nnx.Variable(" in p.source  # frozen: the port's optimizer leaves it alone
    assert "def __call__(self, x, pair):" in p.source  # None and flags fixed at the call's values
    jax_batch = np.concatenate([ROWS, ROWS])  # written on 3 rows, runs on 6: no batch size baked in
    flax = p.flax_model()
    flax.eval()
    assert np.asarray(flax(jnp.asarray(jax_batch))).shape == (6, 2)


def test_a_written_port_keeps_torchs_order_before_a_flatten_and_never_imports_torch():
    ours, theirs, p = forward_both(Seq(nn.Conv2d(4, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 2)),
                                   IMAGES)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert p.source.count("jnp.moveaxis") == 2  # once into channels last, once back before the flatten
    imports = [line for line in p.source.splitlines() if line.startswith(("import ", "from "))]
    assert not any("torch" in line.split("#")[0] for line in imports), imports
    script = ("import sys; sys.modules['torch'] = None\n"  # any torch import fails
              f"exec(compile(open({str(p.save(_tmp() / 'port.py'))!r}).read(), 'port.py', 'exec'))\n"
              "from flax import nnx; Seq(rngs=nnx.Rngs(0)); print('ok')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


class Branchy(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return torch.logcumsumexp(self.fc(x), dim=1)


class Noisy(nn.Module):
    """Training-only behaviour written in forward: noise and a functional dropout."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.1, self.training))


@pytest.mark.parametrize("model, what", [(Branchy, "Branchy.forward"), (UnknownOp, "torch.logcumsumexp"),
                                         (Noisy, "Noisy.forward"),
                                         (lambda: TiedLM(head_bias=True), "tied weights embed.weight, head.weight")])
def test_what_cannot_be_written_is_said_and_the_file_still_imports(model, what):
    p = port(model(), IDS if what.startswith("tied") else ROWS)
    assert [u[0] for u in p.untranslated] == [what], p.untranslated
    if what.startswith("tied"):  # the call runs (untied): flax_model() refuses it
        with pytest.raises(PortMappingError, match="jaxtrain.port could not write 1 part"):
            p.flax_model()
        return
    assert "test_port.py:" in p.untranslated[0][1]
    module = p.module()  # imports
    flax = getattr(module, p.class_name)(rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match=what.split(".")[-1]):
        flax(jnp.asarray(ROWS))
    with pytest.raises(PortMappingError, match="jaxtrain.port could not write 1 part"):
        p.flax_model()


def test_op_and_module_rules_are_tables_of_small_functions():
    assert len(modules.RULES) >= 30 and all(callable(r) for r in modules.RULES.values())
    assert len(ops.functions()) >= 40 and len(ops.METHODS) >= 30


def test_a_written_port_trains_like_torchs_model(fashion):
    """The tutorial's BatchNorm + Dropout MLP, written, passes check_port's three parts with no glue."""
    from torchref.models import NeuralNetworkBatchNormDropout

    train, test = fashion
    torch.manual_seed(0)
    p = port(NeuralNetworkBatchNormDropout(), train.images[:4])
    report = p.check(train=(train.images[:256], train.labels[:256]), test=(test.images[:128], test.labels[:128]),
                     optimizer="adam", optimizer_kwargs={"lr": 1e-3}, batch_size=64, steps=4)
    assert report.passed, str(report)


# --------------------------------------------------------------------------- the command


def test_the_port_command_writes_the_file_and_says_what_it_could_not_in_one_line(tmp_path, capsys):
    from jaxtrain import cli

    out = tmp_path / "cnn_port.py"
    assert cli.main(["port", "examples.cnn:TorchCNN", "--input-shape", "8,1,28,28", "--out", str(out)]) == 0
    assert "class TorchCNN(nnx.Module)" in out.read_text() and f"wrote {out}" in capsys.readouterr().out

    branchy = tmp_path / "branchy.py"
    assert cli.main(["port", "parity_tests.test_port:Branchy", "--input-shape", "3,6", "--out", str(branchy)]) == 1
    said = capsys.readouterr()
    assert "untranslated: Branchy.forward at parity_tests/test_port.py:" in said.out and branchy.exists()
    assert said.err.count("\n") == 1 and "could not be written" in said.err

    assert cli.main(["port", "examples.cnn:TorchCNN", "--input-shape", "8,3,28,28", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not run on example inputs of shape [(8, 3, 28, 28)]" in err
    assert cli.main(["port", "examples.cnn:TorchCNN", "--input-shape", "8,1,28,28", "--out", "/nonexistent/p.py"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.corpus  # about 30 s: the command's whole path on the CNN, beside the MLP the suite trains
def test_the_port_command_checks_the_cnn_it_wrote(tmp_path, capsys):
    from jaxtrain import cli

    out = tmp_path / "cnn_port.py"
    code = cli.main(["port", "examples.cnn:TorchCNN", "--input-shape", "8,1,28,28", "--out", str(out), "--check"])
    assert code == 0 and "PARITY PASSED" in capsys.readouterr().out


@pytest.mark.corpus  # writes every candidate (about 10 s): run with the corpus it keeps true
def test_the_corpus_says_which_candidates_the_writer_cannot_write_yet(fashion):
    """corpus/written.py's NOT_WRITTEN is what the writer reports for those models, and the rest are written whole."""
    from jaxtrain.parity.corpus import load_data
    from jaxtrain.parity.corpus.written import CANDIDATES, NOT_WRITTEN, what_is_missing

    data = load_data()
    for name in CANDIDATES:
        missing = what_is_missing(name, data)
        if name in NOT_WRITTEN:
            assert missing and NOT_WRITTEN[name] in missing[0][0] + missing[0][2], (name, missing)
        else:
            assert missing == [], (name, missing)


def test_a_saved_port_builds_from_its_file_in_another_process(tmp_path):
    """What compare_port's workers build: functools.partial(from_file, path, class name), pickled."""
    import functools
    import pickle

    from jaxtrain.bench.models import TorchCNN
    from jaxtrain.convert import torch_to_flax
    from jaxtrain.port import from_file

    torch.manual_seed(0)
    model = TorchCNN()
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    path = port(model, x).save(tmp_path / "cnn_port.py")
    recipe = pickle.loads(pickle.dumps(functools.partial(from_file, str(path), "TorchCNN")))
    flax = torch_to_flax(model, recipe(), x)
    flax.eval()
    with torch.no_grad():
        theirs = copy.deepcopy(model).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(flax(jnp.asarray(x))), theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.corpus  # compare_port's workers, twice: a minute
def test_the_written_cnn_is_timed_against_the_hand_port():
    from jaxtrain.bench.port import written_vs_hand

    result = written_vs_hand(steps=2, repeats=1, rounds=1)
    assert set(result["median"]) == {"hand", "written"} and result["written_over_hand"] > 0
