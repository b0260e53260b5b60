"""The port writer on third-party code: transformers' PyTorch GPT-2, BERT, Llama, ViT and ResNet (tiny configs,
random weights, eager attention), written with no edits. Each written port holds no untranslated part, never
imports torch, and its float64 forward pass equals torch's to rounding with torch's weights loaded through
`convert`. Whether each one also *trains* like torch's (check_port's three parts) is measured by the corpus
(`python -m jaxtrain.parity.corpus.written`, results/port_writer.md)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxtrain.flax_model import pure_model
from jaxtrain.inputs import prediction
from jaxtrain.port import port

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TOKENS = np.random.default_rng(0).integers(1, 64, (3, 10))
MASK = (np.arange(10)[None] < np.array([[10], [7], [4]])).astype(np.int64)  # padded sequences
IMAGES = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)


def _model(config: str, model: str, **settings):
    cfg = getattr(transformers, config)(**settings)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return getattr(transformers, model)(cfg)


FAMILIES = {
    "GPT-2": (lambda: _model("GPT2Config", "GPT2LMHeadModel", vocab_size=64, n_positions=16, n_embd=32, n_layer=2,
                             n_head=4), {"input_ids": TOKENS, "attention_mask": MASK}),
    "BERT": (lambda: _model("BertConfig", "BertForSequenceClassification", vocab_size=64,
                            max_position_embeddings=16, **TINY), {"input_ids": TOKENS, "attention_mask": MASK}),
    "Llama": (lambda: _model("LlamaConfig", "LlamaForCausalLM", vocab_size=64, max_position_embeddings=16,
                             num_key_value_heads=2, **TINY), {"input_ids": TOKENS, "attention_mask": MASK}),
    "ViT": (lambda: _model("ViTConfig", "ViTForImageClassification", image_size=16, patch_size=4, num_labels=5,
                           **TINY), {"pixel_values": IMAGES}),
    "ResNet": (lambda: _model("ResNetConfig", "ResNetForImageClassification", embedding_size=8, hidden_sizes=[8, 16],
                              depths=[1, 1], layer_type="basic", num_labels=5), {"pixel_values": IMAGES}),
}


def _float64(inputs: dict) -> dict:
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in inputs.items()}


# the suite's budget: the vision models among the long checks (make corpus, which also trains all five)
@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.corpus) if f in ("ViT", "ResNet") else f
                                    for f in FAMILIES])
def test_a_transformers_model_is_written_whole_and_computes_torchs_forward(family):
    make, inputs = FAMILIES[family]
    model = make()
    p = port(model, {k: v[:2] for k, v in inputs.items()})  # written on 2 rows, run on 3: no shape is baked in
    assert p.untranslated == []
    imports = [line for line in p.source.splitlines() if line.startswith(("import ", "from "))]
    assert not any("torch" in line for line in imports), imports
    flax = p.flax_model()
    flax.eval()
    jax.config.update("jax_enable_x64", True)
    flax = pure_model(flax).computing_in(np.float64).module
    graphdef, state = nnx.split(flax)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    ours = np.asarray(prediction(nnx.merge(graphdef, state)(**{k: jnp.asarray(v)
                                                                   for k, v in _float64(inputs).items()})))
    with torch.no_grad():
        theirs = copy.deepcopy(model).double().eval()(**{k: torch.from_numpy(v)
                                                         for k, v in _float64(inputs).items()}).logits.numpy()
    # Llama's RMSNorm and rotary embedding, and ViT's softmax, compute in float32 by torch's own code
    # (`.to(torch.float32)`, `softmax(dtype=torch.float32)`) and the port keeps those casts: there float32
    # rounding is the bound, elsewhere float64's
    tolerance = 1e-5 if family in ("Llama", "ViT") else 1e-10
    np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=tolerance)
