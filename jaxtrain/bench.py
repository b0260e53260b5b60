"""`jaxtrain bench`: JAX and PyTorch on the same training work, measured in one run.

Four variants of one training epoch of the tutorial (same data, batch size,
model, optimizer):
    torch_tutorial  the tutorial's loop: DataLoader over preloaded tensors, `.item()` every 100 batches
    torch_tuned     preloaded batches, zero_grad(set_to_none=True), no host syncs in the loop
    jax_step        jaxtrain's jitted train_step called per batch from Python
    jax_epoch       jaxtrain's whole epoch in one lax.scan on the device
Each variant lives in its own worker process (so its peak RSS is its own and
no framework's threads compete with another's); the parent interleaves them,
A B C D A B C D ..., after one warm-up epoch each. Times are wall-clock around
a fully synchronised epoch (`block_until_ready`, `.item()`/`cuda.synchronize`).

FLOPs: the matmul work of a training epoch, exactly: forward 2·n·(Σ in·out),
weight gradients the same again, input gradients for every layer but the first
(the images need no gradient). The floor is that count over the best float32
matmul rate measured on this device (2048³, torch and JAX, best of 5).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import statistics
import time

VARIANTS = ("torch_tutorial", "torch_tuned", "jax_step", "jax_epoch")
# OpenMP/XLA worker threads keep spinning briefly after a parallel region; on a 2-core
# machine they would steal time from whichever variant runs next. Measured: jax_epoch
# timed right after other variants without a pause was ~20% slower than alone.
SETTLE_SECONDS = 0.3
LAYERS = ((784, 512), (512, 512), (512, 10))


def epoch_flop(num_samples: int, layers=LAYERS) -> float:
    forward = 2 * sum(i * o for i, o in layers)
    input_grads = 2 * sum(i * o for i, o in layers[1:])
    return float(num_samples * (2 * forward + input_grads))


# --------------------------------------------------------------------------- workers


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's
    peak from before the worker's exec on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class TorchVariant:
    def __init__(self, config, train, test, tuned: bool):
        import torch

        from torchref import train as torch_train

        self.torch, self.tuned = torch, tuned
        self.device = torch_train.device()
        self.model, self.loss_fn, self.optimizer, _ = torch_train.setup(config)
        self.train_loader = torch_train.make_dataloader(train, config, train=True)
        self.test_loader = torch_train.make_dataloader(test, config, train=False)
        self.torch_train = torch_train
        if tuned:  # whole batches, already on the device, made once
            self.train_batches = [(x.to(self.device), y.to(self.device)) for x, y in self.train_loader]
            self.test_batches = [(x.to(self.device), y.to(self.device)) for x, y in self.test_loader]

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train_epoch(self) -> None:
        if not self.tuned:
            self.torch_train.train_loop(self.train_loader, self.model, self.loss_fn, self.optimizer,
                                        report=lambda loss, current, size: None)
            self._sync()
            return
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer
        model.train()
        total = self.torch.zeros((), device=self.device)
        for X, y in self.train_batches:
            loss = loss_fn(model(X), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
        total.item()  # one sync, at the end

    def test_epoch(self) -> None:
        if not self.tuned:
            self.torch_train.test_loop(self.test_loader, self.model, self.loss_fn)
            return
        self.model.eval()
        torch = self.torch
        with torch.no_grad():
            loss, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            for X, y in self.test_batches:
                pred = self.model(X)
                loss += self.loss_fn(pred, y)
                correct += (pred.argmax(1) == y).sum()
            (loss / len(self.test_batches)).item(), correct.item()


class JaxVariant:
    def __init__(self, config, train, test, whole_epoch: bool):
        import jax
        import jax.numpy as jnp

        from jaxtrain import data as data_lib
        from jaxtrain import train as train_lib

        train_lib.configure_jax(config.dtype)
        self.jax, self.whole_epoch = jax, whole_epoch
        start = time.perf_counter()
        self.trainer = train_lib.Trainer(config, train, test)  # compiles the scanned epoch and eval
        self.compile_seconds = self.trainer.compile_seconds
        if not whole_epoch:
            plan = data_lib.epoch_batches(len(train), config.batch_size)
            images = self.trainer.train_images
            self.batches = [{"x": images[plan.index[b]], "y": self.trainer.train_labels[plan.index[b]],
                             "mask": jnp.asarray(plan.mask[b], images.dtype)} for b in range(len(plan))]
            jax.block_until_ready(self.batches)
            step = jax.jit(train_lib.train_step, donate_argnums=0)
            compile_start = time.perf_counter()
            self.step = step.lower(self.trainer.state, self.batches[0]).compile()
            self.compile_seconds = time.perf_counter() - compile_start
        self.setup_seconds = time.perf_counter() - start

    def train_epoch(self) -> None:
        if self.whole_epoch:
            self.trainer.train_one_epoch(0)  # returns host numpy: synchronised
            return
        state, losses = self.trainer.state, []
        for batch in self.batches:
            state, metrics = self.step(state, batch)
            losses.append(metrics["loss"])
        self.jax.block_until_ready((state, losses))
        self.trainer.state = state

    def test_epoch(self) -> None:
        self.trainer.evaluate()


def _worker(conn, variant: str, config_json: dict, xla_flags: str | None) -> None:
    import os

    if xla_flags is not None:
        os.environ["XLA_FLAGS"] = xla_flags
    from jaxtrain import data as data_lib
    from jaxtrain.config import Config

    config = Config(**{**config_json, "betas": tuple(config_json["betas"]),
                       "milestones": tuple(config_json["milestones"])})
    train, test = data_lib.load_data(config)
    start = time.perf_counter()
    if variant.startswith("torch"):
        runner = TorchVariant(config, train, test, tuned=variant == "torch_tuned")
        compile_seconds = None
    else:
        runner = JaxVariant(config, train, test, whole_epoch=variant == "jax_epoch")
        compile_seconds = runner.compile_seconds
    setup_seconds = time.perf_counter() - start
    conn.send({"ready": True, "compile_seconds": compile_seconds, "setup_seconds": setup_seconds,
               "device": _device_name(variant)})
    while True:
        command = conn.recv()
        if command == "stop":
            conn.send({"peak_rss_mb": _peak_rss_mb()})
            return
        start = time.perf_counter()
        (runner.train_epoch if command == "train" else runner.test_epoch)()
        conn.send({"seconds": time.perf_counter() - start})


def _device_name(variant: str) -> str:
    if variant.startswith("torch"):
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            import os

            return f"cpu ({model}, {os.cpu_count()} cores)"
        except (OSError, StopIteration):
            return "cpu"
    return str(device.device_kind)


class Worker:
    def __init__(self, variant, config, xla_flags=None):
        ctx = mp.get_context("spawn")
        self.parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, variant, config.to_json(), xla_flags), daemon=True)
        self.process.start()
        self.info = self._recv()

    def _recv(self):
        deadline = time.monotonic() + 900
        while not self.parent.poll(0.2):
            if not self.process.is_alive():
                raise RuntimeError(f"benchmark worker exited with code {self.process.exitcode}")
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark worker did not answer within 900 s")
        return self.parent.recv()

    def run(self, command: str) -> float:
        time.sleep(SETTLE_SECONDS)  # let the previous variant's spinning worker threads go idle
        self.parent.send(command)
        return self._recv()["seconds"]

    def stop(self) -> float:
        self.parent.send("stop")
        rss = self._recv()["peak_rss_mb"]
        self.process.join(30)
        return rss


# --------------------------------------------------------------------------- measurement


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 n³ matmul rate of torch and JAX on this device, GFLOP/s."""
    import jax
    import jax.numpy as jnp
    import torch

    flop = 2.0 * n ** 3
    best = 0.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.rand(n, n, device=device)
    for _ in range(repeats + 1):
        start = time.perf_counter()
        (a @ a).sum().item()
        best = max(best, flop / (time.perf_counter() - start) / 1e9)
    x = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda m: m @ m)
    matmul(x).block_until_ready()
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = max(best, flop / (time.perf_counter() - start) / 1e9)
    return best


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(config, variants=VARIANTS, repeats: int = 5, log=print, xla_flags=None) -> dict:
    """Warm up each variant, then interleave `repeats` rounds of (train epoch, test pass)."""
    workers = {}
    for name in variants:
        log(f"starting {name} ...")
        workers[name] = Worker(name, config, xla_flags)
    warmup = {name: w.run("train") for name, w in workers.items()}
    for w in workers.values():
        w.run("test")
    train_times = {name: [] for name in workers}
    test_times = {name: [] for name in workers}
    for r in range(repeats):
        for name, w in workers.items():
            train_times[name].append(w.run("train"))
            test_times[name].append(w.run("test"))
        log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in train_times.items()))
    results = {}
    for name, w in workers.items():
        steady = statistics.median(train_times[name])
        compile_seconds = w.info["compile_seconds"]
        if compile_seconds is None:  # torch: the first epoch's extra time over a steady one
            compile_seconds = max(warmup[name] - steady, 0.0)
        results[name] = {"train": train_times[name], "test": test_times[name], "compile": compile_seconds,
                         "rss": w.stop(), "device": w.info["device"]}
    return results


def run_bench(config, repeats=5, batch_sizes=(), scaling_repeats=2, log=print, xla_flags=None) -> dict:
    from jaxtrain.data import load_data

    train, _ = load_data(config)
    peak = matmul_peak_gflops()
    flop = epoch_flop(len(train))
    floor = (flop / 1e9) / peak  # as the JSON states it: epoch_gflop / matmul_peak_gflops
    log(f"matmul peak {peak:.0f} GFLOP/s; epoch {flop / 1e9:.1f} GFLOP; floor {floor:.3f} s")
    results = measure(config, VARIANTS, repeats, log, xla_flags)
    tutorial = statistics.median(results["torch_tutorial"]["train"])
    variants = []
    for name in VARIANTS:
        r = results[name]
        median = statistics.median(r["train"])
        variants.append({"name": name, "epoch_seconds": _stats(r["train"]), "test_seconds": _stats(r["test"]),
                         "compile_seconds": r["compile"], "samples_per_second": len(train) / median,
                         "gflops": flop / median / 1e9, "peak_rss_mb": r["rss"],
                         "ratio_to_torch_tutorial": median / tutorial})
    scaling = []
    for batch_size in batch_sizes:
        log(f"scaling: batch size {batch_size}")
        scaled = measure(dataclasses.replace(config, batch_size=batch_size), VARIANTS, scaling_repeats, log,
                         xla_flags)
        base = statistics.median(scaled["torch_tutorial"]["train"])
        for name in VARIANTS:
            median = statistics.median(scaled[name]["train"])
            scaling.append({"batch_size": batch_size, "name": name, "epoch_seconds": median,
                            "ratio_to_torch_tutorial": median / base})
    device = results["jax_epoch"]["device"]
    return {"device": device, "matmul_peak_gflops": peak, "epoch_gflop": flop / 1e9, "flop_floor_seconds": floor,
            "variants": variants, "scaling": scaling}


def format_table(result: dict) -> str:
    lines = [f"device {result['device']}; matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s; "
             f"training epoch {result['epoch_gflop']:.1f} GFLOP; FLOP floor {result['flop_floor_seconds']:.3f} s",
             f"{'variant':<15} {'epoch s (median [min-max])':>27} {'test s':>7} {'compile s':>9} "
             f"{'samples/s':>10} {'GFLOP/s':>8} {'RSS MB':>7} {'vs tutorial':>11} {'vs floor':>8}"]
    for v in result["variants"]:
        e = v["epoch_seconds"]
        lines.append(f"{v['name']:<15} {e['median']:>9.3f} [{e['min']:.3f}-{e['max']:.3f}] "
                     f"{v['test_seconds']['median']:>7.3f} {v['compile_seconds']:>9.2f} "
                     f"{v['samples_per_second']:>10.0f} {v['gflops']:>8.1f} {v['peak_rss_mb']:>7.0f} "
                     f"{v['ratio_to_torch_tutorial']:>10.2f}x {e['median'] / result['flop_floor_seconds']:>7.2f}x")
    if result["scaling"]:
        sizes = sorted({s["batch_size"] for s in result["scaling"]})
        lines.append("")
        lines.append("epoch seconds by batch size: " + " ".join(f"{b:>8}" for b in sizes))
        for name in VARIANTS:
            row = {s["batch_size"]: s["epoch_seconds"] for s in result["scaling"] if s["name"] == name}
            lines.append(f"{name:<28} " + " ".join(f"{row[b]:>8.3f}" for b in sizes))
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result["scaling"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    names = [v["name"] for v in result["variants"]]
    medians = [v["epoch_seconds"]["median"] for v in result["variants"]]
    low = [m - v["epoch_seconds"]["min"] for m, v in zip(medians, result["variants"])]
    high = [v["epoch_seconds"]["max"] - m for m, v in zip(medians, result["variants"])]
    ax.bar(names, medians, yerr=[low, high], capsize=6, color=["#c44e52", "#dd8452", "#4c72b0", "#55a868"])
    ax.axhline(result["flop_floor_seconds"], color="black", linestyle="--",
               label=f"FLOP floor {result['flop_floor_seconds']:.2f} s")
    ax.set_ylabel("training epoch, seconds (median, min-max)")
    ax.set_title(f"One FashionMNIST epoch on {result['device']}")
    ax.legend()
    if result["scaling"]:
        ax = axes[0][1]
        for name in VARIANTS:
            points = sorted((s["batch_size"], s["epoch_seconds"]) for s in result["scaling"] if s["name"] == name)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({s["batch_size"] for s in result["scaling"]}))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel("training epoch, seconds")
        ax.set_title("Scaling with batch size")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(result: dict, path: str) -> None:
    from jaxtrain.metrics import write_json as atomic_write

    atomic_write(path, json.loads(json.dumps(result)))
