"""A transformer language model ported by a third party: `transformers`' GPT-2 (PyTorch) against
the same release's own Flax port, tiny config, random weights, nothing downloaded. check_port
trains both on next-token prediction (ids + attention mask + positions as a dict, targets
(B, T)) and judges them. The glue is two lines: take the Flax wrapper's linen module.

    python examples/transformer_lm.py          # needs transformers 4.57.x (the dev extra)

GPT-2's LM head is tied to its token embedding on both sides: one tensor, no weight_map;
its Conv1D layers store (in, out) in torch and (out, in) in Flax: the mapping rule knows both.
"""

import numpy as np
import torch
import transformers

from jaxtrain.parity import check_port

config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
torch.manual_seed(0)
torch_model = transformers.GPT2LMHeadModel(config)
flax_model = transformers.FlaxGPT2LMHeadModel(config, _do_init=False).module   # the glue: its linen module

rng = np.random.default_rng(0)
ids = rng.integers(1, 64, (384, 13))
inputs = {"input_ids": ids[:, :-1], "attention_mask": np.ones((384, 12), np.int64),
          "position_ids": np.broadcast_to(np.arange(12), (384, 12)).copy()}
train = ({k: v[:256] for k, v in inputs.items()}, ids[:256, 1:])
test = ({k: v[256:] for k, v in inputs.items()}, ids[256:, 1:])

report = check_port(torch_model, flax_model, train=train, test=test, optimizer="adamw",
                    optimizer_kwargs={"lr": 1e-3}, batch_size=32, steps=16)
print(report)
raise SystemExit(0 if report.passed else 1)
