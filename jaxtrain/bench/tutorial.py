"""`jaxtrain bench`: JAX and PyTorch on the same training work, measured in one run.

Variants of one training epoch of the tutorial (same data, batch size, model, optimizer):
    torch_tutorial   the tutorial's loop: DataLoader over preloaded tensors, `.item()` every 100 batches
    torch_tuned      preloaded batches, zero_grad(set_to_none=True), no host syncs in the loop
    torch_compile    the tuned loop with the model and optimizer.step compiled by torch.compile
    torch_compile_cudagraphs   the same with mode="reduce-overhead" (CUDA graphs; on a GPU only)
    jax_step         jaxtrain's jitted train_step called per batch from Python
    jax_epoch        jaxtrain's whole epoch in one lax.scan on the device
Each variant lives in its own worker process (so its peak RSS is its own and
no framework's threads compete with another's); the parent interleaves them,
A B C D A B C D ..., after one warm-up epoch each. Times are wall-clock around
a fully synchronised epoch (`block_until_ready`, `.item()`/`cuda.synchronize`).
Compile time is reported apart: JAX's ahead-of-time compile, torch's first
epoch minus a steady one.

Two floors, both at full float32 precision (no TF32):
- the peak-FLOP floor: the epoch's exact matmul FLOPs (forward 2·n·(Σ in·out),
  weight gradients the same again, input gradients for every layer but the
  first) over the best 2048³ matmul rate of torch and JAX here;
- the shape floor: every GEMM of a training step at the best rate jax, numpy or
  torch reaches for that very shape here (50 back to back), times the steps.
  Small GEMMs never reach the 2048³ rate, so only this floor is reachable. It is
  measured in every round, between the variants, and each GEMM keeps its best
  round: load on the machine slows the floor as it slows the variants.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import statistics
import time

TORCH_COMPILE_MODES = {"torch_compile": "default", "torch_compile_cudagraphs": "reduce-overhead"}


def variants_here() -> tuple[str, ...]:
    """The variants measured on this machine: CUDA graphs (reduce-overhead) only on a GPU."""
    import torch

    names = ["torch_tutorial", "torch_tuned", "torch_compile", "jax_step", "jax_epoch"]
    if torch.cuda.is_available():
        names.insert(3, "torch_compile_cudagraphs")
    return tuple(names)
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
    """torch_tutorial (tuned=False), or the tuned loop, optionally with the model and the
    optimizer step compiled by torch.compile (`compile_mode`: None, "default", "reduce-overhead")."""

    def __init__(self, config, train, test, tuned: bool, compile_mode: str | None = None):
        import torch

        from torchref import train as torch_train

        self.torch, self.tuned = torch, tuned
        self.device = torch_train.device()
        self.model, self.loss_fn, self.optimizer, _ = torch_train.setup(config)
        self.forward, self.optimizer_step = self.model, self.optimizer.step
        if compile_mode is not None:  # compiled on the first (warm-up) epoch
            self.forward = torch.compile(self.model, mode=compile_mode)
            self.optimizer_step = torch.compile(self.optimizer.step, mode=compile_mode)
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
            loss = loss_fn(self.forward(X), y)
            loss.backward()
            self.optimizer_step()
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
                pred = self.forward(X)
                loss += self.loss_fn(pred, y)
                correct += (pred.argmax(1) == y).sum()
            (loss / len(self.test_batches)).item(), correct.item()


class JaxVariant:
    def __init__(self, config, train, test, whole_epoch: bool):
        import jax

        from jaxtrain import data as data_lib
        from jaxtrain import train as train_lib

        train_lib.configure_jax(config.dtype)
        self.jax, self.whole_epoch = jax, whole_epoch
        start = time.perf_counter()
        self.trainer = train_lib.Trainer(config, train, test)  # compiles the scanned epoch and eval
        self.compile_seconds = self.trainer.compile_seconds
        if not whole_epoch:
            plan = data_lib.epoch_batches(len(train), config.batch_size)
            images = self.trainer.train_x
            self.batches = [{"x": images[plan.index[b, : plan.sizes[b]]],
                             "y": self.trainer.train_y[plan.index[b, : plan.sizes[b]]]} for b in range(len(plan))]
            jax.block_until_ready(self.batches)
            step = jax.jit(train_lib.train_step, donate_argnums=0)
            compile_start = time.perf_counter()  # ahead of time: one program per batch shape (full, last)
            self.steps = {len(b["y"]): step.lower(self.trainer.state, b).compile()
                          for b in (self.batches[0], self.batches[-1])}
            self.compile_seconds = time.perf_counter() - compile_start
        self.setup_seconds = time.perf_counter() - start

    def train_epoch(self) -> None:
        if self.whole_epoch:
            self.trainer.train_one_epoch(0)  # returns host numpy: synchronised
            return
        state, losses = self.trainer.state, []
        for batch in self.batches:
            state, metrics = self.steps[len(batch["y"])](state, batch)
            losses.append(metrics["loss"])
        self.jax.block_until_ready((state, losses))
        self.trainer.state = state

    def test_epoch(self) -> None:
        self.trainer.evaluate()


def _worker(conn, variant: str, config_json: dict, xla_flags: str | None) -> None:
    import os

    if xla_flags is not None:
        os.environ["XLA_FLAGS"] = xla_flags
    from jaxtrain import devices

    devices.share_device()
    devices.torch_full_precision()
    from jaxtrain import data as data_lib
    from jaxtrain.config import Config

    config = Config.from_json(config_json)
    train, test = data_lib.load_data(config)
    start = time.perf_counter()
    if variant.startswith("torch"):
        runner = TorchVariant(config, train, test, tuned=variant != "torch_tutorial",
                              compile_mode=TORCH_COMPILE_MODES.get(variant))
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
    return cpu_name() if device.platform == "cpu" else str(device.device_kind)


def cpu_name() -> str:
    """"cpu (MODEL, family F, AVX-512 or AVX2, N cores)" from /proc/cpuinfo, or "cpu": the CPU kind,
    which decides float32 rounding and speed (Intel AVX-512, AMD Zen 3 AVX2, AMD Zen 5 AVX-512)."""
    import os

    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = info.get("flags", "").split()
        vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return f"cpu ({info['model name']}, family {info.get('cpu family', '?')}, {vector}, {os.cpu_count()} cores)"
    except (OSError, KeyError):
        return "cpu"


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


def _full_precision():
    """Both frameworks at full float32 matmul precision (no TF32), as the measured variants run."""
    from jaxtrain import devices
    from jaxtrain.train import configure_jax

    configure_jax("float32")
    devices.torch_full_precision()


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 n³ matmul rate of torch and JAX on this device, GFLOP/s, at full precision."""
    import jax
    import jax.numpy as jnp
    import torch

    _full_precision()
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


def step_gemms(batch: int, layers=LAYERS) -> list[tuple[int, int, int]]:
    """Every matmul (m, k, n) of one training step: forward x@W per layer, weight gradients
    x.T@dy per layer, input gradients dy@W.T for every layer but the first."""
    forward = [(batch, i, o) for i, o in layers]
    weight_grads = [(i, batch, o) for i, o in layers]
    input_grads = [(batch, o, i) for i, o in layers[1:]]
    return forward + weight_grads + input_grads


def gemm_seconds(shape: tuple[int, int, int], back_to_back: int = 50, repeats: int = 5) -> dict:
    """Seconds per product of one (m, k, n) float32 matmul, best of `repeats` runs of
    `back_to_back` products, for each library on this device (numpy on the CPU only)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    m, k, n = shape
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    out = {}
    on_gpu = torch.cuda.is_available()
    ta, tb = torch.from_numpy(a).to("cuda" if on_gpu else "cpu"), torch.from_numpy(b).to("cuda" if on_gpu else "cpu")

    def torch_run():
        acc = None
        for _ in range(back_to_back):
            acc = ta @ tb
        acc.sum().item()

    ja, jb = jnp.asarray(a), jnp.asarray(b)

    @jax.jit
    def jax_run(x, y):
        # Each product depends on the one before (a scalar carried into x) and is summed whole,
        # so XLA can neither hoist it out of the loop nor shrink it to the one element used.
        def body(carry, _):
            return jnp.sum((x + carry) @ y) * 1e-30, None

        return jax.lax.scan(body, jnp.zeros((), x.dtype), None, length=back_to_back)[0]

    def numpy_run():
        for _ in range(back_to_back):
            a @ b

    runners = {"torch": torch_run, "jax": lambda: jax_run(ja, jb).block_until_ready()}
    if not on_gpu:
        runners["numpy"] = numpy_run
    for name, run in runners.items():
        run()  # warm-up (and compile)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        out[name] = best / back_to_back
    return out


def shape_floor(num_samples: int, batch_size: int, layers=LAYERS) -> dict:
    """The epoch's GEMMs, each at the best rate any of jax/numpy/torch reaches for its shape here."""
    _full_precision()
    full, last = divmod(num_samples, batch_size)
    sizes = {batch_size: full, **({last: 1} if last else {})}
    total, shapes = 0.0, []
    for batch, count in sizes.items():
        for shape in step_gemms(batch, layers):
            seconds = gemm_seconds(shape)
            best = min(seconds, key=seconds.get)
            total += count * seconds[best]
            shapes.append({"m": shape[0], "k": shape[1], "n": shape[2], "per_epoch": count,
                           "seconds": seconds, "best": best,
                           "gflops": 2 * shape[0] * shape[1] * shape[2] / seconds[best] / 1e9})
    return {"seconds": total, "shapes": shapes}


def fastest_floor(rounds: list[dict]) -> dict:
    """The shape floor over several rounds: each GEMM at the best time any round measured for it,
    so the floor had every chance the variants had (it is measured in the same rounds, between them)."""
    shapes = []
    for per_round in zip(*(r["shapes"] for r in rounds)):
        best = min(per_round, key=lambda g: g["seconds"][g["best"]])
        shapes.append({**best, "rounds": len(per_round)})
    return {"seconds": sum(g["per_epoch"] * g["seconds"][g["best"]] for g in shapes), "shapes": shapes}


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(config, variants, repeats: int = 5, log=print, xla_flags=None, each_round=None) -> dict:
    """Warm up each variant, then interleave `repeats` rounds of (train epoch, test pass);
    `each_round()`, when given, runs once in every round after the variants (the shape floor)."""
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
        if each_round is not None:
            each_round()
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
    log(f"matmul peak {peak:.0f} GFLOP/s; epoch {flop / 1e9:.1f} GFLOP; peak floor {floor:.3f} s")
    names = variants_here()
    floors: list[dict] = []  # the shape floor, measured in every round beside the variants
    results = measure(config, names, repeats, log, xla_flags,
                      each_round=lambda: floors.append(shape_floor(len(train), config.batch_size)))
    shapes = fastest_floor(floors)
    log(f"shape floor {shapes['seconds']:.3f} s (each GEMM at its best of {len(floors)} rounds)")
    tutorial = statistics.median(results["torch_tutorial"]["train"])
    variants = []
    for name in names:
        r = results[name]
        median = statistics.median(r["train"])
        variants.append({"name": name, "epoch_seconds": _stats(r["train"]), "test_seconds": _stats(r["test"]),
                         "compile_seconds": r["compile"], "samples_per_second": len(train) / median,
                         "gflops": flop / median / 1e9, "peak_rss_mb": r["rss"],
                         "ratio_to_torch_tutorial": median / tutorial,
                         "ratio_to_shape_floor": median / shapes["seconds"]})
    scaling = []
    for batch_size in batch_sizes:
        log(f"scaling: batch size {batch_size}")
        scaled = measure(dataclasses.replace(config, batch_size=batch_size), names, scaling_repeats, log,
                         xla_flags)
        base = statistics.median(scaled["torch_tutorial"]["train"])
        for name in names:
            median = statistics.median(scaled[name]["train"])
            scaling.append({"batch_size": batch_size, "name": name, "epoch_seconds": median,
                            "ratio_to_torch_tutorial": median / base})
    device = results["jax_epoch"]["device"]
    return {"device": device, "matmul_peak_gflops": peak, "epoch_gflop": flop / 1e9, "flop_floor_seconds": floor,
            "shape_floor_seconds": shapes["seconds"], "shape_floor_gemms": shapes["shapes"],
            "variants": variants, "scaling": scaling}


def format_table(result: dict) -> str:
    lines = [f"device {result['device']}; matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s; "
             f"training epoch {result['epoch_gflop']:.1f} GFLOP; peak-FLOP floor {result['flop_floor_seconds']:.3f} s; "
             f"shape floor {result['shape_floor_seconds']:.3f} s",
             f"{'variant':<17} {'epoch s (median [min-max])':>27} {'test s':>7} {'compile s':>9} "
             f"{'samples/s':>10} {'GFLOP/s':>8} {'RSS MB':>7} {'vs tutorial':>11} {'vs peak':>8} {'vs shape':>8}"]
    for v in result["variants"]:
        e = v["epoch_seconds"]
        lines.append(f"{v['name']:<17} {e['median']:>9.3f} [{e['min']:.3f}-{e['max']:.3f}] "
                     f"{v['test_seconds']['median']:>7.3f} {v['compile_seconds']:>9.2f} "
                     f"{v['samples_per_second']:>10.0f} {v['gflops']:>8.1f} {v['peak_rss_mb']:>7.0f} "
                     f"{v['ratio_to_torch_tutorial']:>10.2f}x {e['median'] / result['flop_floor_seconds']:>7.2f}x "
                     f"{v['ratio_to_shape_floor']:>7.2f}x")
    if result["scaling"]:
        sizes = sorted({s["batch_size"] for s in result["scaling"]})
        lines.append("")
        lines.append("epoch seconds by batch size: " + " ".join(f"{b:>8}" for b in sizes))
        for name in [v["name"] for v in result["variants"]]:
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
    ax.bar(names, medians, yerr=[low, high], capsize=6,
           color=["#c44e52", "#dd8452", "#8172b3", "#937860", "#4c72b0", "#55a868"][: len(names)])
    ax.tick_params(axis="x", rotation=20)
    ax.axhline(result["flop_floor_seconds"], color="black", linestyle="--",
               label=f"peak-FLOP floor {result['flop_floor_seconds']:.2f} s")
    ax.axhline(result["shape_floor_seconds"], color="gray", linestyle=":",
               label=f"shape floor {result['shape_floor_seconds']:.2f} s")
    ax.set_ylabel("training epoch, seconds (median, min-max)")
    ax.set_title(f"One FashionMNIST epoch on {result['device']}")
    ax.legend()
    if result["scaling"]:
        ax = axes[0][1]
        for name in names:
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
