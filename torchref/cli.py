"""`torchref train`: the PyTorch reference with the same flags and output as `jaxtrain train`."""

from __future__ import annotations

from jaxtrain import config as config_lib
from jaxtrain import metrics


def run_train(config) -> int:
    from jaxtrain import checkpoint
    from jaxtrain import data as data_lib
    from jaxtrain import devices
    from jaxtrain.cli import Interrupts, TutorialPrinter, epoch_hook
    from torchref import train as train_lib
    from torchref.checkpoint import TorchCheckpointer

    metrics.check_writable(config.metrics_out)
    checkpoint.check_dir(config.checkpoint_dir)
    devices.torch_full_precision()  # torch's defaults; stated for parity
    train_split, test_split = data_lib.load_data(config)
    saver = TorchCheckpointer(config.checkpoint_dir, config.keep) if config.checkpoint_dir else None
    with Interrupts() as interrupts:
        record = train_lib.fit(config, train_split, test_split, report=TutorialPrinter(config),
                               restore=saver.restorer(config) if config.resume else None,
                               on_epoch_end=epoch_hook(saver.save if saver else None, config, interrupts, "torchref"))
    record["config"] = config.to_json()
    if config.metrics_out:
        metrics.write_json(config.metrics_out, record)
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
