"""Third-party ports in the verdict corpus: `transformers`' PyTorch models against the same
release's own Flax ports (4.57.x, the last line that ships Flax), tiny configs, random weights,
nothing downloaded. Nobody here wrote either side; the glue a user writes is counted (`GLUE`).

Each case is `() -> check_port keyword arguments`. Dropout is off in the configs: `transformers`
drops attention probabilities with functional dropout, which no harness can match draw for draw.
"""

from __future__ import annotations

import numpy as np

VOCAB, LENGTH, TRAIN, TEST, LABELS = 64, 12, 256, 128, 3
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0, hidden_dropout=0.0,
                  activation_dropout=0.0, seq_classif_dropout=0.0, qa_dropout=0.0)
TRAINING = dict(optimizer="adamw", optimizer_kwargs={"lr": 1e-3}, batch_size=32, steps=16)


def tokens(seed: int = 0, n: int = TRAIN + TEST, pad_id: int | None = None):
    """Token sequences from a random first-order Markov chain over ids 1.. (so there is something to
    learn; 0 is the padding id), a tail masked out in `attention_mask` (filled with `pad_id` when
    given, as a tokenizer pads), and labels: the chain's start state mod LABELS."""
    rng = np.random.default_rng(seed)
    table = rng.dirichlet(np.full(VOCAB - 1, 0.1), size=VOCAB)
    ids = np.zeros((n, LENGTH + 1), np.int64)
    ids[:, 0] = rng.integers(1, VOCAB, n)
    for t in range(1, LENGTH + 1):
        ids[:, t] = [1 + rng.choice(VOCAB - 1, p=table[i]) for i in ids[:, t - 1]]
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, n)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
    if pad_id is not None:
        ids[:, :-1][mask == 0] = pad_id
    return ids, mask, ids[:, 0] % LABELS


def _splits(inputs: dict, targets: np.ndarray):
    train = ({k: v[:TRAIN] for k, v in inputs.items()}, targets[:TRAIN])
    test = ({k: v[TRAIN:] for k, v in inputs.items()}, targets[TRAIN:])
    return train, test


def _pair(torch_cls: str, flax_cls: str, config_cls: str, flax_config=None, **config):
    """The torch model (seeded random weights) and the linen module of its Flax port; `flax_config`
    changes the port's config only (a planted bug)."""
    import torch
    import transformers

    settings = {**TINY, **{k: v for k, v in NO_DROPOUT.items()}, **config}
    cfg = getattr(transformers, config_cls)(**settings)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    torch_model = getattr(transformers, torch_cls)(cfg)
    port_cfg = getattr(transformers, config_cls)(**{**settings, **(flax_config or {})})
    flax_model = getattr(transformers, flax_cls)(port_cfg, _do_init=False).module  # glue: the linen module
    return torch_model, flax_model


def causal_lm(torch_cls, flax_cls, config_cls, positions=True, flax_config=None, **config):
    """Next-token prediction: inputs ids[:, :-1] (+ mask, positions), targets ids[:, 1:] (B, T)."""
    def case():
        torch_model, flax_model = _pair(torch_cls, flax_cls, config_cls, flax_config, **config)
        ids, mask, _ = tokens()
        inputs = {"input_ids": ids[:, :-1], "attention_mask": np.ones_like(ids[:, :-1])}
        if positions:
            inputs["position_ids"] = np.broadcast_to(np.arange(LENGTH), ids[:, :-1].shape).copy()
        train, test = _splits(inputs, ids[:, 1:])
        return dict(torch_model=torch_model, flax_model=flax_model, train=train, test=test, **TRAINING)

    case.glue = ["the linen module: FlaxModel(config, _do_init=False).module"]
    return case


def classifier(torch_cls, flax_cls, config_cls, token_types=True, positions=True, pad_id=None, first_position=0,
               flax_config=None, mask_dropped=False, **config):
    """Sequence classification of padded sequences: ids + attention mask (+ token types, positions)."""
    def case():
        torch_model, flax_model = _pair(torch_cls, flax_cls, config_cls, flax_config, num_labels=LABELS, **config)
        ids, mask, labels = tokens(1, pad_id=pad_id)
        inputs = {"input_ids": ids[:, :-1], "attention_mask": mask}
        if token_types:
            inputs["token_type_ids"] = np.zeros_like(mask)
        if positions:
            inputs["position_ids"] = np.broadcast_to(first_position + np.arange(LENGTH), mask.shape).copy()
        train, test = _splits(inputs, labels)
        kwargs = {"flax_kwargs": {"head_mask": None}} if token_types else {}  # a required argument of the port
        if mask_dropped:  # a port called without the attention mask (every position attended)
            kwargs["flax_input"] = lambda x: {**x, "attention_mask": np.ones_like(x["attention_mask"])}
        return dict(torch_model=torch_model, flax_model=flax_model, train=train, test=test, **kwargs, **TRAINING)

    case.glue = ["the linen module: FlaxModel(config, _do_init=False).module"] + (
        ["flax_kwargs={'head_mask': None}"] if token_types else [])
    return case


def images(torch_cls, flax_cls, config_cls, **config):
    """Image classification of random (N, C, 16, 16) inputs. The Flax modules take NHWC (the
    library's wrapper transposes first): `flax_input="nhwc"` is that glue."""
    def case():
        torch_model, flax_model = _pair(torch_cls, flax_cls, config_cls, num_labels=LABELS, **config)
        rng = np.random.default_rng(2)
        channels = config.get("num_channels", 3)
        x = rng.normal(size=(TRAIN + TEST, channels, 16, 16)).astype(np.float32)
        y = (x[:, 0, :8].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, -1, 8:].mean(axis=(1, 2)) > 0)
        train, test = _splits({"pixel_values": x}, y)
        return dict(torch_model=torch_model, flax_model=flax_model, train=train, test=test, flax_input="nhwc",
                    **TRAINING)

    case.glue = ["the linen module: FlaxModel(config, _do_init=False).module", "flax_input='nhwc'"]
    return case


CASES = {
    # XGLM fills its causal mask with the min of torch's default dtype, and scales its word embeddings by sqrt(d)
    # inside the embedding module (the port after it) before adding sinusoidal positions
    "hf_xglm_lm_default_dtype_mask": causal_lm("XGLMForCausalLM", "FlaxXGLMForCausalLM", "XGLMConfig",
                                               d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                               max_position_embeddings=32),
    "hf_gpt2_lm_tied": causal_lm("GPT2LMHeadModel", "FlaxGPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2,
                                 n_head=4, n_positions=32),
    "hf_bert_classifier_mask": classifier("BertForSequenceClassification", "FlaxBertForSequenceClassification",
                                          "BertConfig"),
    "hf_llama_lm_rotary": causal_lm("LlamaForCausalLM", "FlaxLlamaForCausalLM", "LlamaConfig",
                                    num_key_value_heads=2),
    "hf_resnet_batchnorm": images("ResNetForImageClassification", "FlaxResNetForImageClassification", "ResNetConfig",
                                  embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    "hf_distilbert_classifier": classifier("DistilBertForSequenceClassification",
                                           "FlaxDistilBertForSequenceClassification", "DistilBertConfig",
                                           token_types=False, positions=False, dim=32, n_layers=2, n_heads=4,
                                           hidden_dim=64),
    # RoBERTa numbers positions from padding_idx + 1, as both of its wrappers compute them
    "hf_roberta_classifier": classifier("RobertaForSequenceClassification", "FlaxRobertaForSequenceClassification",
                                        "RobertaConfig", first_position=1, pad_token_id=0),
    "hf_vit_classifier": images("ViTForImageClassification", "FlaxViTForImageClassification", "ViTConfig",
                                image_size=16, patch_size=4),
    "hf_gpt_neo_lm": causal_lm("GPTNeoForCausalLM", "FlaxGPTNeoForCausalLM", "GPTNeoConfig",
                               attention_types=[[["global", "local"], 1]], num_layers=2, num_heads=4, window_size=4),
    "hf_opt_lm": causal_lm("OPTForCausalLM", "FlaxOPTForCausalLM", "OPTConfig",
                           ffn_dim=64, word_embed_proj_dim=32, pad_token_id=0),
    "hf_electra_classifier": classifier("ElectraForSequenceClassification", "FlaxElectraForSequenceClassification",
                                        "ElectraConfig", embedding_size=16),
    "hf_roformer_classifier_rotary": classifier("RoFormerForSequenceClassification",
                                                "FlaxRoFormerForSequenceClassification", "RoFormerConfig",
                                                positions=False, embedding_size=32),
    "hf_mistral_lm_gqa": causal_lm("MistralForCausalLM", "FlaxMistralForCausalLM", "MistralConfig",
                                   num_key_value_heads=2, sliding_window=32),
    # Mistral without a sliding window (v0.2 onwards) and Llama 3's rope_theta: the Flax ports differ
    "hf_mistral_lm_no_sliding_window": causal_lm("MistralForCausalLM", "FlaxMistralForCausalLM", "MistralConfig",
                                                 num_key_value_heads=2, sliding_window=None),
    "hf_llama3_rope_theta": causal_lm("LlamaForCausalLM", "FlaxLlamaForCausalLM", "LlamaConfig",
                                      num_key_value_heads=2, rope_theta=500000.0),
    "hf_gemma_lm_tied": causal_lm("GemmaForCausalLM", "FlaxGemmaForCausalLM", "GemmaConfig", num_key_value_heads=2,
                                  head_dim=8),
    "hf_gptj_lm_rotary": causal_lm("GPTJForCausalLM", "FlaxGPTJForCausalLM", "GPTJConfig", n_embd=32, n_layer=2,
                                   n_head=4, n_positions=32, rotary_dim=4),
    "hf_bloom_lm_alibi": causal_lm("BloomForCausalLM", "FlaxBloomForCausalLM", "BloomConfig", positions=False,
                                   n_layer=2, n_head=4),
    "hf_regnet_batchnorm": images("RegNetForImageClassification", "FlaxRegNetForImageClassification",
                                  "RegNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8),
}
# The lines a user writes beyond the two models and the data, per case.
GLUE = {name: case.glue for name, case in CASES.items()}

# Where the library's two ports differ (findings, not false alarms): the trap the check must name.
FINDINGS = {
    # FlaxResNet's nn.BatchNorm keeps the biased batch variance in its running statistics; torch the unbiased
    "hf_resnet_batchnorm": "biased vs unbiased running variance",
    # FlaxRegNetXLayer / FlaxRegNetYLayer call `self.layer(hidden_state)` without `deterministic`: their
    # BatchNorms normalise with the running statistics in training too
    "hf_regnet_batchnorm": "BatchNorm running statistics in training",
    # FlaxMistralAttention: jnp.triu(causal_mask, k=-(sliding_window or 0)) keeps the diagonal only when
    # sliding_window is None: each position attends to itself alone
    "hf_mistral_lm_no_sliding_window": "attention computation",
    # FlaxLlama's rotary table is built with base 10000 whatever config.rope_theta says
    "hf_llama3_rope_theta": "RoPE base",
    # FlaxXGLM's nn.Embed trains the padding row torch's nn.Embedding(padding_idx=1) keeps out of training
    "hf_xglm_lm_default_dtype_mask": "Embedding(padding_idx) row trained",
}

# Planted bugs: the same pairs with the port's config changed as a porting mistake changes it.
BUGS = {
    "hf_bert_layernorm_eps_1e-6": classifier("BertForSequenceClassification", "FlaxBertForSequenceClassification",
                                             "BertConfig", flax_config={"layer_norm_eps": 1e-6}),
    "hf_bert_gelu_tanh": classifier("BertForSequenceClassification", "FlaxBertForSequenceClassification",
                                    "BertConfig", flax_config={"hidden_act": "gelu_new"}),
    "hf_llama_rms_eps": causal_lm("LlamaForCausalLM", "FlaxLlamaForCausalLM", "LlamaConfig", num_key_value_heads=2,
                                  flax_config={"rms_norm_eps": 1e-5}),
    # torch's eager attention takes its softmax in float32 inside the float64 run: float64 still decides a bug
    # far beyond float32 rounding, and names it
    "hf_llama_gelu_for_silu": causal_lm("LlamaForCausalLM", "FlaxLlamaForCausalLM", "LlamaConfig",
                                        num_key_value_heads=2, flax_config={"hidden_act": "gelu"}),
    "hf_bert_attention_mask_dropped": classifier("BertForSequenceClassification",
                                                 "FlaxBertForSequenceClassification", "BertConfig", mask_dropped=True),
    "hf_gpt2_untied_head": causal_lm("GPT2LMHeadModel", "FlaxGPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2,
                                     n_head=4, n_positions=32, flax_config={"tie_word_embeddings": False}),
}
