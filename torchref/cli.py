"""`torchref train`: the PyTorch reference with the same flags and output as `jaxtrain train`.

Under `torchrun --standalone --nproc-per-node N -m torchref train <flags>` it runs DDP
(torchref.distributed): each rank its block of every global batch, rank 0 prints and writes."""

from __future__ import annotations

from jaxtrain import config as config_lib
from jaxtrain import metrics


def run_train(config) -> int:
    from jaxtrain import checkpoint
    from jaxtrain import data as data_lib
    from jaxtrain import devices
    from jaxtrain.console import Interrupts, TutorialPrinter, epoch_hook
    from torchref import train as train_lib
    from torchref.checkpoint import TorchCheckpointer
    from torchref.distributed import DataParallel

    metrics.check_writable(config.metrics_out)
    checkpoint.check_dir(config.checkpoint_dir)
    devices.torch_full_precision()  # torch's defaults; stated for parity
    parallel = DataParallel.from_env()  # torchrun's ranks; one process without torchrun
    train_split, test_split = data_lib.load_data(config)
    saver = TorchCheckpointer(config.checkpoint_dir, config.keep) if config.checkpoint_dir else None
    save = None if saver is None else saver.save if parallel.is_main else (lambda *args: None)  # rank 0 writes
    try:
        with Interrupts() as interrupts:
            record = train_lib.fit(config, train_split, test_split,
                                   report=TutorialPrinter(config) if parallel.is_main else None,
                                   restore=saver.restorer(config) if config.resume else None,
                                   on_epoch_end=epoch_hook(save, config, interrupts, "torchref", parallel.any_process),
                                   parallel=parallel)
        record["config"] = config.to_json()
        if config.metrics_out and parallel.is_main:
            metrics.write_json(config.metrics_out, record)  # before the group closes: nothing left to lose after
    finally:
        parallel.close()
    return 0


def build_parser() -> config_lib.OneLineParser:
    parser = config_lib.OneLineParser(prog="torchref", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=config_lib.OneLineParser)
    config_lib.add_train_flags(commands.add_parser("train", help="train the tutorial's model with PyTorch"))
    return parser


@config_lib.exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_train(config_lib.config_from_args(args))
