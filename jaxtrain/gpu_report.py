"""The GPU report: parity, the verdict corpus' short subset, the bench and compare_port's three models
on one CUDA machine.

    make gpu-report                                   # after `make setup CUDA=12`
    PYTHONPATH=. python3 -m jaxtrain.gpu_report       # a machine with jax, torch, flax, optax preinstalled

Writes results/gpu/<device>.json (everything), <device>.md (the tables) and
<device>.png (the bench plot; the tutorial's parity plot beside it as
<device>-parity.png). FashionMNIST is read as everywhere (--data-dir, then
$JAXTRAIN_DATA_DIR, ...): copy the four IDX files into the tree you send.
On a machine without a GPU it refuses, unless --allow-cpu (the test suite
runs it that way, with --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "device"


def run(out_dir: Path, data_dir: str | None, quick: bool, log) -> dict:
    import jax
    import torch

    from jaxtrain import bench, parity
    from jaxtrain.bench import port as bench_port
    from jaxtrain import data as data_lib
    from jaxtrain.config import Config
    from jaxtrain.parity import corpus

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    jax_device = str(jax.devices()[0].device_kind)
    stem = out_dir / _slug(device)
    train, test = data_lib.load_fashion_mnist(data_dir)

    tutorial = Config(epochs=1 if quick else 10, data_dir=data_dir, train_limit=640 if quick else None)
    log(f"tutorial parity: {tutorial.epochs} epochs, float32 and float64")
    report = parity.check_parity(tutorial, ("float32", "float64"), train.take(tutorial.train_limit), test)
    parity.plot(report, f"{stem}-parity.png")

    names = (corpus.QUICK_HEALTHY[:1] + corpus.QUICK_BUGS[:1]) if quick else (corpus.QUICK_HEALTHY + corpus.QUICK_BUGS)
    corpus_data = train.take(corpus.TRAIN_SAMPLES), test.take(corpus.TEST_SAMPLES)
    rows = []
    for name in names:
        log(f"corpus: {name}")
        rows.append(corpus.run_case(name, corpus_data))

    bench_config = dataclasses.replace(Config(data_dir=data_dir, quiet=True),
                                       **({"train_limit": 6400, "test_limit": 1000} if quick else {}))
    log("bench")
    speed = bench.run_bench(bench_config, repeats=2 if quick else 5, log=log)
    bench.plot(speed, f"{stem}.png")

    log("your port's bench: a transformer LM, a BatchNorm CNN, an LSTM (python -m jaxtrain.bench.port --suite)")
    ports = bench_port.run_suite(quick=quick, log=log)
    bench_port.plot(ports, f"{stem}-ports.png")

    result = {"device": device, "jax_device": jax_device, "jax": jax.__version__, "torch": torch.__version__,
              "quick": quick, "parity": report.to_dict(), "corpus": rows, "bench": speed, "ports": ports}
    from jaxtrain.metrics import write_json

    write_json(f"{stem}.json", result)
    Path(f"{stem}.md").write_text(markdown(result, report))
    return result


def markdown(result: dict, report) -> str:
    from jaxtrain import bench
    from jaxtrain.bench import port as bench_port
    from jaxtrain.parity.corpus import markdown as corpus_table

    epochs = result["parity"]["config"]["epochs"]
    return "\n".join([
        f"# GPU report: {result['device']} (jax {result['jax']}, torch {result['torch']})", "",
        f"## Tutorial parity ({epochs} epochs, float32 and float64, batch 64, SGD lr 1e-3)", "",
        "```", str(report), "```", "",
        "## Verdict corpus, short subset", "", corpus_table(result["corpus"], result["device"]), "",
        "## Bench", "", "```", bench.format_table(result["bench"]), "```", "",
        "## Your port's bench (compare_port)", "", *(result["ports"].get("skipped") or []), "```",
        "\n\n".join(f"{name}\n{bench_port.format_table(r)}" for name, r in result["ports"]["models"].items()),
        "```", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxtrain.gpu_report", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/gpu", help="folder for <device>.{json,md,png}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch, 2 corpus cases, a short bench")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (for tests)")
    args = parser.parse_args(argv)
    from jaxtrain import devices

    devices.parity_mode()  # before JAX starts its backend
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_report: error: no CUDA GPU visible to torch; run it on a GPU machine (or --allow-cpu to try it "
              "here)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(out, args.data_dir, args.quick, lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"wrote {out}/{_slug(result['device'])}.{{json,md,png}}")
    ok = result["parity"]["passed"] and all(r["ok"] for r in result["corpus"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
