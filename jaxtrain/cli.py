"""jaxtrain: train the tutorial in JAX, write a torch model's Flax port, check that it trains like torch,
convert weights, time both."""

from __future__ import annotations

import argparse
import os
import sys

from jaxtrain import config as config_lib
from jaxtrain import metrics
from jaxtrain.console import Interrupts, TutorialPrinter, epoch_hook
from jaxtrain.errors import ConfigError, PortMappingError
from jaxtrain.loading import load_model


def run_train(config) -> int:
    from jaxtrain import checkpoint
    from jaxtrain import data as data_lib
    from jaxtrain import distributed
    from jaxtrain import train as train_lib

    metrics.check_writable(config.metrics_out)
    checkpoint.check_dir(config.checkpoint_dir)
    distributed.start(config.devices, config.coordinator, config.num_processes, config.process_id)
    train_lib.configure_jax(config.dtype)
    train_split, test_split = data_lib.load_data(config)
    trainer = train_lib.Trainer(config, train_split, test_split)
    parallel = trainer.parallel  # every process trains and saves; only process 0 prints and writes metrics
    saver = checkpoint.JaxCheckpointer(config.checkpoint_dir, config.keep) if config.checkpoint_dir else None
    start, record = 0, None
    if config.resume:
        trainer.state, record, start = saver.restore(trainer.state, config)
    with Interrupts() as interrupts, distributed.peers_watched(parallel):
        record = train_lib.fit(config, train_split, test_split,
                               report=TutorialPrinter(config) if parallel.is_main else None,
                               trainer=trainer, start_epoch=start, record=record,
                               on_epoch_end=epoch_hook(saver.save if saver else None, config, interrupts, "jaxtrain",
                                                       parallel.any_process))
    record["config"] = config.to_json()
    if config.metrics_out and parallel.is_main:
        metrics.write_json(config.metrics_out, record)
    return 0


def run_parity(config, args) -> int:
    from jaxtrain import devices

    devices.parity_mode()  # before JAX starts its backend
    from jaxtrain import data as data_lib
    from jaxtrain import parity

    metrics.check_writable(args.report, "--report")
    metrics.check_writable(args.plot, "--plot")
    metrics.check_writable(args.html, "--html")
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    if (args.torch_model is None) != (args.flax_model is None):
        raise ConfigError("--torch-model and --flax-model go together (a torch model and its Flax port)")
    torch_model = flax_model = None
    if args.torch_model:
        import torch

        torch.manual_seed(config.seed)  # the user's torch init, reproducibly
        torch_model = load_model(args.torch_model, "--torch-model")
        flax_model = load_model(args.flax_model, "--flax-model")
    train_split, test_split = data_lib.load_data(config)
    try:
        report = parity.check_parity(config, dtypes, train_split, test_split, max_steps=args.steps,
                                     torch_model=torch_model, flax_model=flax_model, flax_input=args.flax_input)
    except PortMappingError as e:
        if torch_model is None or "on inputs" not in str(e):
            raise
        raise PortMappingError(f"{e}. The parity CLI feeds FashionMNIST images (N, 1, 28, 28); for a model taking "
                               "other inputs (tokens, several arrays) use the Python API: "
                               "jaxtrain.parity.check_port(torch_model, flax_model, train=(inputs, targets))") from None
    print(report)
    if args.report:
        metrics.write_json(args.report, report.to_dict())
    if args.plot:
        parity.plot(report, args.plot)
    if args.html:
        report.save_html(args.html)
    return 0 if report.passed else 1


def run_port(args) -> int:
    """`jaxtrain port MODULE:ATTR --input-shape ... --out FILE [--check]`: write the Flax NNX port; with --check,
    train both on synthetic data and print the verdict. Exit 0 written (and passed); 1 with parts untranslated
    or a failed check (the writer's bug, said as such)."""
    import sys as _sys

    from jaxtrain import convert
    from jaxtrain.port import port

    metrics.check_writable(args.out, "--out")
    torch_model = load_model(args.model, "MODEL")
    example = convert.example_inputs(args.input_shape[1:], args.int_inputs, rows=args.input_shape[0])
    written = port(torch_model, example)
    written.save(args.out)
    print(f"wrote {args.out}: class {written.class_name} (Flax NNX)")
    if written.untranslated:
        for what, where, why in written.untranslated:
            print(f"untranslated: {what} at {where}: {why}")
        print(f"jaxtrain port: {len(written.untranslated)} part(s) of {args.model} could not be written; "
              f"{args.out} imports and raises NotImplementedError there", file=_sys.stderr)
        return 1
    if not args.check:
        return 0
    train, loss = _port_check_data(torch_model, args, example)
    report = written.check(train=train, loss=loss, batch_size=args.input_shape[0], steps=8,
                           optimizer="adam", optimizer_kwargs={"lr": 1e-3})
    print(report)
    if not report.passed:
        print("jaxtrain port: the written port failed its check: a bug in jaxtrain.port's rules, not in your model",
              file=_sys.stderr)
    return 0 if report.passed else 1


def _port_check_data(torch_model, args, example) -> tuple:
    """Synthetic training data for `port --check`: 4 batches of --input-shape; class labels when the model
    outputs (N, classes), else regression targets of its output's shape (mse)."""
    import copy

    import numpy as np
    import torch

    from jaxtrain import convert

    rows = 4 * args.input_shape[0]
    inputs = convert.example_inputs(args.input_shape[1:], args.int_inputs, rows=rows, seed=1)
    with torch.no_grad():
        out = copy.deepcopy(torch_model).eval()(torch.from_numpy(example))
    rng = np.random.default_rng(2)
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.is_floating_point():
        return (inputs, rng.integers(0, out.shape[1], rows)), "cross_entropy"
    if not isinstance(out, torch.Tensor):
        raise ConfigError("port --check trains on the model's output, which is not one tensor here; "
                          "use jaxtrain.port.port(...).check(..., torch_output=..., flax_output=...)")
    return (inputs, rng.normal(size=(rows, *out.shape[1:])).astype(np.float32)), "mse"


def run_convert(args) -> int:
    """torch state_dict (.pt) -> orbax checkpoint of the Flax variables, or back with --to-torch."""
    import torch

    from jaxtrain import convert

    torch_model = load_model(args.torch_model, "--torch-model")
    flax_model = load_model(args.flax_model, "--flax-model")
    example = convert.example_inputs(args.input_shape, args.vocab)
    if args.to_torch:
        variables = convert.load_flax(args.checkpoint, flax_model)
        convert.flax_to_torch(variables, torch_model, example, flax_model=flax_model, flax_input=args.flax_input)
        metrics.check_writable(args.out, "--out")
        torch.save(torch_model.state_dict(), args.out)
        print(f"wrote {args.out}: the torch state_dict ({len(torch_model.state_dict())} tensors)")
        return 0
    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise PortMappingError(f"--checkpoint {args.checkpoint}: cannot load a torch state_dict "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    variables = convert.torch_to_flax(state, flax_model, example, torch_model=torch_model,
                                      flax_input=args.flax_input)
    if os.path.exists(args.out):
        raise ConfigError(f"--out {args.out} exists; give a new directory for the orbax checkpoint")
    convert.save_flax(variables, args.out)
    print(f"wrote {args.out}: an orbax checkpoint of the Flax variables")
    return 0


def _sizes(what: str):
    """An argparse type: comma-separated sizes >= 1, else `what` as the one-line error."""
    def parse(text: str) -> tuple[int, ...]:
        import argparse

        sizes = config_lib.int_list(text)
        if not sizes or min(sizes) < 1:
            raise argparse.ArgumentTypeError(what)
        return sizes

    return parse


def run_bench(config, args) -> int:
    import dataclasses
    import os
    import sys as _sys

    from jaxtrain import devices

    devices.share_device()  # before JAX starts its backend: the parent measures matmul rates too
    if args.torch_model is not None or args.flax_model is not None:
        return run_bench_port(config, args)
    given = [f"--{name.replace('_', '-')}" for name in PORT_BENCH_FLAGS if getattr(args, name) is not None]
    given += ["--flax-input"] if args.flax_input != "same" else []
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --torch-model and --flax-model (timing your own port)")
    from jaxtrain import bench
    from jaxtrain import data as data_lib

    metrics.check_writable(args.json, "--json")
    metrics.check_writable(args.plot, "--plot")
    if args.quick:
        config = dataclasses.replace(config, train_limit=config.train_limit or 6400,
                                     test_limit=config.test_limit or 1000)
    data_lib.load_data(config)  # fail on missing data before starting workers
    log = (lambda *a: None) if config.quiet else (lambda msg: print(msg, file=_sys.stderr, flush=True))
    result = bench.run_bench(config, repeats=2 if args.quick and args.repeats is None else (args.repeats or 5),
                             batch_sizes=args.batch_sizes, log=log, xla_flags=os.environ.get("XLA_FLAGS"))
    return _report(bench, result, args)


PORT_BENCH_FLAGS = ("steps", "variants", "input_shape", "vocab", "classes", "target_shape")


def run_bench_port(config, args) -> int:
    """`bench --torch-model --flax-model`: your port's training step timed against torch's
    (`jaxtrain.bench.compare_port`) on random inputs of --input-shape, after a same-model check."""
    import sys as _sys

    from jaxtrain.bench import port as bench_port

    metrics.check_writable(args.json, "--json")
    metrics.check_writable(args.plot, "--plot")
    if (args.torch_model is None) != (args.flax_model is None):
        raise ConfigError("--torch-model and --flax-model go together (a torch model and its Flax port)")
    if config.scheduler != "none" or config.accumulate != 1 or config.clip_grad_norm is not None:
        raise ConfigError("bench --torch-model times the plain loop: --scheduler, --accumulate and "
                          "--clip-grad-norm are parity's (jaxtrain parity)")
    steps = args.steps or (3 if args.quick else 50)
    repeats = args.repeats or (1 if args.quick else 5)
    train = _random_data(args, config, rows=config.batch_size * min(steps, 8))
    log = (lambda *a: None) if config.quiet else (lambda msg: print(msg, file=_sys.stderr, flush=True))
    report = bench_port.compare_port(args.torch_model, args.flax_model, train=train, loss=config.loss,
                                     optimizer=config.optimizer, optimizer_kwargs=config.optimizer_kwargs(),
                                     batch_size=config.batch_size, steps=steps, flax_input=args.flax_input,
                                     repeats=repeats, variants=args.variants, dtype=config.dtype, log=log,
                                     strict=True)
    return _report(bench_port, report, args)


def _report(module, result, args) -> int:
    """A bench's table on stdout, its JSON and plot where asked (module: jaxtrain.bench or jaxtrain.bench.port)."""
    print(module.format_table(result))
    if args.json:
        module.write_json(result, args.json)
    if args.plot:
        module.plot(result, args.plot)
    return 0


def _random_data(args, config, rows: int) -> tuple:
    """(inputs, targets) to time on: --input-shape standard normal floats (or token ids below --vocab);
    class labels below --classes of shape --target-shape per sample (floats for --loss mse)."""
    import numpy as np

    from jaxtrain import convert

    inputs = convert.example_inputs(args.input_shape or (1, 28, 28), args.vocab, rows=rows, seed=config.seed)
    rng = np.random.default_rng([config.seed, 1])
    classes = args.classes or 10
    if config.loss == "mse":
        return inputs, rng.normal(size=(rows, *(args.target_shape or (classes,)))).astype(np.float32)
    return inputs, rng.integers(0, classes, (rows, *(args.target_shape or ())))


def _variant_names(text: str) -> tuple:
    from jaxtrain.bench.port import variant_list

    return variant_list(text)


def _model_flags(group, required: bool) -> None:
    """--torch-model, --flax-model, --flax-input: a torch model and its Flax port, as `parity` and
    `convert` take them."""
    group.add_argument("--torch-model", required=required, default=None, metavar="MODULE:ATTR",
                       help="a torch.nn.Module class or zero-argument factory")
    group.add_argument("--flax-model", required=required, default=None, metavar="MODULE:ATTR",
                       help="its Flax port: an nnx.Module or linen.Module class or zero-argument factory")
    group.add_argument("--flax-input", choices=("same", "nhwc"), default="same",
                       help="the inputs the Flax model takes: torch's layout, or channels last (NCHW -> NHWC)")


def build_parser() -> config_lib.OneLineParser:
    parser = config_lib.OneLineParser(prog="jaxtrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=config_lib.OneLineParser)
    train = commands.add_parser("train", help="train the tutorial's model with JAX")
    config_lib.add_train_flags(train)
    config_lib.add_distributed_flags(train)
    parity = commands.add_parser("parity", help="check that JAX and PyTorch follow the same trajectory")
    config_lib.add_train_flags(parity, dtypes=("float32", "float64", "both"), default_dtype="both")
    parity.add_argument("--steps", type=config_lib.positive_int, default=None,
                        help="stop after N training steps (default: all --epochs)")
    parity.add_argument("--report", default=None, metavar="PATH", help="write the parity report JSON here")
    parity.add_argument("--plot", default=None, metavar="PATH.png",
                        help="draw both frameworks' step losses and their float32 error envelopes")
    parity.add_argument("--html", default=None, metavar="PATH.html",
                        help="write the report as one self-contained page: verdict, trajectories, step 1 by layer")
    _model_flags(parity.add_argument_group("your own port (default: the tutorial's models)"), required=False)
    conv = commands.add_parser("convert", help="load a torch state_dict into a Flax port (orbax), or back")
    _model_flags(conv, required=True)
    conv.add_argument("--checkpoint", required=True, metavar="PATH",
                      help="a torch state_dict .pt (or, with --to-torch, the orbax directory this command wrote)")
    conv.add_argument("--out", required=True, metavar="PATH",
                      help="the orbax checkpoint directory to write (or, with --to-torch, the .pt file)")
    conv.add_argument("--to-torch", action="store_true", help="Flax variables -> torch state_dict")
    conv.add_argument("--input-shape", type=_sizes("a shape is sizes >= 1, e.g. 1,28,28"), default=(1, 28, 28),
                      help="one example's shape, torch's layout, to pair the models on (default 1,28,28)")
    conv.add_argument("--vocab", type=config_lib.positive_int, default=None,
                      help="the inputs are token ids below VOCAB (shape --input-shape, e.g. 16)")
    written = commands.add_parser("port", help="write the Flax NNX port of a torch model (and check it)")
    written.add_argument("model", metavar="MODULE:ATTR", help="a torch.nn.Module class or zero-argument factory")
    written.add_argument("--input-shape", required=True, type=_sizes("a shape is sizes >= 1, e.g. 8,1,28,28"),
                         help="the example input's shape with its batch, torch's layout (e.g. 8,1,28,28)")
    written.add_argument("--int-inputs", type=config_lib.positive_int, default=None, metavar="VOCAB",
                         help="the inputs are token ids below VOCAB")
    written.add_argument("--out", required=True, metavar="FILE.py", help="where to write the port's source")
    written.add_argument("--check", action="store_true",
                         help="then train both 8 steps on synthetic data (check_port) and print the verdict")
    launch = commands.add_parser("launch", help="run `train` in N local processes (like torchrun --standalone)",
                                 usage="jaxtrain launch --nproc N [--port PORT] -- train <flags>")
    launch.add_argument("--nproc", type=config_lib.positive_int, required=True, help="processes to start")
    launch.add_argument("--port", type=config_lib.positive_int, default=None,
                        help="the coordinator's port on 127.0.0.1 (default: a free one)")
    launch.add_argument("forwarded", nargs=argparse.REMAINDER, help="-- train <flags>")
    bench = commands.add_parser("bench", help="time JAX and PyTorch on the same training work")
    config_lib.add_train_flags(bench)
    bench.add_argument("--repeats", type=config_lib.positive_int, default=None, help="epochs per variant (5)")
    bench.add_argument("--batch-sizes", type=_sizes("batch sizes must be >= 1"), default=(), help="add a scaling table, e.g. 16,64,256")
    bench.add_argument("--json", default=None, metavar="PATH")
    bench.add_argument("--plot", default=None, metavar="PATH.png")
    bench.add_argument("--quick", action="store_true",
                       help="6400 samples, 2 repeats (your port: 3 steps, 1 round): a smoke test")
    port = bench.add_argument_group("your own port (default: the tutorial's bench)")
    _model_flags(port, required=False)
    port.add_argument("--steps", type=config_lib.positive_int, default=None,
                      help="training steps per timed block (default 50)")
    port.add_argument("--variants", type=_variant_names, default=None,
                      help="comma-separated, of torch_eager,torch_compile,jax_step,jax_scan (default all)")
    port.add_argument("--input-shape", type=_sizes("a shape is sizes >= 1, e.g. 1,28,28"), default=None,
                      help="one example's shape, torch's layout (default 1,28,28)")
    port.add_argument("--vocab", type=config_lib.positive_int, default=None,
                      help="the inputs are token ids below VOCAB (shape --input-shape)")
    port.add_argument("--classes", type=config_lib.positive_int, default=None, help="targets below N (default 10)")
    port.add_argument("--target-shape", type=_sizes("a shape is sizes >= 1, e.g. 128"), default=None,
                      help="one example's target shape (default: one label; e.g. 128 for a label per token)")
    return parser


@config_lib.exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return run_train(config_lib.config_from_args(args))
    if args.command == "parity":
        return run_parity(config_lib.config_from_args(args), args)
    if args.command == "launch":
        from jaxtrain.launch import launch

        return launch(args.nproc, args.forwarded, args.port)
    if args.command == "bench":
        return run_bench(config_lib.config_from_args(args), args)
    if args.command == "convert":
        return run_convert(args)
    if args.command == "port":
        return run_port(args)
    return 2
