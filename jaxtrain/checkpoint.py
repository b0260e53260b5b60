"""Checkpoints at epoch boundaries: the full train state plus the metrics so far.

JAX: orbax-checkpoint's CheckpointManager (it writes into a temporary folder
and renames it when complete, so a process killed mid-save leaves the
previous checkpoint restorable; it keeps the last `keep`). PyTorch:
`torch.save` to a temporary file, then an atomic `os.replace` (torchref).

What a checkpoint holds: params, optimizer state (schedule count included),
BatchNorm statistics, the step, the dropout RNG; and as JSON the epochs done
(the data position: the shared batch plan is a function of (seed, epoch)),
the config that made it, and the metrics record so far. Resuming runs the
same compiled epoch on the same bits, so the trajectory is bit-identical to
an uninterrupted run.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxtrain.distributed import is_key
from jaxtrain.errors import UserError

# Flags that change the trajectory: a checkpoint made under other values cannot be resumed.
# How many devices and processes share the work is not among them: only summation order differs.
OUTPUT_ONLY = {"epochs", "metrics_out", "quiet", "progress", "data_dir", "checkpoint_dir", "checkpoint_every",
               "keep", "resume", "devices", "coordinator", "num_processes", "process_id"}


def check_dir(path: str | None) -> None:
    """Create --checkpoint-dir now, so a bad path fails before training, not after it."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{path}: --checkpoint-dir exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create --checkpoint-dir ({e.strerror})") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"{path}: --checkpoint-dir is not writable")


def check_same_config(saved: dict, config, where: str) -> None:
    current = config.to_json()
    for key in sorted(set(saved) | set(current)):
        if key in OUTPUT_ONLY:
            continue
        if saved.get(key) != current.get(key):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{where}: checkpoint was made with {flag} {saved.get(key)!r}, this run has "
                            f"{current.get(key)!r}; use the same flags or another --checkpoint-dir")


class JaxCheckpointer:
    def __init__(self, directory: str, keep: int = 3):
        import orbax.checkpoint as ocp

        check_dir(directory)
        self.ocp = ocp
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise UserError(f"{directory}: cannot use as --checkpoint-dir ({e.strerror or e})") from None

    @staticmethod
    def _tree(state) -> dict:
        import jax

        return {"params": state.params, "opt_state": state.opt_state, "buffers": jax.tree.map(_key_data, state.buffers),
                "step": state.step, "rng": jax.random.key_data(state.rng)}

    def save(self, epochs_done: int, state, record: dict) -> None:
        ocp = self.ocp
        meta = {"epochs_done": epochs_done, "config": record["config"], "record": record}
        self.manager.save(epochs_done, args=ocp.args.Composite(state=ocp.args.StandardSave(self._tree(state)),
                                                               meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, state, config):
        """(state, record, epochs_done) from the latest checkpoint, checked against `config`."""
        import jax

        ocp = self.ocp
        step = self.latest()
        if step is None:
            raise UserError(f"{self.directory}: --resume found no checkpoint; run without --resume first")
        target = self._tree(state)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            check_same_config(meta["config"], config, str(self.directory))
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except UserError:
            raise
        except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
            raise UserError(f"{self.directory}: cannot restore checkpoint {step} ({type(e).__name__}); "
                            "use another --checkpoint-dir") from None
        leaves = jax.tree.leaves(restored.state)
        tree = jax.tree.unflatten(jax.tree.structure(target), leaves)
        buffers = jax.tree.map(lambda saved, now: jax.random.wrap_key_data(saved) if is_key(now) else saved,
                               tree["buffers"], state.buffers)
        state = state.replace(params=tree["params"], opt_state=tree["opt_state"], buffers=buffers,
                              step=tree["step"], rng=jax.random.wrap_key_data(tree["rng"]))
        return state, meta["record"], meta["epochs_done"]


def _key_data(leaf):
    """PRNG keys (an NNX Dropout's RNG stream) are saved as their raw data."""
    import jax

    return jax.random.key_data(leaf) if is_key(leaf) else leaf
