"""One training configuration, its torch-style command-line flags, and its validation.

`jaxtrain train`, `torchref train`, `jaxtrain parity` and `jaxtrain bench` all
build their flags here, so the two frameworks accept exactly the same options
and reject the same combinations with the same message.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from jaxtrain.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULERS = ("none", "step", "multistep", "exponential", "cosine")
LOSSES = ("cross_entropy", "nll", "mse")
MODELS = ("mlp", "mlp_bn_dropout")

# each optimizer's and scheduler's arguments, torch's names
OPTIMIZER_ARGS = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "adamw": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
}
SCHEDULER_ARGS = {"step": ("step_size", "gamma"), "multistep": ("milestones", "gamma"),
                  "exponential": ("gamma",), "cosine": ("t_max", "eta_min")}
# torch.optim's defaults where they depend on the optimizer.
DEFAULT_EPS = {"sgd": 0.0, "adam": 1e-8, "adamw": 1e-8, "rmsprop": 1e-8, "adagrad": 1e-10}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2}


@dataclasses.dataclass
class Config:
    # the tutorial's hyperparameters
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    model: str = "mlp"
    dropout: float = 0.2
    loss: str = "cross_entropy"
    mse_reduction: str = "mean"
    init: str = "torch"
    seed: int = 0
    shuffle: bool = False
    dtype: str = "float32"
    # optimizer (torch.optim names and defaults)
    optimizer: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 0.0
    alpha: float = 0.99
    centered: bool = False
    amsgrad: bool = False
    lr_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    # scheduler, stepped once per epoch as in torch
    scheduler: str = "none"
    step_size: int = 1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    t_max: int = 0
    eta_min: float = 0.0
    # data
    data_source: str = "idx"
    tfds_name: str = "fashion_mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    # reliability
    nan_guard: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    keep: int = 3
    resume: bool = False
    # data parallel (jaxtrain train; torchref reads torchrun's environment)
    devices: int = 1
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    # output
    metrics_out: str | None = None
    quiet: bool = False
    progress: bool = False

    def optimizer_kwargs(self) -> dict:
        """The torch.optim keyword arguments of this config's optimizer (torch's names)."""
        return {name: getattr(self, name) for name in OPTIMIZER_ARGS[self.optimizer]}

    def scheduler_kwargs(self) -> dict:
        """The jaxtrain scheduler arguments of this config's scheduler (T_max spelled t_max)."""
        return {name: getattr(self, name) for name in SCHEDULER_ARGS.get(self.scheduler, ())}

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"], out["milestones"] = list(self.betas), list(self.milestones)
        return out


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """'3,6' -> (3, 6), for argparse."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,6, got {text!r}") from None


def _milestones(text: str) -> tuple[int, ...]:
    values = int_list(text)
    if list(values) != sorted(values):
        raise argparse.ArgumentTypeError("milestones must be increasing")
    return values


def add_train_flags(parser: argparse.ArgumentParser, dtypes=("float32", "float64"), default_dtype="float32") -> None:
    """The flags of a training run, named as the torch objects name them."""
    d = Config()
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=d.epochs)
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (default 1e-3)")
    g.add_argument("--model", choices=MODELS, default=d.model)
    g.add_argument("--dropout", type=float, default=d.dropout, help="drop probability of mlp_bn_dropout")
    g.add_argument("--loss", choices=LOSSES, default=d.loss)
    g.add_argument("--mse-reduction", choices=("mean", "sum"), default=d.mse_reduction)
    g.add_argument("--init", choices=("torch", "flax"), default=d.init,
                   help="torch: nn.Linear's U(±1/sqrt(fan_in)); flax: Flax's defaults")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--shuffle", action="store_true", help="seeded shuffle each epoch (default: fixed order)")
    g.add_argument("--dtype", choices=dtypes, default=default_dtype)
    o = parser.add_argument_group("optimizer (torch.optim semantics)")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    o.add_argument("--momentum", type=float, default=d.momentum)
    o.add_argument("--dampening", type=float, default=d.dampening)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=None, help="default 0 (AdamW: 0.01)")
    o.add_argument("--betas", type=float, nargs=2, default=d.betas, metavar=("B1", "B2"))
    o.add_argument("--eps", type=float, default=None, help="default as torch.optim (1e-8; Adagrad 1e-10)")
    o.add_argument("--alpha", type=float, default=d.alpha, help="RMSprop smoothing constant")
    o.add_argument("--centered", action="store_true")
    o.add_argument("--amsgrad", action="store_true")
    o.add_argument("--lr-decay", type=float, default=d.lr_decay, help="Adagrad")
    o.add_argument("--initial-accumulator-value", type=float, default=d.initial_accumulator_value)
    s = parser.add_argument_group("scheduler (stepped once per epoch)")
    s.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler)
    s.add_argument("--step-size", type=positive_int, default=d.step_size, help="StepLR")
    s.add_argument("--milestones", type=_milestones, default=d.milestones, help="MultiStepLR, e.g. 3,6")
    s.add_argument("--gamma", type=float, default=d.gamma)
    s.add_argument("--t-max", type=positive_int, default=None, help="CosineAnnealingLR (default: --epochs)")
    s.add_argument("--eta-min", type=float, default=d.eta_min)
    a = parser.add_argument_group("data")
    a.add_argument("--data-source", choices=("idx", "tfds"), default=d.data_source)
    a.add_argument("--tfds-name", default=d.tfds_name)
    a.add_argument("--data-dir", default=None)
    a.add_argument("--train-limit", type=positive_int, default=None, metavar="N")
    a.add_argument("--test-limit", type=positive_int, default=None, metavar="N")
    r = parser.add_argument_group("checkpoints")
    r.add_argument("--checkpoint-dir", default=None, metavar="DIR", help="save the full train state here")
    r.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every, metavar="N",
                   help="epochs between checkpoints (default 1)")
    r.add_argument("--keep", type=positive_int, default=d.keep, help="checkpoints to keep (default 3)")
    r.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir")
    r.add_argument("--no-nan-guard", dest="nan_guard", action="store_false",
                   help="keep training when the loss becomes NaN/Inf")
    out = parser.add_argument_group("output")
    out.add_argument("--metrics-out", default=None, metavar="PATH")
    out.add_argument("--quiet", action="store_true")
    out.add_argument("--progress", action="store_true", help="show a tqdm progress bar")


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Data-parallel flags of `jaxtrain train` (see jaxtrain.distributed)."""
    p = parser.add_argument_group("data parallel (--batch-size is the global batch)")
    p.add_argument("--devices", type=positive_int, default=1, metavar="N",
                   help="split each batch over N devices of this process (CPU: N virtual devices)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="join a multi-process run (jax.distributed); 'auto': JAX's cluster detection (SLURM, ...)")
    p.add_argument("--num-processes", type=positive_int, default=None, metavar="N")
    p.add_argument("--process-id", type=int, default=None, metavar="I")


def config_from_args(args: argparse.Namespace) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if values.get("dtype") == "both":
        values["dtype"] = "float32"
    values["betas"] = tuple(values["betas"])
    return make_config(**values)


def make_config(**values) -> Config:
    """A validated Config; what is not given takes torch.optim's default for the chosen optimizer
    (eps, weight_decay) and CosineAnnealingLR's T_max = the run's epochs."""
    d = Config()
    opt = values.get("optimizer", d.optimizer)
    if values.get("eps") is None:
        values["eps"] = DEFAULT_EPS[opt]
    if values.get("weight_decay") is None:
        values["weight_decay"] = DEFAULT_WEIGHT_DECAY.get(opt, 0.0)
    if values.get("t_max") is None:  # CosineAnnealingLR's T_max defaults to the run's length
        values["t_max"] = values.get("epochs", d.epochs) if values.get("scheduler") == "cosine" else 0
    config = Config(**values)
    validate(config)
    return config


def validate(c: Config) -> None:
    """Reject what torch.optim / torch.nn reject, with the same wording in both CLIs."""

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for name in ("lr", "momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay",
                 "initial_accumulator_value", "gamma", "eta_min", "dropout"):
        check(math.isfinite(getattr(c, name)), f"--{name.replace('_', '-')} must be a finite number")
    check(c.lr > 0, f"--lr must be > 0, got {c.lr}")
    check(c.momentum >= 0, f"invalid momentum value: {c.momentum} (must be >= 0)")
    check(c.weight_decay >= 0, f"invalid weight_decay value: {c.weight_decay} (must be >= 0)")
    check(c.eps >= 0, f"invalid epsilon value: {c.eps} (must be >= 0)")
    check(all(0.0 <= b < 1.0 for b in c.betas), f"invalid beta parameters {c.betas}: each must be in [0, 1)")
    check(c.alpha >= 0, f"invalid alpha value: {c.alpha} (must be >= 0)")
    check(c.lr_decay >= 0, f"invalid lr_decay value: {c.lr_decay} (must be >= 0)")
    check(c.initial_accumulator_value >= 0,
          f"invalid initial_accumulator_value: {c.initial_accumulator_value} (must be >= 0)")
    check(0.0 <= c.dropout < 1.0, f"--dropout must be in [0, 1), got {c.dropout}")
    check(c.gamma > 0, f"--gamma must be > 0, got {c.gamma}")
    if c.nesterov:
        check(c.optimizer == "sgd", "--nesterov applies to --optimizer sgd only")
        check(c.momentum > 0 and c.dampening == 0, "Nesterov momentum requires a momentum and zero dampening")
    if c.optimizer != "sgd":
        check(c.dampening == 0, "--dampening applies to --optimizer sgd only")
    if c.optimizer not in ("sgd", "rmsprop"):
        check(c.momentum == 0, f"--momentum does not apply to --optimizer {c.optimizer}")
    check(not c.amsgrad or c.optimizer in ("adam", "adamw"), "--amsgrad applies to adam and adamw only")
    check(not c.centered or c.optimizer == "rmsprop", "--centered applies to --optimizer rmsprop only")
    check(not c.resume or c.checkpoint_dir is not None, "--resume needs --checkpoint-dir")
    from jaxtrain.distributed import check_flags

    check_flags(c.devices, c.coordinator, c.num_processes, c.process_id)
    if c.scheduler == "multistep":
        check(len(c.milestones) > 0, "--scheduler multistep needs --milestones, e.g. --milestones 3,6")


def exit_on_user_error(fn):
    """Run a CLI entry point; a UserError becomes one stderr line and its exit code."""
    from jaxtrain.errors import DivergedError, Interrupted, PeerLost, UserError

    def wrapper(argv=None):
        import os

        prog = fn.__module__.split(".")[0]
        if prog == "__main__":  # an example script
            prog = os.path.basename(sys.argv[0])
        try:
            return fn(argv)
        except (UserError, DivergedError, Interrupted, PeerLost) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130

    return wrapper
