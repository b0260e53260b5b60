"""Data parallel: N devices in one or more processes, one 1-D mesh, each global batch split on it.

Twin: `torchref/distributed.py` (DDP). JAX does the work: `jax.distributed` joins the
processes, a `NamedSharding` over the mesh's "data" axis splits every global batch
(`--batch-size` is the global batch, as with one device), parameters, optimizer state and
the training set are replicated, and XLA inserts the gradient all-reduce into the one
compiled epoch. Device d of the mesh takes rows [d*B/N, (d+1)*B/N) of each global batch
of the shared plan (`jaxtrain.data.epoch_batches`); a process hands JAX only its own
devices' rows (`jax.make_array_from_process_local_data`). One device is the mesh of one,
so a single-device run goes through the same code.

The last partial batch of an epoch, when its size does not divide by N, runs replicated:
every device computes that whole (small) batch, so the math is still one device's.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from jaxtrain.errors import ConfigError, PeerLost, UserError, first_line

AXIS = "data"
LOCAL_RANK_ENV = "JAXTRAIN_LOCAL_RANK"  # set by `jaxtrain launch` for each process it starts


def start(devices: int = 1, coordinator: str | None = None, num_processes: int | None = None,
          process_id: int | None = None) -> None:
    """Before JAX starts its backend: on CPU make `devices` devices per process
    (`jax_num_cpu_devices`), and join a multi-process run: explicitly, or with
    coordinator "auto" through JAX's own cluster detection (SLURM, Kubernetes, TPU, MPI)."""
    import jax

    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    if coordinator is None:
        return
    local_rank = os.environ.get(LOCAL_RANK_ENV)
    local_device_ids = None  # GPUs: process i of a local launch takes GPUs [i*devices, (i+1)*devices)
    if local_rank is not None:
        local_device_ids = list(range(int(local_rank) * devices, (int(local_rank) + 1) * devices))
    try:
        if coordinator == "auto":
            jax.distributed.initialize(local_device_ids=local_device_ids)
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids,
                                       initialization_timeout=120)
    except Exception as e:  # unreachable coordinator, no cluster detected, a timeout
        hint = ("; JAX detected no cluster (SLURM, Kubernetes, TPU, Open MPI): give --coordinator HOST:PORT "
                "--num-processes N --process-id I" if coordinator == "auto" else "")
        raise UserError(f"cannot join the multi-process run (--coordinator {coordinator}): "
                        f"{first_line(e)}{hint}") from None


def check_flags(devices: int, coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """The multi-process flags go together (or --coordinator auto alone)."""
    explicit = (num_processes, process_id)
    if coordinator is None:
        if any(v is not None for v in explicit):
            raise ConfigError("--num-processes and --process-id need --coordinator HOST:PORT (or use jaxtrain launch)")
        return
    if coordinator == "auto":
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:1234, or auto")
    if num_processes is None or process_id is None:
        raise ConfigError("--coordinator HOST:PORT needs --num-processes N and --process-id I")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in [0, {num_processes}), got {process_id}")


class DataParallel:
    """The mesh of a run and how host arrays go onto it and come back."""

    def __init__(self, devices_per_process: int = 1, batch_size: int | None = None):
        import jax
        from jax.sharding import AxisType, Mesh

        chosen = []
        for process in range(jax.process_count()):
            local = sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
            if len(local) < devices_per_process:
                raise ConfigError(f"--devices {devices_per_process}: process {process} has only {len(local)} "
                                  f"{jax.default_backend()} device(s)")
            chosen += local[:devices_per_process]
        self.mesh = Mesh(np.array(chosen), (AXIS,), axis_types=(AxisType.Auto,))
        self.num_devices = len(chosen)
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        if batch_size is not None and batch_size % self.num_devices:
            raise ConfigError(f"--batch-size {batch_size} does not split over {self.num_devices} devices; "
                              f"use a multiple of {self.num_devices}")

    @property
    def is_main(self) -> bool:
        """Process 0 prints, writes metrics and leads checkpoint writes."""
        return self.process_index == 0

    def _sharding(self, spec):
        from jax.sharding import NamedSharding

        return NamedSharding(self.mesh, spec)

    def replicate(self, tree):
        """Every leaf whole on every device (parameters, optimizer state, the data sets).
        PRNG keys go as their raw data. Every process passes the same values."""
        import jax
        from jax.sharding import PartitionSpec as P

        sharding = self._sharding(P())

        def put(leaf):
            if is_key(leaf):
                return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

        return jax.tree.map(put, tree)

    def shard_rows(self, rows: np.ndarray, axis: int):
        """`rows` (the same global array in every process, e.g. a batch plan's index matrix, batch
        on `axis`) split over the mesh along `axis`; each process hands over only its devices'
        part. Replicated when the batch does not divide by the devices (a last partial batch)."""
        import jax
        from jax.sharding import PartitionSpec as P

        rows = np.asarray(rows)
        if rows.shape[axis] % self.num_devices:
            return jax.make_array_from_process_local_data(self._sharding(P()), rows)
        spec = P(*([None] * axis), AXIS)
        per_process = rows.shape[axis] // self.process_count
        local = np.take(rows, np.arange(self.process_index * per_process, (self.process_index + 1) * per_process),
                        axis=axis)
        return jax.make_array_from_process_local_data(self._sharding(spec), local, rows.shape)

    def to_host(self, tree):
        """Replicated results (losses, metrics) as numpy, read from this process's own copy."""
        import jax
        from jax.experimental import multihost_utils

        def get(leaf):
            if leaf.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

        return jax.tree.map(get, tree)

    def any_process(self, flag: bool) -> bool:
        """True in every process when it is true in any (so all stop at the same epoch)."""
        if self.process_count == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


@contextlib.contextmanager
def peers_watched(parallel: DataParallel):
    """In a multi-process run, a failed collective (a peer died, the network broke) becomes
    one line naming this process, not a traceback."""
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if parallel.process_count == 1:
            raise
        raise PeerLost(f"process {parallel.process_index}: a collective failed, another process has probably "
                       f"died ({first_line(e)})") from None


def is_key(leaf) -> bool:
    """A typed PRNG key array (the dropout RNG, an NNX Dropout's stream)."""
    import jax

    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
