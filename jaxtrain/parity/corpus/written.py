"""Corpus cases for the port writer: torch models nobody wrote for it (the corpus' real-port cases, the tutorial's
models, the bench's CNN, transformers' PyTorch models of the hf cases), each ported by `jaxtrain.port` with no edits and checked as written, on the data and
loop of the case it comes from (its hand port's glue dropped: the written port takes torch's inputs and returns
torch's outputs).

`CANDIDATES` are all such models; `HEALTHY` the cases whose port the writer writes whole (a part it cannot write
makes the case raise, naming it). `python -m jaxtrain.parity.corpus.written` measures the share written and
passing (results/port_writer.{json,md}).
"""

from __future__ import annotations

import time

from jaxtrain.parity.corpus import hf, real

HAND_GLUE = ("flax_model", "flax_input", "flax_output", "weight_map", "flax_kwargs")


def written(case):
    """The case `data -> check_port kwargs` with its Flax model replaced by the written port of its torch model."""
    def make(data):
        from jaxtrain.inputs import rows
        from jaxtrain.port import port

        kwargs = {k: v for k, v in case(data).items() if k not in HAND_GLUE}
        p = port(kwargs["torch_model"], rows(kwargs["train"][0], slice(0, 4)))
        return dict(kwargs, flax_model=p.flax_model())

    return make


def _fashion(model: str, **loop):
    def case(data):
        import torch

        from jaxtrain.bench.models import TorchCNN
        from torchref.models import NeuralNetwork, NeuralNetworkBatchNormDropout

        train, test = data
        torch.manual_seed(0)
        torch_model = {"mlp": NeuralNetwork, "mlp_bn_dropout": NeuralNetworkBatchNormDropout, "cnn": TorchCNN}[model]()
        images = (lambda d: d.images[:, None]) if model == "cnn" else (lambda d: d.images)
        return dict(torch_model=torch_model, train=(images(train)[:512], train.labels[:512]),
                    test=(images(test)[:256], test.labels[:256]), batch_size=64, steps=16, **loop)

    return case


SGD = dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9})
SOURCES = {  # name: the case whose torch model is written (its hand port set aside)
    "written_tutorial_mlp": _fashion("mlp", **SGD),
    "written_bn_dropout_mlp": _fashion("mlp_bn_dropout", optimizer="adam", optimizer_kwargs={"lr": 1e-3}),
    "written_bench_cnn": _fashion("cnn", **SGD),
    **{f"written_{name.removeprefix('real_')}": case for name, case in real.HEALTHY.items()},
    # transformers' PyTorch models (tiny configs, eager attention), on the data and loop of their hf cases
    **{f"written_{name}": (lambda data, case=case: case()) for name, case in hf.CASES.items()},
}
CANDIDATES = {name: written(case) for name, case in SOURCES.items()}
NOT_WRITTEN = {  # what the writer cannot write yet (measured by `measure`; a test keeps this list true)
    "written_spectral_norm": "parametrized weight",
    "written_weight_norm_flax_wrapper": "parametrized weight",
    # `isinstance(attention_mask, torch.Tensor)` is False for a traced value: OPT builds a mask one key too long
    "written_hf_opt_lm": "must match the size of tensor",
    # its position table read across modules; gather, repeat, repeat_interleave, a split of a computed size
    "written_hf_gptj_lm_rotary": "a tensor read from another module or a buffer",
}
HEALTHY = {name: case for name, case in CANDIDATES.items() if name not in NOT_WRITTEN}


def what_is_missing(name: str, data) -> list:
    """The parts of a candidate's torch model the writer cannot write ([] when it writes it whole)."""
    from jaxtrain.inputs import rows
    from jaxtrain.port import port

    kwargs = SOURCES[name](data)
    return port(kwargs["torch_model"], rows(kwargs["train"][0], slice(0, 4))).untranslated


def measure(data, log=print) -> dict:
    """Each candidate: written whole? its check passed? The share of candidates written and passing."""
    from jaxtrain.parity.corpus import run_case

    rows = []
    for name in CANDIDATES:
        start = time.perf_counter()
        missing = what_is_missing(name, data)
        row = {"case": name, "written": not missing, "untranslated": [list(m) for m in missing], "passed": None}
        if not missing:
            row["passed"] = bool(run_case(name, data)["ok"])
        row["seconds"] = round(time.perf_counter() - start, 1)
        log(f"{name:40s} {'written' if not missing else 'NOT written':12s} "
            f"{'' if row['passed'] is None else ('passed' if row['passed'] else 'FAILED')}")
        rows.append(row)
    passed = sum(bool(r["passed"]) for r in rows)
    return {"candidates": len(rows), "written": sum(r["written"] for r in rows), "written_and_passed": passed,
            "share": round(passed / len(rows), 3), "rows": rows}


def main(argv=None) -> int:
    import argparse
    import json
    import platform

    from jaxtrain.bench import cpu_name
    from jaxtrain.metrics import write_json
    from jaxtrain.parity.corpus import load_data

    parser = argparse.ArgumentParser(prog="python -m jaxtrain.parity.corpus.written", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    result = {"command": "python -m jaxtrain.parity.corpus.written", "machine": cpu_name(), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), **measure(load_data())}
    if args.json:
        write_json(args.json, result)
    text = (f"# The port writer on models nobody wrote for it\n\n`{result['command']}` on {result['machine']}, "
            f"{result['date']}: {result['written_and_passed']} of {result['candidates']} written with no edits and "
            f"passing check_port ({result['written']} written whole).\n\n| case | written | check |\n| --- | --- | --- |\n"
            + "".join(f"| {r['case']} | {'yes' if r['written'] else 'no: ' + r['untranslated'][0][0]} | "
                      f"{'' if r['passed'] is None else ('pass' if r['passed'] else 'FAIL')} |\n" for r in result["rows"]))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    print(json.dumps({k: result[k] for k in ("candidates", "written", "written_and_passed", "share")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
