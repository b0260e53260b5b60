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

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adamax", "nadam", "radam", "adadelta", "rprop", "asgd",
              "adafactor")
SCHEDULERS = ("none", "step", "multistep", "exponential", "cosine", "constant", "linear", "polynomial",
              "cosine_restarts", "cyclic", "onecycle", "plateau")
LOSSES = ("cross_entropy", "nll", "mse")
MODELS = ("mlp", "mlp_bn_dropout")

# each optimizer's and scheduler's arguments, torch's names
OPTIMIZER_ARGS = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "adamw": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    "adamax": ("lr", "betas", "eps", "weight_decay"),
    "nadam": ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay"),
    "radam": ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay"),
    "adadelta": ("lr", "rho", "eps", "weight_decay"),
    "rprop": ("lr", "etas", "step_sizes"),
    "asgd": ("lr", "lambd", "alpha", "t0", "weight_decay"),
    "adafactor": ("lr", "beta2_decay", "eps", "d", "weight_decay"),
}
# each scheduler's arguments, jaxtrain's field names (torchref.optim spells them as torch does)
SCHEDULER_ARGS = {"step": ("step_size", "gamma"), "multistep": ("milestones", "gamma"),
                  "exponential": ("gamma",), "cosine": ("t_max", "eta_min"),
                  "constant": ("factor", "total_iters"), "linear": ("start_factor", "end_factor", "total_iters"),
                  "polynomial": ("total_iters", "power"), "cosine_restarts": ("t_0", "t_mult", "eta_min"),
                  "cyclic": ("base_lr", "max_lr", "step_size_up", "step_size_down", "cyclic_mode", "gamma",
                             "cycle_momentum", "base_momentum", "max_momentum"),
                  "onecycle": ("max_lr", "pct_start", "anneal_strategy", "cycle_momentum", "base_momentum",
                               "max_momentum", "div_factor", "final_div_factor", "three_phase"),
                  "plateau": ("factor", "patience", "threshold", "cooldown", "min_lr")}
# torch.optim's defaults where they depend on the optimizer or scheduler.
DEFAULT_EPS = {"sgd": 0.0, "adam": 1e-8, "adamw": 1e-8, "rmsprop": 1e-8, "adagrad": 1e-10, "adamax": 1e-8,
               "nadam": 1e-8, "radam": 1e-8, "adadelta": 1e-6, "rprop": 0.0, "asgd": 0.0, "adafactor": 1e-3}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2}
DEFAULT_ALPHA = {"asgd": 0.75}  # RMSprop's 0.99 otherwise
DEFAULT_FACTOR = {"plateau": 0.1}  # ConstantLR's 1/3 otherwise
DEFAULT_MOMENTA = {"cyclic": (0.8, 0.9)}  # OneCycleLR's (0.85, 0.95) otherwise
NO_DECAY_KINDS = ("bias", "norm")


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
    label_smoothing: float = 0.0
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
    rho: float = 0.9
    momentum_decay: float = 4e-3
    decoupled_weight_decay: bool = False
    etas: tuple[float, float] = (0.5, 1.2)
    step_sizes: tuple[float, float] = (1e-6, 50.0)
    lambd: float = 1e-4
    t0: float = 1e6
    beta2_decay: float = -0.8
    d: float = 1.0
    # scheduler (torch.optim.lr_scheduler), stepped once per epoch or after every batch
    scheduler: str = "none"
    scheduler_interval: str = "epoch"
    step_size: int = 1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    t_max: int = 0
    eta_min: float = 0.0
    factor: float = 1 / 3
    total_iters: int = 5
    start_factor: float = 1 / 3
    end_factor: float = 1.0
    power: float = 1.0
    t_0: int = 1
    t_mult: int = 1
    base_lr: float | None = None  # CyclicLR: default --lr
    max_lr: float | None = None  # CyclicLR, OneCycleLR: default --lr
    step_size_up: int = 2000
    step_size_down: int | None = None
    cyclic_mode: str = "triangular"
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    patience: int = 10
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0
    # the loop between backward() and step()
    clip_grad_norm: float | None = None
    accumulate: int = 1
    no_decay_on: tuple[str, ...] = ()
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

    def torch_optimizer_kwargs(self) -> dict:
        """optimizer_kwargs as torch takes them: Adafactor's eps is (eps1, eps2), eps1 None by default."""
        kwargs = self.optimizer_kwargs()
        if self.optimizer == "adafactor":
            kwargs["eps"] = (None, self.eps)
        return kwargs

    def scheduler_kwargs(self) -> dict:
        """The jaxtrain scheduler arguments of this config's scheduler (T_max spelled t_max)."""
        return {name: getattr(self, name) for name in SCHEDULER_ARGS.get(self.scheduler, ())}

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, values: dict) -> "Config":
        tuples = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in values.items()})


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


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    wrong = [k for k in kinds if k not in NO_DECAY_KINDS]
    if wrong or not kinds:
        raise argparse.ArgumentTypeError(f"expected bias, norm or bias,norm, got {text!r}")
    return kinds


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
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="nn.CrossEntropyLoss(label_smoothing=...) (cross_entropy only)")
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
    o.add_argument("--rho", type=float, default=d.rho, help="Adadelta")
    o.add_argument("--momentum-decay", type=float, default=d.momentum_decay, help="NAdam")
    o.add_argument("--decoupled-weight-decay", action="store_true", help="NAdam, RAdam: AdamW-style decay")
    o.add_argument("--etas", type=float, nargs=2, default=d.etas, metavar=("MINUS", "PLUS"), help="Rprop")
    o.add_argument("--step-sizes", type=float, nargs=2, default=d.step_sizes, metavar=("MIN", "MAX"), help="Rprop")
    o.add_argument("--lambd", type=float, default=d.lambd, help="ASGD decay term")
    o.add_argument("--t0", type=float, default=d.t0, help="ASGD: the step averaging starts at")
    o.add_argument("--beta2-decay", type=float, default=d.beta2_decay, help="Adafactor")
    o.add_argument("--d", type=float, default=d.d, help="Adafactor clipping threshold")
    o.add_argument("--no-decay-on", type=_kinds, default=d.no_decay_on, metavar="bias,norm",
                   help="no weight decay on biases and/or normalisation layers' weights (a second param group)")
    o.add_argument("--clip-grad-norm", type=float, default=None, metavar="MAX_NORM",
                   help="torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM) before each step")
    o.add_argument("--accumulate", type=positive_int, default=d.accumulate, metavar="N",
                   help="N batches per optimizer step (each batch's loss / N, as torch users write it)")
    s = parser.add_argument_group("scheduler (torch.optim.lr_scheduler; see README for each one's flags)")
    s.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler)
    s.add_argument("--scheduler-interval", choices=("epoch", "step"), default=d.scheduler_interval,
                   help="scheduler.step() after every epoch (default) or after every optimizer step")
    s.add_argument("--step-size", type=positive_int, default=d.step_size, help="StepLR")
    s.add_argument("--milestones", type=_milestones, default=d.milestones, help="MultiStepLR, e.g. 3,6")
    s.add_argument("--gamma", type=float, default=d.gamma)
    s.add_argument("--t-max", type=positive_int, default=None, help="CosineAnnealingLR (default: --epochs)")
    s.add_argument("--eta-min", type=float, default=d.eta_min)
    s.add_argument("--factor", type=float, default=None, help="ConstantLR (1/3), ReduceLROnPlateau (0.1)")
    s.add_argument("--total-iters", type=positive_int, default=d.total_iters, help="ConstantLR, LinearLR, PolynomialLR")
    s.add_argument("--start-factor", type=float, default=d.start_factor, help="LinearLR")
    s.add_argument("--end-factor", type=float, default=d.end_factor, help="LinearLR")
    s.add_argument("--power", type=float, default=d.power, help="PolynomialLR")
    s.add_argument("--t-0", type=positive_int, default=d.t_0, help="CosineAnnealingWarmRestarts")
    s.add_argument("--t-mult", type=positive_int, default=d.t_mult, help="CosineAnnealingWarmRestarts")
    s.add_argument("--base-lr", type=float, default=None, help="CyclicLR (default --lr)")
    s.add_argument("--max-lr", type=float, default=None, help="CyclicLR, OneCycleLR (default --lr)")
    s.add_argument("--step-size-up", type=positive_int, default=d.step_size_up, help="CyclicLR")
    s.add_argument("--step-size-down", type=positive_int, default=None, help="CyclicLR")
    s.add_argument("--cyclic-mode", choices=("triangular", "triangular2", "exp_range"), default=d.cyclic_mode)
    s.add_argument("--no-cycle-momentum", dest="cycle_momentum", action="store_false",
                   help="CyclicLR, OneCycleLR: leave momentum / beta1 alone")
    s.add_argument("--base-momentum", type=float, default=None, help="CyclicLR (0.8), OneCycleLR (0.85)")
    s.add_argument("--max-momentum", type=float, default=None, help="CyclicLR (0.9), OneCycleLR (0.95)")
    s.add_argument("--pct-start", type=float, default=d.pct_start, help="OneCycleLR")
    s.add_argument("--anneal-strategy", choices=("cos", "linear"), default=d.anneal_strategy, help="OneCycleLR")
    s.add_argument("--div-factor", type=float, default=d.div_factor, help="OneCycleLR")
    s.add_argument("--final-div-factor", type=float, default=d.final_div_factor, help="OneCycleLR")
    s.add_argument("--three-phase", action="store_true", help="OneCycleLR")
    s.add_argument("--patience", type=int, default=d.patience, help="ReduceLROnPlateau (on the epoch's test loss)")
    s.add_argument("--threshold", type=float, default=d.threshold, help="ReduceLROnPlateau")
    s.add_argument("--cooldown", type=int, default=d.cooldown, help="ReduceLROnPlateau")
    s.add_argument("--min-lr", type=float, default=d.min_lr, help="ReduceLROnPlateau")
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
    for name in ("betas", "etas", "step_sizes"):
        values[name] = tuple(values[name])
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
    sched = values.get("scheduler", d.scheduler)
    defaults = {"alpha": DEFAULT_ALPHA.get(opt, d.alpha), "factor": DEFAULT_FACTOR.get(sched, d.factor),
                "base_momentum": DEFAULT_MOMENTA.get(sched, (d.base_momentum, d.max_momentum))[0],
                "max_momentum": DEFAULT_MOMENTA.get(sched, (d.base_momentum, d.max_momentum))[1],
                **({"base_lr": values.get("lr", d.lr), "max_lr": values.get("lr", d.lr)}
                   if sched in ("cyclic", "onecycle") else {})}
    for name, value in defaults.items():
        if values.get(name) is None:
            values[name] = value
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
    for name in ("rho", "momentum_decay", "lambd", "t0", "beta2_decay", "d", "factor", "start_factor", "end_factor",
                 "power", "base_lr", "max_lr", "base_momentum", "max_momentum", "pct_start", "div_factor",
                 "final_div_factor", "threshold", "min_lr"):
        value = getattr(c, name)
        check(value is None or math.isfinite(value), f"--{name.replace('_', '-')} must be a finite number")
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
    _validate_loop(c, check)


def _validate_loop(c: Config, check) -> None:
    """The newer optimizers', schedulers' and loop flags: what torch rejects, said before anything runs."""
    check(0.0 <= c.label_smoothing <= 1.0, f"label_smoothing must be in [0, 1], got {c.label_smoothing}")
    check(not c.label_smoothing or c.loss == "cross_entropy", "--label-smoothing applies to --loss cross_entropy only")
    check(0.0 <= c.rho <= 1.0, f"invalid rho value: {c.rho} (must be in [0, 1])")
    check(0.0 < c.etas[0] < 1.0 < c.etas[1], f"invalid eta values: {c.etas} (need 0 < minus < 1 < plus)")
    check(0.0 < c.step_sizes[0] <= c.step_sizes[1], f"invalid step sizes: {c.step_sizes} (need 0 < min <= max)")
    check(c.momentum_decay >= 0, f"invalid momentum_decay value: {c.momentum_decay} (must be >= 0)")
    check(c.beta2_decay <= 0, f"beta2_decay should be <= 0 but is: {c.beta2_decay}")
    check(c.d >= 1.0, f"clipping threshold d should be >= 1 but is: {c.d}")
    check(not c.decoupled_weight_decay or c.optimizer in ("nadam", "radam"),
          "--decoupled-weight-decay applies to nadam and radam only (use adamw for Adam)")
    check(c.clip_grad_norm is None or (math.isfinite(c.clip_grad_norm) and c.clip_grad_norm > 0),
          f"--clip-grad-norm must be a finite number > 0, got {c.clip_grad_norm}")
    check(not c.no_decay_on or "weight_decay" in OPTIMIZER_ARGS[c.optimizer],
          f"--no-decay-on: --optimizer {c.optimizer} has no weight decay")
    check(0.0 < c.factor <= 1.0 if c.scheduler == "constant" else 0.0 < c.factor < 1.0 if c.scheduler == "plateau"
          else True, f"--factor must be in (0, 1] for constant, (0, 1) for plateau; got {c.factor}")
    check(0.0 < c.start_factor <= 1.0 and 0.0 <= c.end_factor <= 1.0,
          "--start-factor must be in (0, 1], --end-factor in [0, 1]")
    check(0.0 < c.pct_start < 1.0, f"--pct-start must be in (0, 1), got {c.pct_start}")
    check(c.scheduler not in ("cyclic", "onecycle") or (c.max_lr > 0 and c.base_lr > 0),
          "--max-lr and --base-lr must be > 0")
    check(c.patience >= 0 and c.cooldown >= 0, "--patience and --cooldown must be >= 0")
    check(c.scheduler != "plateau" or c.scheduler_interval == "epoch",
          "--scheduler plateau steps once per epoch on the test loss: --scheduler-interval epoch")
    if c.scheduler in ("cyclic", "onecycle") and c.cycle_momentum:
        check(c.optimizer in ("sgd", "rmsprop") or "betas" in OPTIMIZER_ARGS[c.optimizer],
              f"--scheduler {c.scheduler} cycles momentum, which --optimizer {c.optimizer} lacks: "
              "add --no-cycle-momentum")


def exit_on_user_error(fn):
    """Run a CLI entry point; a UserError becomes one stderr line and its exit code."""
    from jaxtrain.errors import DivergedError, InternalError, Interrupted, PeerLost, UserError

    def wrapper(argv=None):
        import os

        prog = fn.__module__.split(".")[0]
        if prog == "__main__":  # an example script
            prog = os.path.basename(sys.argv[0])
        try:
            return fn(argv)
        except (UserError, DivergedError, Interrupted, PeerLost, InternalError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130

    return wrapper
