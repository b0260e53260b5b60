"""The verdict corpus: healthy runs (the verdict must pass them) and planted porting bugs (it must
fail them, and say where). It measures the parity checker's false-alarm and miss rates.

    python -m jaxtrain.parity.corpus                      # everything: table on stdout
    python -m jaxtrain.parity.corpus --json results/corpus.json --markdown results/corpus.md

This module lists every case and runs them; the case data lives beside it, one module per kind: `ports`
(hand-written pairs with their own data), `real` (hand-written ports of torch.nn layers), `hf`
(transformers' PyTorch models against that library's own Flax ports), `loops` (training loops: clipping,
param groups, schedules, accumulation), `float32` (ports whose float32 alone goes wrong), `habits` (habits
of torch code that are no porting bug, and the bugs beside them), `written` (those torch models ported by
`jaxtrain.port`, with no edits).

The configuration cases train on the first 640 FashionMNIST training images (10 steps an epoch,
batch 64) and evaluate on the first 2000 test images, on the CPU, in float32 and float64. The
other kinds bring their own models and data, through check_port.

Healthy cases include the runs where float32 rounding is amplified: large learning rates,
Adagrad from a zero accumulator, RMSprop with momentum, AdamW/AMSGrad at lr >= 2e-3,
BatchNorm+Dropout with Adam over 200 shuffled steps, MSE(sum) with large losses.

Each planted bug is a mistake people make when porting torch training code to JAX, planted
on the JAX side only (another Flax module, a (torch, optax) optimizer pair or a loss pair, as a
user passes them to `check_port`), with where the
checker must localise it: the verdict part, the step, the stage and the tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxtrain import data as data_lib
from jaxtrain import optim
from jaxtrain.config import Config, make_config
from flax import nnx

from jaxtrain.layers import TorchBatchNorm
from jaxtrain.losses import cross_entropy, mse
from jaxtrain.parity import check_parity, check_port
from jaxtrain.parity.corpus import float32 as corpus_float32
from jaxtrain.parity.corpus import habits as corpus_habits
from jaxtrain.parity.corpus import written as corpus_written
from jaxtrain.parity.corpus import hf as corpus_hf
from jaxtrain.parity.corpus import loops as corpus_loops
from jaxtrain.parity.corpus import ports
from jaxtrain.parity.corpus import real as corpus_real

TRAIN_SAMPLES, TEST_SAMPLES = 640, 2000


def config_for(**kw) -> Config:
    """A case's config: 20 epochs of 10 steps at most (the case's `steps` cut it), torch's defaults."""
    return make_config(**{"epochs": 20, "train_limit": TRAIN_SAMPLES, "test_limit": TEST_SAMPLES, **kw})


# --------------------------------------------------------------------------- healthy cases

BN = dict(model="mlp_bn_dropout")
HEALTHY: dict[str, dict] = {
    "tutorial_sgd": dict(optimizer="sgd", lr=1e-3),
    "sgd_large_lr": dict(optimizer="sgd", lr=0.5),
    "sgd_momentum_steplr": dict(optimizer="sgd", lr=0.05, momentum=0.9, scheduler="step", step_size=2, gamma=0.5),
    "sgd_nesterov_cosine": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, scheduler="cosine", t_max=3),
    "sgd_dampening_wd": dict(optimizer="sgd", lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    "sgd_momentum_shuffle_200": dict(optimizer="sgd", lr=0.1, momentum=0.9, shuffle=True, seed=3, steps=200),
    "sgd_repeated_milestone": dict(optimizer="sgd", lr=0.1, momentum=0.5, scheduler="multistep",
                                   milestones=(1, 1, 3), gamma=0.5),
    "adam": dict(optimizer="adam", lr=1e-3),
    "adam_large_lr": dict(optimizer="adam", lr=1e-2),
    "adam_exponential_wd": dict(optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="exponential", gamma=0.8),
    "adam_amsgrad": dict(optimizer="adam", lr=1e-3, amsgrad=True),
    "adamw_multistep": dict(optimizer="adamw", lr=1e-3, scheduler="multistep", milestones=(1, 3)),
    "adamw_amsgrad_lr2e-3": dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, amsgrad=True),
    "adamw_lr5e-3_200": dict(optimizer="adamw", lr=5e-3, steps=200),
    "rmsprop": dict(optimizer="rmsprop", lr=1e-4),
    "rmsprop_momentum_lr1e-3": dict(optimizer="rmsprop", lr=1e-3, momentum=0.9),
    "rmsprop_centered_momentum_steplr": dict(optimizer="rmsprop", lr=1e-4, momentum=0.5, centered=True,
                                             weight_decay=1e-4, scheduler="step", step_size=1, gamma=0.7),
    "rmsprop_large_lr": dict(optimizer="rmsprop", lr=1e-2),
    "adagrad": dict(optimizer="adagrad", lr=1e-3),
    "adagrad_zero_acc_lr1e-2": dict(optimizer="adagrad", lr=1e-2),
    "adagrad_lr5e-2_200": dict(optimizer="adagrad", lr=5e-2, steps=200),
    "adagrad_decay": dict(optimizer="adagrad", lr=1e-3, lr_decay=1e-2, initial_accumulator_value=0.1,
                          weight_decay=1e-4),
    "nll_adam": dict(loss="nll", optimizer="adam", lr=1e-3),
    "mse_mean": dict(loss="mse", optimizer="sgd", lr=0.5),
    "mse_sum_sgd": dict(loss="mse", mse_reduction="sum", optimizer="sgd", lr=1e-3),
    "mse_sum_adam": dict(loss="mse", mse_reduction="sum", optimizer="adam", lr=1e-3),
    "flax_init_rmsprop": dict(init="flax", optimizer="rmsprop", lr=1e-5, momentum=0.5),
    "bn_dropout_sgd": dict(**BN, optimizer="sgd", lr=0.05, momentum=0.9),
    "bn_dropout_adam_shuffle_200": dict(**BN, optimizer="adam", lr=1e-3, shuffle=True, seed=1, steps=200),
    "bn_dropout_adamw_shuffle_200": dict(**BN, optimizer="adamw", lr=2e-3, shuffle=True, seed=2, steps=200),
    "bn_no_dropout_rmsprop": dict(**BN, dropout=0.0, optimizer="rmsprop", lr=1e-3),
    "batch_48_partial_last": dict(optimizer="adam", lr=1e-3, batch_size=48),
    # a bias feeding a BatchNorm: its gradient is rounding noise, which these optimizers scale up
    "bn_bias_adagrad_lr1e-2": dict(**BN, dropout=0.0, optimizer="adagrad", lr=1e-2),
    "bn_bias_rmsprop_lr1e-2": dict(**BN, dropout=0.0, optimizer="rmsprop", lr=1e-2),
    "bn_large_lr_sgd": dict(**BN, dropout=0.0, optimizer="sgd", lr=0.5, momentum=0.9),
    "bn_large_lr_adam": dict(**BN, optimizer="adam", lr=1e-2, shuffle=True, seed=4),
    # cases with their own models and data (jaxtrain/parity/corpus/ports.py), through check_port
    "conv_bias_bn_adam": ports.conv_bn("adam", lr=1e-3),
    "conv_bias_bn_adamw": ports.conv_bn("adamw", lr=1e-3),
    "conv_bias_bn_rmsprop": ports.conv_bn("rmsprop", lr=1e-3),
    "conv_bias_bn_adagrad": ports.conv_bn("adagrad", lr=1e-2),
    "accumulation_mean": ports.accumulation(use_grad_mean=True),
    "embedding_padding_row_10k": ports.bag(),
    # real ports: hand-written ports of torch.nn layers (corpus_real), and transformers' PyTorch models
    # against that library's own Flax ports (corpus_hf; glue: the linen module, flax_input/kwargs)
    **corpus_real.HEALTHY,
    **{name: case for name, (case, _) in corpus_real.FINDINGS.items()},
    **{name: (lambda data, case=case: case()) for name, case in corpus_hf.CASES.items()},
    # training loops as users write them: clipping, param groups, per-batch schedules, accumulation
    **corpus_loops.HEALTHY,
    # float32 on uncentred inputs and logits in the hundreds (corpus_float32)
    **corpus_float32.HEALTHY,
    # habits of torch code that are no porting bug: in-place inputs, a moved boundary, buffers (corpus_habits)
    **corpus_habits.HEALTHY,
    # torch models of the cases above and the tutorial's, ported by jaxtrain.port with no edits (corpus_written)
    **corpus_written.HEALTHY,
}
# The lines of glue a user writes for the real ports (none listed: none)
GLUE = {**{name: [] for name in corpus_real.HEALTHY}, **corpus_real.GLUE, **corpus_hf.GLUE,
        **{name: [] for name in corpus_written.HEALTHY}}
# Healthy user code whose library port differs from torch: the check must fail and name the difference.
LIBRARY_FINDINGS = {**corpus_hf.FINDINGS, **{name: trap for name, (_, trap) in corpus_real.FINDINGS.items()}}


# Healthy math whose float32 run JAX computes measurably less accurately than torch here (MSE(sum) with
# Adam: at step 2 JAX's float32 gradient of linear_relu_stack.0.bias[190] is 1.5e-4 off float64, torch's
# 1.3e-5, a batch sum under cancellation; Adam carries it until a ReLU flips at step 27). Float64 and
# step-1 float32 must hold; the float32 results may fail, and then only as "float32 arithmetic".
FLOAT32_FINDINGS = {"mse_sum_adam"}


# --------------------------------------------------------------------------- planted bugs: ports with a mistake


def bf16_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """A float32 matmul computed from bfloat16 inputs (what TF32/bf16 'fast' matmuls do); float64 untouched."""
    if lhs.dtype != jnp.float32:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision)
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                               preferred_element_type=jnp.float32)


class PortMLP(nnx.Module):
    """A user's Flax NNX port of the tutorial's models, with switches for the mistakes below.
    With the defaults it computes what jaxtrain's own models do."""

    def __init__(self, batchnorm=False, rate=0.0, bn_momentum=0.1, bn_unbiased=True, bn_eps=1e-5,
                 dropout_in_eval=False, dot_general=jax.lax.dot_general):
        rngs = nnx.Rngs(0)
        layers, fan_in = [], 784
        for width in (512, 512):
            layers.append(nnx.Linear(fan_in, width, dot_general=dot_general, rngs=rngs))
            if batchnorm:
                layers.append(TorchBatchNorm(width, bn_momentum, bn_eps, bn_unbiased))
            layers.append(nnx.relu)
            if rate > 0:
                layers.append(nnx.Dropout(rate, rngs=rngs))
            fan_in = width
        self.linear_relu_stack = nnx.Sequential(*layers, nnx.Linear(fan_in, 10, dot_general=dot_general, rngs=rngs))
        self.dropout_in_eval = dropout_in_eval

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.linear_relu_stack.layers:
            if isinstance(layer, nnx.Dropout) and self.dropout_in_eval:
                x = layer(x, deterministic=False)  # nn.Dropout(deterministic=False) hard-coded: random in eval too
            else:
                x = layer(x)
        return x


def bn_port(rate=0.2, **kw) -> PortMLP:
    return PortMLP(batchnorm=True, rate=rate, **kw)


def with_tx(make_tx: Callable) -> Callable:
    """A port whose optax transformation is `make_tx(config, steps_per_epoch)`, against torch.optim's
    optimizer for the same config: the user's own (torch, optax) pair."""
    def port(config):
        from torchref.optim import make_optimizer

        steps_per_epoch = data_lib.batches_per_epoch(TRAIN_SAMPLES, config.batch_size)
        return {"optimizer": (lambda params: make_optimizer(config, params), make_tx(config, steps_per_epoch))}

    return port


def with_model(make: Callable) -> Callable:
    return lambda config: {"flax_model": make()}


def with_loss(jax_loss: Callable) -> Callable:
    def port(config):
        from torchref.losses import make_loss

        return {"loss": (make_loss(config), jax_loss)}

    return port


def scheduler_per_batch(c, spe):
    """StepLR stepped after every batch instead of every epoch."""
    return optim.make_optimizer(c, 1)


def accumulate_gradients(c, spe):
    """zero_grad forgotten: every step applies the sum of all gradients so far."""
    return optax.chain(optax.trace(decay=1.0), optim.make_optimizer(c, spe))


@dataclasses.dataclass(frozen=True)
class Bug:
    settings: dict | Callable  # a config's settings, or data -> check_port arguments (corpus_ports)
    port: Callable | None  # config -> check_port arguments replacing the healthy port's (config cases)
    part: str  # the verdict part that must fail: same_math (float64) or same_precision (float32)
    stage: str
    step: int | None  # None for stage eval
    tensor: str | None  # the tensor named (prefix), None when the stage has one
    why: str
    trap: str | None = None  # the diagnosis it must get, where one is named for it


W0 = "linear_relu_stack.0.weight"


def _hf(name: str) -> Callable:
    return lambda data: corpus_hf.BUGS[name]()
BUGS: dict[str, Bug] = {
    "bn_momentum_flax_default": Bug(
        dict(**BN, optimizer="sgd", lr=0.05), with_model(lambda: bn_port(bn_momentum=0.01)), "same_math", "buffers",
        1, "linear_relu_stack.1.running_mean", "nn.BatchNorm(momentum=0.99) kept: torch's momentum 0.1 is Flax's 0.9"),
    "bn_biased_running_var": Bug(
        dict(**BN, optimizer="sgd", lr=0.05), with_model(lambda: bn_port(bn_unbiased=False)), "same_math", "buffers",
        1, "linear_relu_stack.1.running_var", "Flax keeps the biased running variance, torch the unbiased"),
    "bn_eps_1e-3": Bug(
        dict(**BN, optimizer="sgd", lr=0.05), with_model(lambda: bn_port(bn_eps=1e-3)), "same_math", "forward", 1,
        "linear_relu_stack.1 (output)", "BatchNorm eps 1e-3 (Keras' default) instead of torch's 1e-5"),
    "dropout_on_in_eval": Bug(
        dict(**BN, optimizer="sgd", lr=0.05), with_model(lambda: bn_port(dropout_in_eval=True)), "same_math", "eval",
        None, "linear_relu_stack.4 (output)", "dropout left on in evaluation (deterministic=False hard-coded)"),
    "dropout_keep_prob_as_rate": Bug(
        dict(**BN, optimizer="sgd", lr=0.05), with_model(lambda: bn_port(rate=0.8)), "same_math",
        "forward", 1, "linear_relu_stack.4 (output)", "nnx.Dropout(0.8): the keep probability passed as the drop rate"),
    "adam_eps_inside_sqrt": Bug(
        dict(optimizer="adam", lr=1e-3), with_tx(lambda c, spe: optax.adam(c.lr, eps=0.0, eps_root=c.eps)),
        "same_math", "updates", 1, W0, "optax.adam(eps=0, eps_root=eps): eps inside the sqrt"),
    "optax_adamw_default_wd": Bug(
        dict(optimizer="adamw", lr=1e-3), with_tx(lambda c, spe: optax.adamw(c.lr)), "same_math",
        "updates", 1, W0, "optax.adamw's default weight_decay 1e-4; torch's AdamW uses 1e-2"),
    "adamw_as_l2": Bug(
        dict(optimizer="adamw", lr=1e-3),
        with_tx(lambda c, spe: optim.adam(optim.lr_schedule(c, spe), c.betas, c.eps, c.weight_decay)),
        "same_math", "updates", 1, W0, "AdamW ported as Adam with L2 (weight decay added to the gradient)"),
    "optax_rmsprop_defaults": Bug(
        dict(optimizer="rmsprop", lr=1e-4), with_tx(lambda c, spe: optax.rmsprop(c.lr)), "same_math",
        "updates", 1, W0, "optax.rmsprop defaults: decay 0.9 (torch alpha 0.99), eps inside the sqrt"),
    "nesterov_forgotten": Bug(
        dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True),
        with_tx(lambda c, spe: optax.sgd(c.lr, momentum=c.momentum)), "same_math", "updates", 1, W0,
        "optax.sgd(momentum=0.9) without nesterov=True"),
    "scheduler_per_batch": Bug(
        dict(optimizer="sgd", lr=0.05, momentum=0.9, scheduler="step", step_size=1, gamma=0.5),
        with_tx(scheduler_per_batch), "same_math", "updates", 2, W0,
        "StepLR's schedule counted in optimizer steps instead of epochs"),
    "zero_grad_forgotten": Bug(
        dict(optimizer="sgd", lr=0.01), with_tx(accumulate_gradients), "same_math", "updates", 2, W0,
        "gradients accumulated across steps (zero_grad forgotten)"),
    "cross_entropy_on_softmax": Bug(
        dict(optimizer="sgd", lr=0.05),
        with_loss(lambda out, y: cross_entropy(jax.nn.softmax(out), y)), "same_math", "loss", 1, None,
        "CrossEntropyLoss applied to softmax outputs (torch's takes logits)"),
    "mse_sum_as_mean": Bug(
        dict(loss="mse", mse_reduction="sum", optimizer="sgd", lr=1e-3),
        with_loss(lambda out, y: mse(out, y, "mean")), "same_math", "loss", 1, None,
        "MSELoss(reduction='sum') ported as a mean"),
    "matmul_below_float32": Bug(
        dict(optimizer="sgd", lr=0.05), with_model(lambda: PortMLP(dot_general=bf16_dot)), "same_precision",
        "forward", 1, None, "float32 matmuls run on bfloat16 inputs (as TF32/bf16 defaults do on GPUs)"),
    "accumulation_sum": Bug(
        ports.accumulation(use_grad_mean=False), None, "same_math", "updates", 2, W0,
        "gradient accumulation over 2 batches applies their sum, not their mean (MultiSteps use_grad_mean=False)"),
    "embedding_padding_row_trained": Bug(
        ports.bag(train_padding_row=True), None, "same_math", "grads", 1, "embed.weight",
        "nn.Embedding(padding_idx=0) ported as nnx.Embed: the padding row (1 of 10,000) is trained",
        "Embedding(padding_idx) row trained"),
    "lstm_on_flax_lstmcell": Bug(
        corpus_real._lstm_flax_cell, None, "same_math", "forward", 2, "lstm (output)",
        "nn.LSTM ported onto Flax's LSTMCell: one bias per gate where torch trains two (their sum moves twice as fast)",
        "layer parametrisation"),
    "gru_on_flax_grucell": Bug(
        corpus_real._gru_flax_cell, None, "same_math", "forward", 2, "gru (output)",
        "nn.GRU ported onto Flax's GRUCell: torch's b_hn (inside r * (W_hn h + b_hn)) has no place, the input biases "
        "train as one", "layer parametrisation"),
    "lstm_gate_order_tensorflow": Bug(
        corpus_real._lstm_gate_order, None, "same_math", "forward", 1, "lstm (output)",
        "torch's fused LSTM rows split in TensorFlow's gate order (i, g, f, o) instead of torch's (i, f, g, o)",
        "recurrent cell"),
    "attention_unscaled": Bug(
        corpus_real._attention_unscaled, None, "same_precision", "forward", 1, "attn (output)",
        "nn.MultiheadAttention ported with an attention_fn that drops the 1/sqrt(head_dim) scale (float64 cannot "
        "decide: nnx attention's softmax is float32)",
        "attention computation"),
    "avgpool_padding_not_counted": Bug(
        corpus_real._depthwise_pad_excluded, None, "same_math", "forward", 1, "head (output)",
        "AvgPool2d(padding=1) ported as avg_pool(count_include_pad=False): torch counts the padding",
        "AvgPool count_include_pad"),
    "conv_transpose_kernel_unflipped": Bug(
        corpus_real._upsample_unflipped, None, "same_math", "forward", 1, "up (output)",
        "a weight_map laying ConvTranspose2d's kernel out as a plain conv's: not flipped in space",
        "weights in the wrong layout"),
    "batchnorm_running_stats_in_training": Bug(
        corpus_real._conv_bn_running_in_training, None, "same_math", "forward", 1, "bn (output)",
        "the port's BatchNorm called with train=False always: running statistics in training",
        "BatchNorm running statistics in training"),
    "spectral_norm_not_iterated": Bug(
        corpus_real._normed("spectral", iterate=False), None, "same_math", "forward", 1, "conv (output)",
        "torch's spectral_norm ported by hand with the power iteration never run (train not passed on)",
        "spectral_norm power iteration"),
    "rope_interleaved_layout": Bug(
        corpus_real._rotary(layout="interleaved"), None, "same_math", "forward", 1, "o_proj (output)",
        "rotary embeddings ported with interleaved pairs (2i, 2i + 1) where torch rotates (i, i + D/2)",
        "RoPE layout"),
    "rotary_attention_causal_mask_dropped": Bug(
        corpus_real._rotary(causal=False), None, "same_math", "forward", 1, "o_proj (output)",
        "a causal self-attention ported without its causal mask (every position attends to the future)",
        "attention mask"),
    "rotary_attention_scale_dropped": Bug(
        corpus_real._rotary(scaled=False), None, "same_math", "forward", 1, "o_proj (output)",
        "a hand-written attention that forgets the 1/sqrt(head_dim) scale", "attention scaling"),
    "rope_base_default": Bug(
        corpus_real._rotary(500000.0), None, "same_math", "forward", 1, "o_proj (output)",
        "a rope_theta=500000 model ported with the usual base 10000", "RoPE base"),
    "lm_head_untied": Bug(
        corpus_real._untied_lm, None, "same_math", "grads", 1, "embed.weight",
        "an LM head tied to its embedding in torch (lm_head.weight = embed.weight) ported as a Linear of its own",
        "untied head"),
    # transformers' own pairs, the port's config changed as a porting mistake changes it (corpus_hf.BUGS)
    "hf_bert_layernorm_eps_1e-6": Bug(
        _hf("hf_bert_layernorm_eps_1e-6"), None, "same_math", "forward", 1, "bert.embeddings.LayerNorm (output)",
        "BERT's LayerNorm ported with Flax's default eps 1e-6 (the config says 1e-12)", "LayerNorm eps"),
    "hf_bert_gelu_tanh": Bug(
        _hf("hf_bert_gelu_tanh"), None, "same_math", "forward", 1, "bert.encoder.layer.0.output.dense (output)",
        "BERT's exact GELU ported as the tanh approximation (jax.nn.gelu's default)", "activation function"),
    "hf_bert_attention_mask_dropped": Bug(
        _hf("hf_bert_attention_mask_dropped"), None, "same_math", "forward", 1,
        "bert.encoder.layer.0.attention.output.dense (output)",
        "the port called without the attention mask: padded positions attended", "attention computation"),
    "hf_llama_rms_eps": Bug(
        _hf("hf_llama_rms_eps"), None, "same_math", "forward", 1, "model.layers.0.input_layernorm (output)",
        "Llama's RMSNorm eps 1e-6 ported as 1e-5 (both ports normalise in float32 inside the float64 run; the eps "
        "moves the output far beyond float32 rounding)", "RMSNorm eps"),
    "hf_llama_gelu_for_silu": Bug(
        _hf("hf_llama_gelu_for_silu"), None, "same_math", "forward", 1, "model.layers.0.mlp.down_proj (output)",
        "Llama's SiLU-gated MLP ported with GELU, beside torch's float32 softmax and the port's float32 RMSNorm "
        "inside the float64 run", "activation function"),
    "hf_gpt2_untied_head": Bug(
        _hf("hf_gpt2_untied_head"), None, "same_math", "grads", 1, "transformer.wte.weight",
        "GPT-2's LM head, tied to the token embedding in torch, ported as a Dense of its own", "untied head"),
    "position_table_off_by_one": Bug(
        ports.bag(clamp_positions=True), None, "same_math", "forward", 1, "pos (output)",
        "positions clamped to max_len - 2: the last position (1 of 16 rows) reads the wrong row"),
    # training loops ported wrong (corpus_loops.BUGS)
    **{name: Bug(case, None, "same_math", stage, step, tensor, why, trap)
       for name, (case, stage, step, tensor, why, trap) in corpus_loops.BUGS.items()},
    # bugs beside those habits (corpus_habits.BUGS)
    **{name: Bug(case, None, "same_math", stage, step, tensor, why, trap)
       for name, (case, stage, step, tensor, why, trap) in corpus_habits.BUGS.items()},
    # ports whose float32 alone goes wrong, float64 holding (corpus_float32.BUGS)
    **{name: Bug(case, None, "same_precision", stage, step, tensor, why, trap)
       for name, (case, stage, step, tensor, why, trap) in corpus_float32.BUGS.items()},
}
# Healthy ports whose float32 differs from torch's by the library's arithmetic alone: the check must pass and
# say so in a finding (criteria.library_float32). optax.adam computes 1 - 0.999**t in float32 (1.3e-5 relative).
FLOAT32_LIBRARY = {"optax_adam_float32": (dict(optimizer="adam", lr=1e-3),
                                          with_tx(lambda c, spe: optax.adam(c.lr, eps=c.eps)))}
HEALTHY.update({name: settings for name, (settings, _) in FLOAT32_LIBRARY.items()})

# Bugs float32 must catch too, with the part that must fail there.
FLOAT32_TOO = {"accumulation_sum": "same_results", "embedding_padding_row_trained": "same_precision",
               "position_table_off_by_one": "same_precision"}


# The short subset the default test suite and the GPU report run: the most rounding-sensitive
# healthy runs, and bugs of every stage.
QUICK_HEALTHY = ["bn_dropout_sgd"]  # the suite's budget: the rest run in `make corpus`
QUICK_BUGS = ["batchnorm_running_stats_in_training", "log_of_softmax"]


# --------------------------------------------------------------------------- running a case


def _split_steps(settings: dict) -> tuple[dict, int]:
    settings = dict(settings)
    return settings, settings.pop("steps", 50)


def _check(name: str, data):
    """(report, steps) of one case: a config through check_parity, or a port case through check_port."""
    bug = BUGS.get(name)
    spec = bug.settings if bug else HEALTHY[name]
    port = bug.port if bug else FLOAT32_LIBRARY.get(name, (None, None))[1]
    if callable(spec):
        kwargs = spec(data)
        return check_port(**kwargs), kwargs["steps"]
    settings, steps = _split_steps(spec)
    config = config_for(**settings)
    return check_parity(config, ("float32", "float64"), *data, max_steps=steps,
                        **(port(config) if port else {})), steps


def run_case(name: str, data) -> dict[str, Any]:
    """One corpus case: its verdict, where it was localised, and whether that is right."""
    bug = BUGS.get(name)
    start = time.perf_counter()
    report, steps = _check(name, data)
    v = {part: result or {"passed": None} for part, result in report.verdict.items()}  # a dtype not run: n/a
    row: dict[str, Any] = {
        "case": name, "kind": "bug" if bug else "healthy", "steps": steps, "passed": report.passed,
        "parts": {p: v[p].get("passed") for p in ("same_math", "same_precision", "same_results")},
        "seconds": round(time.perf_counter() - start, 1),
        "stats": {
            "max_rel_step_loss_diff_64": v["same_math"].get("max_rel_step_loss_diff"),
            "max_rel_buffer_diff_64": v["same_math"].get("max_rel_buffer_diff"),
            "step1_worst": v["same_precision"].get("step1_worst"),
            "rms_jax": v["same_precision"].get("rms_rel_loss_error_jax"),
            "rms_torch": v["same_precision"].get("rms_rel_loss_error_torch"),
            "drift_onset_step": v["same_precision"].get("drift_onset_step"),
            "math_localised": v["same_math"].get("localised"),
            "results_loss_diff": v["same_results"].get("max_test_loss_diff"),
            "results_acc_diff": v["same_results"].get("max_accuracy_diff"),
            "results_needed_factor_loss": v["same_results"].get("needed_factor_loss"),
            "results_needed_factor_accuracy": v["same_results"].get("needed_factor_accuracy"),
            # how much of each allowance the case used (1 = at the limit): the margins, on this machine
            "math_steps_beyond_rounding": v["same_math"].get("max_step_beyond_rounding"),
            "math_buffers_beyond_rounding": v["same_math"].get("max_buffer_beyond_rounding"),
            "step1_pattern_excess": v["same_precision"].get("max_pattern_excess"),
            "step1_element_excess": v["same_precision"].get("max_element_excess"),
        },
    }
    found = None
    if bug:
        found = v[bug.part].get("localised")
        row["expected"] = {"part": bug.part, "stage": bug.stage, "step": bug.step, "tensor": bug.tensor}
        row["why"] = bug.why
        row["localised"] = found
        row["caught"] = not report.passed and not v[bug.part]["passed"] and (
            name not in FLOAT32_TOO or not v[FLOAT32_TOO[name]]["passed"])
        row["localised_right"] = bool(
            found and found.get("stage") == bug.stage and found.get("step") == bug.step
            and (bug.tensor is None or (found.get("tensor") or "").startswith(bug.tensor)))
        row["diagnosis"] = (report.diagnosis or {}).get("trap")
        row["ok"] = row["caught"] and row["localised_right"] and (bug.trap is None or row["diagnosis"] == bug.trap)
    else:
        failed = [p for p in ("same_math", "same_precision", "same_results") if v[p]["passed"] is False]
        row["localised"] = found = next((v[p].get("localised") for p in failed), None)
        row["ok"] = report.passed
        if name in GLUE:
            row["glue"] = GLUE[name]
        if name in LIBRARY_FINDINGS:
            row["finding"] = (report.diagnosis or {}).get("sentence")
            row["library_finding"] = True
            row["ok"] = not report.passed and (report.diagnosis or {}).get("trap") == LIBRARY_FINDINGS[name]
        if name in FLOAT32_LIBRARY:
            row["finding"] = " / ".join(report.findings)
            row["ok"] = report.passed and any("not the port" in f for f in report.findings)
        if name in FLOAT32_FINDINGS and failed == ["same_results"]:
            row["finding"] = (report.diagnosis or {}).get("sentence")
            row["ok"] = (report.diagnosis or {}).get("trap") == "float32 arithmetic"
    row["where"] = describe(found)
    _release()
    return row


def _release() -> None:
    """Drop the compiled programs of a finished case: a long corpus run in one process otherwise
    runs out of memory maps for new ones (vm.max_map_count, 65530 here, reached after ~90 cases)."""
    import gc

    jax.clear_caches()
    gc.collect()


def describe(found: dict | None) -> str:
    if not found:
        return ""
    if found.get("stage") == "eval":
        return f"eval, epoch {found.get('epoch')}"
    if found.get("stage") == "drift":
        return f"drift (step {found.get('step')})" + (", float32 results" if "results" in found else "")
    return f"step {found.get('step')}, {found.get('stage')}" + (f", {found['tensor']}" if found.get("tensor") else "")


def load_data():
    train, test = data_lib.load_fashion_mnist()
    return train.take(TRAIN_SAMPLES), test.take(TEST_SAMPLES)


def markdown(rows: list[dict], machine: str) -> str:
    healthy = [r for r in rows if r["kind"] == "healthy"]
    bugs = [r for r in rows if r["kind"] == "bug"]
    false_alarms = sum(not r["ok"] for r in healthy)
    findings = sum(bool(r.get("finding")) and r["ok"] and not r.get("library_finding") for r in healthy)
    library = sum(bool(r.get("library_finding")) and r["ok"] for r in healthy)
    missed = sum(not r.get("caught") for r in bugs)
    misplaced = sum(r.get("caught") and not r.get("localised_right") for r in bugs)
    lines = [f"Machine: {machine}. Healthy: {len(healthy)}, false alarms: {false_alarms}, float32 findings "
             f"(float64 agrees, JAX's float32 less accurate than torch's; reported as such): {findings}, "
             f"library findings (a third-party port that differs from its torch model, named): {library}. "
             f"Planted bugs: {len(bugs)}, missed: {missed}, caught but localised wrongly: {misplaced}.", "",
             margins(healthy), "",
             "| case | kind | steps | math | precision | results | localised | right? | glue lines |",
             "| --- | --- | ---: | --- | --- | --- | --- | --- | ---: |"]
    mark = {True: "pass", False: "FAIL", None: "n/a"}
    for r in rows:
        p = r["parts"]
        right = ("yes" if r["ok"] else "NO") if r["kind"] == "bug" else (
            ("finding" if r.get("finding") else "yes") if r["ok"] else "FALSE ALARM")
        if r["kind"] == "bug" and r.get("diagnosis"):
            right += f" ({r['diagnosis']})"
        glue = len(r["glue"]) if "glue" in r else "-"
        lines.append(f"| {r['case']} | {r['kind']} | {r['steps']} | {mark[p['same_math']]} | "
                     f"{mark[p['same_precision']]} | {mark[p['same_results']]} | {r['where'] or '-'} | {right} | {glue} |")
    return "\n".join(lines)


def margins(healthy: list[dict]) -> str:
    """The largest share of each allowance the healthy cases used (1 = at the limit; findings, which fail
    on purpose, left out; float64's from the runs it decided)."""
    def most(key):  # float64 margins from the runs where float64 decided (not "n/a": float32 inside)
        values = [r["stats"][key] for r in healthy if r["stats"].get(key) is not None and not r.get("finding")
                  and not (key.startswith("math_") and r["parts"]["same_math"] is None)]
        return max(values, default=0.0)

    return ("Largest share of an allowance used by a healthy case (1 = at the limit): float64 step losses "
            f"{most('math_steps_beyond_rounding'):.2g}, buffers {most('math_buffers_beyond_rounding'):.2g} "
            "(of 100x torch's own rounding spread + 1e-10); float32 step 1 typical element "
            f"{most('step1_pattern_excess'):.2g} (of 4x torch's + 8 ulps), worst element "
            f"{most('step1_element_excess'):.2g} (of 1000x torch's error of it); float32 test results "
            f"{most('results_needed_factor_loss') / 10:.2g} (loss) and {most('results_needed_factor_accuracy') / 10:.2g} "
            "(accuracy) of 10x the rounding spread.")


def machine_name() -> str:
    from jaxtrain.bench import cpu_name

    return f"{cpu_name()}, jax {jax.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxtrain.parity.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("healthy", "bugs"), default=None)
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--markdown", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    names = [n for n in HEALTHY if args.only != "bugs"] + [n for n in BUGS if args.only != "healthy"]
    if args.cases:
        names = [n for n in args.cases.split(",") if n]
    data = load_data()
    print(f"machine: {machine_name()}", file=sys.stderr, flush=True)
    rows = []
    for name in names:
        row = run_case(name, data)
        rows.append(row)
        print(f"{name:36s} {'ok ' if row['ok'] else 'BAD'} {row['seconds']:6.1f}s  {row['where']}", file=sys.stderr,
              flush=True)
        if args.json:  # after every case: a run that stops early keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"machine": machine_name(), "rows": rows, "complete": len(rows) == len(names)}, f,
                          indent=1, default=float)
    table = markdown(rows, machine_name())
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0 if all(r["ok"] for r in rows) else 1

