"""torch.optim optimizers and schedulers from a config, as a torch user writes them (twin: jaxtrain/optim/)."""

import torch
from torch.optim import lr_scheduler

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad, "adamax": torch.optim.Adamax,
              "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam, "adadelta": torch.optim.Adadelta,
              "rprop": torch.optim.Rprop, "asgd": torch.optim.ASGD, "adafactor": torch.optim.Adafactor}
NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)


def no_decay(model, kinds) -> set:
    """Names of the parameters `--no-decay-on` names: biases, and/or every weight of a normalisation layer."""
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if ("bias" in kinds and name == "bias") or ("norm" in kinds and isinstance(module, NORMS)):
                names.add(f"{module_name}.{name}" if module_name else name)
    return names


def make_optimizer(config, model_or_params) -> torch.optim.Optimizer:
    """The config's optimizer over a model's parameters (or a list of tensors); with --no-decay-on,
    the usual two param groups: decayed weights, then the rest at weight_decay 0."""
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    if config.no_decay_on:
        skip = no_decay(model_or_params, config.no_decay_on)
        named = list(model_or_params.named_parameters())
        params = [{"params": [p for n, p in named if n not in skip]},
                  {"params": [p for n, p in named if n in skip], "weight_decay": 0.0}]
    return OPTIMIZERS[config.optimizer](params, **config.torch_optimizer_kwargs())


def _total_steps(config, steps_per_epoch):
    """OneCycleLR's total_steps: the scheduler steps a run makes (epochs, or optimizer steps)."""
    per_epoch = 1 if config.scheduler_interval == "epoch" else max(1, steps_per_epoch // config.accumulate)
    return config.epochs * per_epoch


SCHEDULERS = {
    "step": lambda c, o, spe: lr_scheduler.StepLR(o, step_size=c.step_size, gamma=c.gamma),
    "multistep": lambda c, o, spe: lr_scheduler.MultiStepLR(o, milestones=list(c.milestones), gamma=c.gamma),
    "exponential": lambda c, o, spe: lr_scheduler.ExponentialLR(o, gamma=c.gamma),
    "cosine": lambda c, o, spe: lr_scheduler.CosineAnnealingLR(o, T_max=c.t_max, eta_min=c.eta_min),
    "constant": lambda c, o, spe: lr_scheduler.ConstantLR(o, factor=c.factor, total_iters=c.total_iters),
    "linear": lambda c, o, spe: lr_scheduler.LinearLR(o, start_factor=c.start_factor, end_factor=c.end_factor,
                                                      total_iters=c.total_iters),
    "polynomial": lambda c, o, spe: lr_scheduler.PolynomialLR(o, total_iters=c.total_iters, power=c.power),
    "cosine_restarts": lambda c, o, spe: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=c.t_0, T_mult=c.t_mult,
                                                                                  eta_min=c.eta_min),
    "cyclic": lambda c, o, spe: lr_scheduler.CyclicLR(
        o, base_lr=c.base_lr, max_lr=c.max_lr, step_size_up=c.step_size_up, step_size_down=c.step_size_down,
        mode=c.cyclic_mode, gamma=c.gamma, cycle_momentum=c.cycle_momentum, base_momentum=c.base_momentum,
        max_momentum=c.max_momentum),
    "onecycle": lambda c, o, spe: lr_scheduler.OneCycleLR(
        o, max_lr=c.max_lr, total_steps=_total_steps(c, spe), pct_start=c.pct_start,
        anneal_strategy=c.anneal_strategy, cycle_momentum=c.cycle_momentum, base_momentum=c.base_momentum,
        max_momentum=c.max_momentum, div_factor=c.div_factor, final_div_factor=c.final_div_factor,
        three_phase=c.three_phase),
    "plateau": lambda c, o, spe: lr_scheduler.ReduceLROnPlateau(o, factor=c.factor, patience=c.patience,
                                                                threshold=c.threshold, cooldown=c.cooldown,
                                                                min_lr=c.min_lr),
}


def make_scheduler(config, optimizer, steps_per_epoch: int = 1):
    """The config's scheduler, or None. The loop steps it after each epoch (ReduceLROnPlateau: with the
    epoch's test loss) or, with --scheduler-interval step, after each optimizer step."""
    if config.scheduler == "none":
        return None
    return SCHEDULERS[config.scheduler](config, optimizer, steps_per_epoch)
