"""jaxtrain: PyTorch's 'Optimizing Model Parameters' tutorial, ported to JAX/Flax/Optax, and the tools that move a
user's own torch model and loop to JAX.

Layout, one job a place:
- the top level is the trainer, laid out like its torch twin `torchref/`: `config`, `data`, `models`, `layers`,
  `losses`, `flax_model`, `train` (pure math), `metrics`, `checkpoint`, `distributed`, `console`, `cli`, `launch`;
  `devices` (GPU settings), `inputs` (users' input/output shapes), `convert` (weights both ways), `loading`
  (MODULE:ATTR), `errors`; `gpu_report` (the report a lent GPU machine writes);
- `optim/`: torch.optim and its schedulers as optax chains, `from_torch`;
- `parity/`: the checker (`check_port`); `parity/corpus/` its case data;
- `port/`: the port writer (`jaxtrain port`): a torch model's Flax NNX port as source, proved by check_port;
- `bench/`: the speed comparisons (the tutorial's, `compare_port`, the scaling figures) and the models they time.
"""

__version__ = "0.1.0"
