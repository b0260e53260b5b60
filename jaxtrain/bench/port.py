"""`compare_port`: how fast *your* torch model and its Flax port train, measured in one run.

    report = compare_port(torch_model, flax_model, train=(inputs, targets), optimizer="adamw",
                          optimizer_kwargs={"lr": 1e-3}, batch_size=32, steps=50)
    python -m jaxtrain.bench.port --suite --json results/bench_port.json --plot results/bench_port.png

The arguments are `check_port`'s (inputs one array, a tuple or a dict of arrays, torch's layout;
`flax_input`, `weight_map`, `*_kwargs`, `*_output`; `optimizer` a torch.optim name with torch's
keyword arguments, a factory or a (factory, optax) pair), and both sides are built by check_port's
own building blocks (`build_port`, `jax_tx`, jaxtrain's `create_state`, `train_step`, `train_epoch`).
The variants, each timed over blocks of `steps` optimizer steps on the same batches:
    torch_eager    the user's loop: model(X), loss, backward, step, zero_grad; one sync per block
    torch_compile  the same with the model and optimizer.step compiled by torch.compile
                   (mode "reduce-overhead", CUDA graphs, on a GPU)
    jax_step       jaxtrain's jitted train_step called per batch (state donated)
    jax_scan       the block's steps in one lax.scan (`train_epoch`, what `jaxtrain train` runs)
Both at full float32 precision (no TF32; JAX's matmul precision "highest"), or in float64.

Workers. As in `jaxtrain.bench`, every variant lives in its own process (its peak RSS its own, no
framework's threads competing with another's), the parent interleaves them A B C D A B C D ...
after one warm-up block each, with bench's settle pause before each block. The workers import and
build together, then compile one at a time, alone on the machine (JAX ahead of time; torch.compile
in its warm-up block, reported as that block's time over a steady one's; both cold: JAX has no
persistent cache by default, and torch.compile's on-disk caches are switched off in its worker, so
a second run does not report a cached compile).

They are *spawned*, not forked: a fork after JAX has started deadlocks the child (JAX warns so;
tried here: the child's first jit hangs, or aborts on a held mutex), and a CUDA context does not
survive a fork, while a Flax NNX model starts JAX (on the GPU, if there is one) the moment it is
built, before compare_port is even called. So a worker rebuilds its side from a recipe, sent by
pickle: each model as "MODULE:ATTR" (what the CLI takes), a class or a module-level factory
(functools.partial of one works), which the worker calls, or a model object that pickles (a torch
module does; the tutorial's NNX MLP does not); the other arguments (loss pairs, optimizer
factories, *_output callables) must pickle too: module-level functions, not lambdas. What cannot
be sent is one ConfigError saying so; and a script calling compare_port needs the usual
`if __name__ == "__main__":` guard, since spawned workers import it. The parent builds the models
once and every worker loads the parent's torch weights (the JAX side maps them, as check_port
does): all variants train one model from the same weights. A torch worker starts no JAX; a JAX
worker imports torch, as the port is paired by running both models: `import_rss_mb`, a worker's
RSS after its imports, says how much of its peak that is. The loop is the plain one: no
scheduler stepping, accumulation or clipping (a factory's scheduler is left alone on torch's side).

Same model. One `check_port(..., steps=1)` on the first batch from the same weights says whether
the two sides compute the same training step (its float64 math, and its float32 precision: each
side's error against float64 within torch's own), in `report["same_model"]`: a fast port that
trains another model is not a faster port (`strict=True`, as the CLI runs, refuses to time it).
It runs in the parent while the workers import and build (they were spawned with the parent's
environment before it; check_port's deterministic-XLA setting is put back after it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import importlib.util
import multiprocessing as mp
import os
import pickle
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrain.bench import tutorial as bench
from jaxtrain.config import exit_on_user_error
from jaxtrain.errors import ConfigError, PortMappingError, UserError, first_line

VARIANTS = ("torch_eager", "torch_compile", "jax_step", "jax_scan")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class Job:
    """What a worker needs to rebuild its side of the port; sent to it by pickle."""

    torch_model: Any  # a recipe: "MODULE:ATTR", a class or factory, or a model object
    flax_model: Any  # the same (None for torch workers, which must not start JAX)
    weights: dict  # the parent's torch state_dict, numpy
    train: Any  # jaxtrain.data.Split: the timed batches' rows, torch's layout
    config: Any  # jaxtrain.config.Config (batch size, optimizer and its arguments, loss, dtype)
    loss: Any
    optimizer: Any
    calls: dict  # check.Calls' fields (torch_kwargs, ...), plain: unpickling Calls would import JAX
    flax_input: Any = None
    weight_map: Any = None
    steps: int = 1


# --------------------------------------------------------------------------- the API


def compare_port(torch_model, flax_model, train, loss="cross_entropy", optimizer="sgd", optimizer_kwargs=None,
                 batch_size=64, steps=50, flax_input=None, weight_map=None, torch_kwargs=None, flax_kwargs=None,
                 torch_output=None, flax_output=None, repeats=5, variants=None, dtype="float32", log=None,
                 strict=False) -> dict:
    """Time `variants` (default all of VARIANTS) of training `torch_model` and its port `flax_model`:
    `repeats` interleaved blocks of `steps` steps each, after one warm-up block. Returns the report
    (JSON-ready): per variant the step time (median, min, max over the blocks, seconds), samples/s,
    compile time apart, peak host RSS and peak device memory (MB, on a GPU), and `same_model`.
    `log(message)` receives progress; `strict` raises PortMappingError when the same-model check
    fails, before timing anything. See the module docstring for what the models may be."""
    from jaxtrain.parity import check

    variants = _validated(steps, repeats, batch_size, dtype, variants)
    log = log or (lambda message: None)
    split = check._split(train, "train")
    if len(split) < batch_size:
        raise ConfigError(f"batch_size {batch_size} is larger than the {len(split)} training samples")
    split = split.take(min(steps, len(split) // batch_size) * batch_size)  # full batches, cycled
    config = dataclasses.replace(check._config(loss, "mean", optimizer, optimizer_kwargs, None, None, batch_size,
                                               steps, 1, False, 0, len(split)), dtype=dtype)
    torch_object, flax_object = build_model(torch_model, "torch_model"), build_model(flax_model, "flax_model")
    job = Job(torch_model if _is_recipe(torch_model) else torch_object,
              flax_model if _is_recipe(flax_model) else flax_object,
              {k: v.detach().cpu().numpy().copy() for k, v in torch_object.state_dict().items()}, split, config,
              loss, optimizer, dict(torch_kwargs=torch_kwargs, flax_kwargs=flax_kwargs, torch_output=torch_output,
                                    flax_output=flax_output), flax_input, weight_map, steps)
    _check_sendable(job)
    same = {}

    def check_same_model():  # in the parent, while the workers import and build
        log("checking that both sides train the same model (one float32 step) ...")
        same.update(same_model(torch_object, flax_object, split.take(batch_size), loss=loss, optimizer=optimizer,
                               optimizer_kwargs=optimizer_kwargs, batch_size=batch_size, flax_input=flax_input,
                               weight_map=weight_map, torch_kwargs=torch_kwargs, flax_kwargs=flax_kwargs,
                               torch_output=torch_output, flax_output=flax_output))
        if strict and not same["passed"]:
            raise PortMappingError(f"the two sides do not train the same model, so their times compare different "
                                   f"computations: {same['detail']}")

    with _main_for_workers(job):
        raw = measure(job, variants, repeats, log, meanwhile=check_same_model)
    return PortTimes(summarise(raw, job, repeats, same, _name(torch_object), _name(flax_object)))


class PortTimes(dict):
    """compare_port's report: a dict (JSON-ready, `write_json`) that prints as a table (`format_table`)."""

    def __str__(self) -> str:
        return format_table(self)


@contextlib.contextmanager
def _main_for_workers(job: Job):
    """Spawned workers re-run the caller's script as their `__main__`. A REPL, a notebook, `python -c` or a
    script read from stdin (`python -`) has no file to re-run (stdin's workers would die on an EOFError): there
    the workers start without it, so the recipes must come from a module they can import; one ConfigError
    says so when one was defined in that `__main__`."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or (path is not None and os.path.exists(path)):
        yield
        return
    in_main = [what for what, thing in (("torch_model", job.torch_model), ("flax_model", job.flax_model))
               if getattr(thing, "__module__", None) == "__main__"]
    if in_main:
        where = f"a script read from {path}" if path else "an interactive session (a REPL, a notebook, python -c)"
        raise ConfigError(f"compare_port's workers cannot rebuild {in_main[0]} defined in {where}: define it in a "
                          "module they can import (or pass 'MODULE:ATTR'), or run a script file")
    if path is not None:
        del main.__file__
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


def _validated(steps, repeats, batch_size, dtype, variants) -> tuple:
    for name, value in (("steps", steps), ("repeats", repeats), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    variants = VARIANTS if variants is None else tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise ConfigError(f"variants must be distinct names among {', '.join(VARIANTS)}, got {list(variants)}")
    return variants


def _is_recipe(model) -> bool:
    """A string or a callable that makes the model (a class, a factory); not a model object."""
    return isinstance(model, str) or (callable(model) and not _is_model_object(model))


def _is_model_object(model) -> bool:
    """A torch, NNX or linen module object. Flax is only looked at where it is imported already
    (a Flax object cannot exist otherwise), so a torch worker never imports JAX for this."""
    import sys

    kinds = [sys.modules["torch"].nn.Module] if "torch" in sys.modules else []
    if "flax" in sys.modules:
        from flax import linen, nnx

        kinds += [nnx.Module, linen.Module]
    return isinstance(model, tuple(kinds))


def build_model(recipe, what: str):
    """The model a recipe makes: "MODULE:ATTR" imported and called, a class or factory called with no
    arguments (torch's RNG seeded, so a torch factory gives the same weights each time), an object
    itself. A recipe that fails is one PortMappingError."""
    if not _is_recipe(recipe):
        return recipe
    import torch

    torch.manual_seed(0)
    if isinstance(recipe, str):
        from jaxtrain.loading import load_model

        return load_model(recipe, what)
    try:
        return recipe()
    except Exception as e:  # the user's constructor
        raise PortMappingError(f"{what}: {_name(recipe)} could not be built with no arguments: "
                               f"{type(e).__name__}: {first_line(e)}") from None


def _name(thing) -> str:
    if isinstance(thing, functools.partial):
        return _name(thing.func)
    return getattr(thing, "__qualname__", None) or type(thing).__name__


def same_model(torch_model, flax_model, train, **arguments) -> dict:
    """check_port's verdict on one step from the same weights: {"passed", "detail"}.
    `train`: a jaxtrain.data.Split (one batch); `arguments`: check_port's. The environment
    check_port sets for itself (deterministic XLA, cuBLAS workspace) is put back afterwards."""
    from jaxtrain.parity import check_port

    with _environment_kept("XLA_FLAGS", "CUBLAS_WORKSPACE_CONFIG"):
        report = check_port(torch_model, flax_model, train=(train.images, train.labels), steps=1, **arguments)
    sentences = [part["sentence"] for part in report.verdict.values() if part is not None and
                 (report.passed or part["passed"] is False)]
    if report.diagnosis:
        sentences.append(f"diagnosis ({report.diagnosis['trap']}): {report.diagnosis['sentence']}")
    return {"passed": bool(report.passed), "detail": " ".join(sentences)}


@contextlib.contextmanager
def _environment_kept(*names):
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_sendable(job: Job) -> None:
    """Every part of the job pickles (the workers are spawned); else one ConfigError naming it."""
    for field in dataclasses.fields(job):
        try:
            pickle.dumps(getattr(job, field.name))
        except Exception as e:  # PicklingError, AttributeError (a local class), TypeError
            raise ConfigError(
                f"{field.name} cannot be sent to the benchmark's worker processes ({type(e).__name__}: "
                f"{first_line(e)}): each variant runs in a spawned process (JAX cannot be forked), so give "
                "models as a class, a module-level factory or 'MODULE:ATTR', and module-level functions "
                "rather than lambdas or local classes") from None


# --------------------------------------------------------------------------- the parent's side


def measure(job: Job, variants, repeats: int, log, meanwhile=None) -> dict:
    """One worker per variant. They import and build their variants together (while `meanwhile()`
    runs here), then compile one at a time (each compile has the machine to itself); each is
    warmed up with one block, then `repeats` interleaved rounds are timed.
    {variant: the worker's messages, its blocks' seconds, its warm-up's, its memory}."""
    workers = {name: PortWorker(name, job) for name in variants}
    try:
        if meanwhile is not None:
            meanwhile()
        for w in workers.values():
            w.wait_built()
        for name, w in workers.items():
            log(f"compiling {name} ...")
            w.compile()
        warmup = {name: w.run("train") for name, w in workers.items()}
        blocks: dict = {name: [] for name in workers}
        for r in range(repeats):
            for name, w in workers.items():
                blocks[name].append(w.run("train"))
            log(f"round {r + 1}/{repeats}: " + ", ".join(
                f"{n} {1e3 * t[-1] / job.steps:.2f} ms/step" for n, t in blocks.items()))
        return {name: {**w.info, "warmup": warmup[name], "blocks": blocks[name], **w.stop()}
                for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()


class PortWorker(bench.Worker):
    """bench's worker handle (its pipe, its watch for a dead worker, its settle pause) around one
    variant of a user's port: started, it imports and builds the variant; `compile()` compiles
    it; errors in the worker come back as one line."""

    def __init__(self, variant: str, job: Job):
        ctx = mp.get_context("spawn")
        self.variant, self.info = variant, {}
        self.parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, variant), daemon=True)
        self.process.start()
        if variant.startswith("torch"):
            job = dataclasses.replace(job, flax_model=None)  # unpickling a Flax object would start JAX
        # The worker reads its job once it has imported; sent from a thread, so a job larger than the
        # pipe's buffer does not hold the parent (and the other workers' start) until then.
        threading.Thread(target=self._send_quietly, args=(job,), daemon=True).start()

    def _send_quietly(self, job: Job) -> None:
        try:
            self.parent.send(job)
        except OSError:  # the worker is gone; _answer says why
            pass

    def wait_built(self) -> None:
        self.info.update(self._answer())

    def compile(self) -> None:
        self.parent.send("compile")
        self.info.update(self._answer())

    def _answer(self) -> dict:
        try:
            answer = self._recv()
        except RuntimeError as e:  # the worker died; its traceback is on stderr
            raise PortMappingError(
                f"the {self.variant} worker failed ({e}; its error is above): a script calling compare_port "
                "needs `if __name__ == '__main__':` around the call, as the spawned workers import it") from None
        if "error" in answer:
            hint = "" if answer["user"] else " (leave it out with variants= / --variants)"
            raise PortMappingError(f"{self.variant}: {answer['error']}{hint}")
        return answer

    def run(self, command: str) -> float:
        time.sleep(bench.SETTLE_SECONDS)  # let the previous variant's spinning threads go idle
        self.parent.send(command)
        return self._answer()["seconds"]

    def stop(self) -> dict:
        self.parent.send("stop")
        memory = self._answer()
        self.process.join(30)
        return memory

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


def summarise(raw: dict, job: Job, repeats: int, same: dict, torch_name: str, flax_name: str) -> dict:
    """The report from the workers' numbers: seconds per step over the blocks, samples/s, compile
    time (JAX's ahead-of-time compile; torch's first block minus a steady one), memory."""
    batch = job.config.batch_size
    variants = []
    for name, r in raw.items():
        per_step = [seconds / job.steps for seconds in r["blocks"]]
        median = statistics.median(per_step)
        compile_seconds = r["compile_seconds"]
        if compile_seconds is None:
            compile_seconds = max(r["warmup"] - statistics.median(r["blocks"]), 0.0)
        variants.append({"name": name, "step_seconds": bench._stats(per_step), "samples_per_second": batch / median,
                         "compile_seconds": compile_seconds, "peak_rss_mb": r["peak_rss_mb"],
                         "import_rss_mb": r["import_rss_mb"], "peak_device_mb": r["peak_device_mb"],
                         "device": r["device"]})
    devices = {v["name"]: v["device"] for v in variants}
    device = next((d for n, d in devices.items() if n.startswith("jax")), next(iter(devices.values())))
    return {"torch_model": torch_name, "flax_model": flax_name, "device": device, "dtype": job.config.dtype,
            "precision": "full (no TF32; JAX matmul precision 'highest')", "batch_size": batch, "steps": job.steps,
            "repeats": repeats, "distinct_batches": len(job.train) // batch, "same_model": same,
            "variants": variants}


# --------------------------------------------------------------------------- the workers' side


def _worker(conn, variant: str) -> None:
    """One variant in its own process: import, build it from the job the parent sends, compile it
    when told, then answer "train" with one timed block's seconds and "stop" with its memory; a
    failure is sent back as one line."""
    from jaxtrain import devices

    devices.share_device()  # before JAX starts: several workers share one GPU
    loop = TorchLoop if variant.startswith("torch") else JaxLoop
    try:
        loop.import_frameworks()
        import_rss = bench._peak_rss_mb()
        runner = loop(variant, conn.recv())
        conn.send({"import_rss_mb": import_rss})
        conn.recv()  # "compile"
        start = time.perf_counter()
        compiled = runner.compile()  # False: compiled on first use (torch.compile, in the warm-up block)
        conn.send({"compile_seconds": time.perf_counter() - start if compiled else None,
                   "device": bench._device_name(variant)})
    except Exception as e:  # the user's model, or a framework failing on it
        conn.send({"error": f"{type(e).__name__}: {first_line(e)}", "user": isinstance(e, UserError)})
        return
    while True:
        command = conn.recv()
        if command == "stop":
            conn.send({"peak_rss_mb": bench._peak_rss_mb(), "peak_device_mb": runner.peak_device_mb()})
            return
        try:
            start = time.perf_counter()
            runner.run()
            seconds = time.perf_counter() - start
        except Exception as e:  # torch.compile or XLA failing on the user's model
            conn.send({"error": f"{type(e).__name__}: {first_line(e)}", "user": False})
            return
        conn.send({"seconds": seconds})


class TorchLoop:
    """The user's training loop, torch's side: the model, its optimizer and loss, the batches
    already on the device; `run` trains one block and syncs once, at its end."""

    @staticmethod
    def import_frameworks() -> None:
        from jaxtrain import devices
        from torchref import train  # noqa: F401  (imports torch)

        devices.torch_full_precision()

    def __init__(self, variant: str, job: Job):
        import torch

        from jaxtrain import inputs as inputs_lib
        from torchref import train as torch_train

        self.torch, self.inputs, self.steps, self.calls = torch, inputs_lib, job.steps, job.calls
        self.device = torch_train.device()
        model = build_model(job.torch_model, "torch_model")
        model.load_state_dict({k: torch.from_numpy(v) for k, v in job.weights.items()})
        self.model = model.to(torch.float64 if job.config.dtype == "float64" else torch.float32).to(self.device)
        self.model.train()
        self.optimizer = torch_optimizer(job.optimizer, job.config, self.model.parameters())
        self.loss_fn = torch_loss(job.loss, job.config)
        loader = torch_train.make_dataloader(job.train, job.config, train=True, add_channel=False)
        self.batches = [(torch_train.to_device(X), y.to(self.device)) for X, y in loader]
        self.forward, self.optimizer_step = self.model, self.optimizer.step
        if variant == "torch_compile":  # compiled during the warm-up block
            torch.compiler.config.force_disable_caches = True  # cold, as JAX's (no persistent cache) and repeatable
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self.forward = torch.compile(self.model, mode=mode)
            self.optimizer_step = torch.compile(self.optimizer.step, mode=mode)

    def compile(self) -> bool:
        return False  # torch.compile compiles on first use: in the warm-up block

    def run(self) -> None:
        calls, inputs = self.calls, self.inputs
        total = self.torch.zeros((), device=self.device)
        for i in range(self.steps):
            X, y = self.batches[i % len(self.batches)]
            pred = inputs.prediction(inputs.call(self.forward, X, **(calls["torch_kwargs"] or {})),
                                     calls["torch_output"])
            loss = self.loss_fn(pred, y)
            loss.backward()
            self.optimizer_step()
            self.optimizer.zero_grad()
            total += loss.detach()
        total.item()  # the block's one sync

    def peak_device_mb(self) -> float | None:
        cuda = self.torch.cuda
        return cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None


def torch_optimizer(spec, config, params):
    """torch's optimizer as check_port makes it (jaxtrain.parity.optimizers, which imports Flax):
    a name with the config's arguments, or what the user's factory (alone or paired) returns."""
    if isinstance(spec, str):
        from torchref.optim import make_optimizer

        return make_optimizer(config, params)
    made = (spec if callable(spec) else spec[0])(params)
    return made[0] if isinstance(made, tuple) else made  # (optimizer, scheduler): the step's optimizer


def torch_loss(spec, config):
    if isinstance(spec, str):
        from torchref.losses import loss_by_name

        return loss_by_name(spec, config.mse_reduction)
    return spec[0]


class JaxLoop:
    """The Flax port's training, built as check_port builds it (`build_port`, `jax_tx`, jaxtrain's
    `create_state` and `Trainer`), its data on the device: one jitted `train_step` per batch
    (jax_step), or the block's steps in one `lax.scan` of `train_epoch` (jax_scan); both compiled
    ahead of time, the state donated."""

    @staticmethod
    def import_frameworks() -> None:
        from jaxtrain import devices
        from jaxtrain.parity import check  # noqa: F401  (imports torch, JAX, Flax)

        devices.torch_full_precision()

    def __init__(self, variant: str, job: Job):
        import jax
        import torch

        from jaxtrain import data as data_lib
        from jaxtrain import train as train_lib
        from jaxtrain.parity import check
        from jaxtrain.parity import optimizers as optimizers_lib
        from jaxtrain.parity.runners import jax_tx

        self.jax, self.train_lib, self.steps, self.scan = jax, train_lib, job.steps, variant == "jax_scan"
        config = job.config
        train_lib.configure_jax(config.dtype)
        torch_model = build_model(job.torch_model, "torch_model")
        torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in job.weights.items()})
        port = check.build_port(torch_model, build_model(job.flax_model, "flax_model"), job.train,
                                job.train.take(config.batch_size), config, job.loss,
                                optimizers_lib.build(job.optimizer, "epoch", 1, None, {}), job.flax_input,
                                job.weight_map, check.Calls(**job.calls))
        flax = port.flax.computing_in(config.dtype)
        params, buffers = port.mapping.to_flax(flax, port.weights)  # create_state casts to the dtype
        state = train_lib.create_state(config, 1, model=flax, params=params, buffers=buffers,
                                       tx=jax_tx(port, config, params), loss_fn=port.jax_loss)
        trainer = train_lib.Trainer(config, port.jax_train, port.jax_test, state=state, precompile=False)
        self.x, self.y, self.state = trainer.train_x, trainer.train_y, trainer.state
        plan = data_lib.epoch_batches(len(job.train), config.batch_size).index
        if self.scan:
            self.index = trainer.parallel.shard_rows(plan[np.arange(self.steps) % len(plan)], axis=1)
        else:
            from jaxtrain.inputs import rows

            self.batches = jax.block_until_ready([{"x": rows(self.x, i), "y": self.y[i]} for i in plan])
            self.x = self.y = None  # its batches are all it uses

    def compile(self) -> bool:
        """Ahead of time (tracing included), as jaxtrain's Trainer compiles, so it stays out of the blocks."""
        jax, train_lib = self.jax, self.train_lib
        if self.scan:
            self.program = jax.jit(train_lib.train_epoch, donate_argnums=0).lower(
                self.state, self.x, self.y, self.index, None).compile()
        else:
            self.program = jax.jit(train_lib.train_step, donate_argnums=0).lower(self.state, self.batches[0]).compile()
        return True

    def run(self) -> None:
        if self.scan:
            self.state, losses = self.program(self.state, self.x, self.y, self.index, None)
        else:
            state, losses = self.state, []
            for i in range(self.steps):
                state, metrics = self.program(state, self.batches[i % len(self.batches)])
                losses.append(metrics["loss"])
            self.state = state
        self.jax.block_until_ready((self.state, losses))

    def peak_device_mb(self) -> float | None:
        device = self.jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


# --------------------------------------------------------------------------- output


def format_table(report: dict) -> str:
    """The report as a table: one row per variant, and the same-model verdict above it."""
    same = report["same_model"]
    lines = [f"{report['torch_model']} (torch) vs {report['flax_model']} (Flax) on {report['device']}; "
             f"{report['dtype']} at full precision; batch {report['batch_size']}, {report['steps']} steps per block, "
             f"{report['repeats']} rounds",
             f"same model: {'yes' if same['passed'] else 'NO: the times below compare different computations'}"
             + ("" if same["passed"] else f" ({same['detail']})"),
             f"{'variant':<14} {'ms/step (median [min-max])':>28} {'samples/s':>10} {'compile s':>9} "
             f"{'RSS MB':>7} {'device MB':>9} {'vs torch_eager':>14}"]
    eager = next((v["step_seconds"]["median"] for v in report["variants"] if v["name"] == "torch_eager"), None)
    for v in report["variants"]:
        ms = {k: 1e3 * t for k, t in v["step_seconds"].items()}
        times = f"{ms['median']:.3f} [{ms['min']:.3f}-{ms['max']:.3f}]"
        device_mb = "-" if v["peak_device_mb"] is None else f"{v['peak_device_mb']:.0f}"
        ratio = "-" if eager is None else f"{v['step_seconds']['median'] / eager:.2f}x"
        lines.append(f"{v['name']:<14} {times:>28} {v['samples_per_second']:>10.0f} {v['compile_seconds']:>9.2f} "
                     f"{v['peak_rss_mb']:>7.0f} {device_mb:>9} {ratio:>14}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Median step time per variant (min-max bars): one panel for a report, one per model for a suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = result["models"] if "models" in result else {result["flax_model"]: result}
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4.5), squeeze=False)
    colors = {"torch_eager": "#dd8452", "torch_compile": "#8172b3", "jax_step": "#4c72b0", "jax_scan": "#55a868"}
    for ax, (title, report) in zip(axes[0], reports.items()):
        names = [v["name"] for v in report["variants"]]
        ms = [{k: 1e3 * t for k, t in v["step_seconds"].items()} for v in report["variants"]]
        ax.bar(names, [m["median"] for m in ms], color=[colors[n] for n in names], capsize=6,
               yerr=[[m["median"] - m["min"] for m in ms], [m["max"] - m["median"] for m in ms]])
        ax.tick_params(axis="x", rotation=20)
        ax.set_ylabel("ms per training step (median, min-max)")
        same = "" if report["same_model"]["passed"] else " - NOT the same model"
        ax.set_title(f"{title}, batch {report['batch_size']}{same}\n{report['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_written(result: dict, path: str) -> None:
    """`written_vs_hand`: each port's jax_scan step per round (points) and their median (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for i, (name, values) in enumerate(result["jax_scan_step_seconds"].items()):
        ax.bar(i, 1e3 * result["median"][name], color="#55a868" if name == "written" else "#4c72b0", alpha=0.7)
        ax.plot([i] * len(values), [1e3 * v for v in values], "k.")
    ax.set_xticks(range(len(result["median"])), [f"{n} port" for n in result["median"]])
    ax.set_ylabel("jax_scan ms/step")
    ax.set_title(f"BatchNorm CNN on {result['device']}: written / hand = {result['written_over_hand']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(result: dict, path: str) -> None:
    bench.write_json(result, path)


# --------------------------------------------------------------------------- the README's suite


def _gpt2(side: str, sizes: dict):
    """transformers' GPT-2 LM (torch) or the same release's Flax port (its linen module), dropout off
    so the same-model check compares the computation alone."""
    import transformers

    config = transformers.GPT2Config(vocab_size=sizes["vocab"], n_embd=sizes["hidden"], n_layer=sizes["layers"],
                                     n_head=sizes["heads"], n_positions=sizes["seq"], resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    if side == "torch":
        return transformers.GPT2LMHeadModel(config)
    return transformers.FlaxGPT2LMHeadModel(config, _do_init=False).module


def _lm_data(sizes: dict, rows: int, seed: int = 0):
    """Random next-token data: ids, attention mask and positions as a dict; targets the next ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, sizes["vocab"], (rows, sizes["seq"] + 1))
    inputs = {"input_ids": ids[:, :-1], "attention_mask": np.ones((rows, sizes["seq"]), np.int64),
              "position_ids": np.broadcast_to(np.arange(sizes["seq"]), (rows, sizes["seq"])).copy()}
    return inputs, ids[:, 1:]


def suite(quick: bool = False) -> dict:
    """compare_port's arguments for three kinds of model and their existing ports: a GPT-2 LM
    (4 layers, hidden 256, 128 tokens; transformers' own Flax port), the BatchNorm CNN of `jaxtrain.bench.models`,
    and the corpus' LSTM pair (examples/lstm_classifier.py checks it) at 256 hidden units over 64 tokens,
    its port's time loop one lax.scan; `quick`: tiny ones."""
    from jaxtrain.bench.models import NnxCNN, TorchCNN
    from jaxtrain.parity.corpus.real import LinenLSTM, TorchLSTM

    lm = (dict(layers=1, hidden=32, heads=2, seq=16, vocab=64) if quick
          else dict(layers=4, hidden=256, heads=4, seq=128, vocab=1024))
    lstm = dict(vocab=64, embed=8, hidden=16, seq=6) if quick else dict(vocab=1000, embed=64, hidden=256, seq=64)
    lm_batch, cnn_batch, lstm_batch = (4, 8, 8) if quick else (8, 64, 32)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4 * cnn_batch, 1, 28, 28)).astype(np.float32)
    ids = rng.integers(1, lstm["vocab"], (4 * lstm_batch, lstm["seq"]))
    labels = ids[:, 0] % 3
    sizes = {k: lstm[k] for k in ("vocab", "embed", "hidden")}
    return {
        "transformer_lm": dict(torch_model=functools.partial(_gpt2, "torch", lm),
                               flax_model=functools.partial(_gpt2, "flax", lm), train=_lm_data(lm, 4 * lm_batch),
                               optimizer="adamw", optimizer_kwargs={"lr": 1e-3}, batch_size=lm_batch),
        "bn_cnn": dict(torch_model=TorchCNN, flax_model=NnxCNN,
                       train=(images, rng.integers(0, 10, len(images))), flax_input="nhwc", optimizer="sgd",
                       optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, batch_size=cnn_batch),
        # the port keeps torch's tensors and runs its time loop as one lax.scan
        "lstm_classifier": dict(torch_model=functools.partial(TorchLSTM, **sizes),
                                flax_model=functools.partial(LinenLSTM, scan=True, **sizes), train=(ids, labels),
                                optimizer="sgd", optimizer_kwargs={"lr": 0.5}, batch_size=lstm_batch),
    }


def run_suite(quick: bool = False, steps: int | None = None, repeats: int | None = None, variants=None,
              log=None) -> dict:
    """compare_port on each model of `suite`: {"quick", "models": {name: report}}."""
    steps = steps or (2 if quick else 30)
    repeats = repeats or (1 if quick else 3)
    models, skipped = {}, []
    for name, arguments in suite(quick).items():
        if name == "transformer_lm" and importlib.util.find_spec("transformers") is None:
            skipped.append("transformer_lm: not run, `transformers` is not installed here (the dev extra)")
            continue
        (log or (lambda m: None))(f"--- {name}")
        models[name] = compare_port(**arguments, steps=steps, repeats=repeats, variants=variants, log=log)
    return {"quick": quick, "models": models, "skipped": skipped}


def written_vs_hand(steps: int = 30, repeats: int = 3, rounds: int = 3, log=None) -> dict:
    """The BatchNorm CNN's port written by `jaxtrain.port` against the hand-written one (`jaxtrain.bench.models`):
    compare_port's jax_scan step of each, `rounds` alternating rounds in one process; the median of the rounds'
    medians and the ratio written / hand."""
    import tempfile

    from jaxtrain.bench.models import NnxCNN, TorchCNN
    from jaxtrain.port import from_file, port

    rng = np.random.default_rng(0)
    images = rng.normal(size=(256, 1, 28, 28)).astype(np.float32)
    train = (images, rng.integers(0, 10, len(images)))
    path = port(TorchCNN(), images[:4]).save(Path(tempfile.mkdtemp()) / "written_cnn.py")
    ports = {"hand": dict(flax_model=NnxCNN, flax_input="nhwc"),
             "written": dict(flax_model=functools.partial(from_file, str(path), "TorchCNN"), flax_input=None)}
    medians: dict = {name: [] for name in ports}
    for _ in range(rounds):
        for name, arguments in ports.items():
            report = compare_port(TorchCNN, train=train, optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
                                  batch_size=64, steps=steps, repeats=repeats, variants=("jax_scan",), log=log,
                                  strict=True, **arguments)
            medians[name].append(report["variants"][0]["step_seconds"]["median"])
    summary = {name: float(np.median(values)) for name, values in medians.items()}
    return {"device": report["device"], "steps": steps, "repeats": repeats, "rounds": rounds,
            "jax_scan_step_seconds": medians, "median": summary, "written_over_hand": summary["written"] / summary["hand"]}


@exit_on_user_error
def main(argv=None) -> int:
    import sys

    from jaxtrain import config as config_lib
    from jaxtrain import devices, metrics

    parser = config_lib.OneLineParser(prog="python -m jaxtrain.bench.port", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", action="store_true",
                       help="time the three models of `suite` (a GPT-2 LM, a BatchNorm CNN, an LSTM)")
    which.add_argument("--written", action="store_true",
                       help="the BatchNorm CNN's written port (jaxtrain.port) against its hand port, jax_scan")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps, 1 round: a smoke test")
    parser.add_argument("--steps", type=config_lib.positive_int, default=None, help="steps per block (30)")
    parser.add_argument("--repeats", type=config_lib.positive_int, default=None, help="rounds (3)")
    parser.add_argument("--variants", type=variant_list, default=None, help=f"comma-separated: {','.join(VARIANTS)}")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--plot", default=None, metavar="PATH.png")
    args = parser.parse_args(argv)
    metrics.check_writable(args.json, "--json")
    metrics.check_writable(args.plot, "--plot")
    devices.share_device()  # before JAX starts in this process
    if args.written:
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        result = written_vs_hand(args.steps or 30, args.repeats or 3, log=log)
        print(json.dumps(result, indent=1))
        if args.json:
            write_json(result, args.json)
        if args.plot:
            plot_written(result, args.plot)
        return 0
    result = run_suite(args.quick, args.steps, args.repeats, args.variants,
                       log=lambda message: print(message, file=sys.stderr, flush=True))
    print("\n\n".join([*result["skipped"], *(f"{name}\n{format_table(report)}"
                                              for name, report in result["models"].items())]))
    if args.json:
        write_json(result, args.json)
    if args.plot:
        plot(result, args.plot)
    return 0


def variant_list(text: str) -> tuple:
    """An argparse type: comma-separated variant names."""
    import argparse

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names or any(v not in VARIANTS for v in names):
        raise argparse.ArgumentTypeError(f"expected names among {','.join(VARIANTS)}, got {text!r}")
    return names


if __name__ == "__main__":  # through the imported module, so workers unpickle its names as jaxtrain.bench.port's
    from jaxtrain.bench.port import main as imported_main

    raise SystemExit(imported_main())
