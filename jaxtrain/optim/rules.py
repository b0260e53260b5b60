"""torch.optim's update rules, one small function pair per torch optimizer class.

Every torch optimizer but LBFGS updates each parameter tensor on its own, from its
gradient, its value, its per-tensor state and the group's hyperparameters at this
step. A rule here is that per-tensor step, written op for op after torch's
single-tensor implementation (`torch/optim/<name>.py`, `_single_tensor_<name>`):

    init(p, h)          -> the tensor's state (a dict of arrays)
    update(g, p, s, h)  -> (the additive update, the new state)

`h` holds the group's hyperparameters at this step under torch's names, plus
`step`, the 1-based step count (torch's `state["step"]`). Scalar arithmetic on
hyperparameters is done at the highest float precision in use (Python floats in
torch); `_pow1m` keeps `1 - beta**t` accurate in float32 too. `maximize` is handled
once, in `transform`, as torch does first in every rule.

`transform(name, **hyper)` wraps a rule as an optax GradientTransformation; a
hyperparameter may be a constant, a function of the 0-based update count (a
schedule), or a `Held` value kept in the state (ReduceLROnPlateau's lr).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

RULES: dict[str, "Rule"] = {}


class Rule(NamedTuple):
    init: Callable
    update: Callable


def rule(name: str, init: Callable):
    """Register `update` as the rule of torch.optim.<name>, with its state made by `init`."""

    def register(update):
        RULES[name] = Rule(init, update)
        return update

    return register


def _zeros(*names):
    return lambda p, h: {n: jnp.zeros_like(p) for n in names}


def _pow1m(beta, t):
    """1 - beta**t, accurate in float32 as well (torch computes it in float64)."""
    return -jnp.expm1(t * jnp.log(beta))


def _l2(g, p, h):
    """torch's coupled weight decay: grad + weight_decay * param."""
    return g + h["weight_decay"] * p if h.get("weight_decay", 0) else g


def _decay(g, p, h, decoupled: bool):
    """Adam-family weight decay: decoupled (param *= 1 - lr * wd) as an update, or L2 on the gradient."""
    if not h.get("weight_decay", 0):
        return g, 0.0
    if decoupled:
        return g, -h["lr"] * h["weight_decay"] * p
    return g + h["weight_decay"] * p, 0.0


# --------------------------------------------------------------------------- rules


@rule("SGD", init=_zeros("momentum_buffer"))
def sgd(g, p, s, h):
    """buf = g at step 1, then momentum * buf + (1 - dampening) * g; nesterov looks ahead."""
    g = _l2(g, p, h)
    momentum = h["momentum"]
    if not isinstance(momentum, jax.Array) and momentum == 0:  # no buffer, as torch keeps none
        return -h["lr"] * g, s
    buf = jnp.where(h["step"] == 1, g, momentum * s["momentum_buffer"] + (1 - h["dampening"]) * g)
    d = g + momentum * buf if h["nesterov"] else buf
    return -h["lr"] * d, {"momentum_buffer": buf}


def _adam_init(p, h):
    s = {"exp_avg": jnp.zeros_like(p), "exp_avg_sq": jnp.zeros_like(p)}
    if h["amsgrad"]:
        s["max_exp_avg_sq"] = jnp.zeros_like(p)
    return s


@rule("Adam", init=_adam_init)
def adam(g, p, s, h, decoupled=None):
    """m/bc1 / (sqrt(v)/sqrt(bc2) + eps); AMSGrad keeps the max of the raw v."""
    beta1, beta2 = h["betas"]
    g, decay = _decay(g, p, h, h.get("decoupled_weight_decay", False) if decoupled is None else decoupled)
    m = s["exp_avg"] + (1 - beta1) * (g - s["exp_avg"])
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    if h["amsgrad"]:
        v = new["max_exp_avg_sq"] = jnp.maximum(s["max_exp_avg_sq"], v)
    t = h["step"]
    denom = jnp.sqrt(v) / jnp.sqrt(_pow1m(beta2, t)) + h["eps"]
    return decay - (h["lr"] / _pow1m(beta1, t)) * m / denom, new


@rule("AdamW", init=_adam_init)
def adamw(g, p, s, h):
    """Adam with decoupled weight decay (torch's AdamW is Adam(decoupled_weight_decay=True))."""
    return adam(g, p, s, h, decoupled=True)


@rule("Adamax", init=_zeros("exp_avg", "exp_inf"))
def adamax(g, p, s, h):
    """u = max(beta2 * u, |g| + eps); param -= lr / bc1 * m / u."""
    beta1, beta2 = h["betas"]
    g = _l2(g, p, h)
    m = s["exp_avg"] + (1 - beta1) * (g - s["exp_avg"])
    u = jnp.maximum(s["exp_inf"] * beta2, jnp.abs(g) + h["eps"])
    return -(h["lr"] / _pow1m(beta1, h["step"])) * m / u, {"exp_avg": m, "exp_inf": u}


def _nadam_init(p, h):
    # torch keeps mu_product as a float32 scalar tensor (torch's default dtype), whatever the parameter's
    return {"exp_avg": jnp.zeros_like(p), "exp_avg_sq": jnp.zeros_like(p), "mu_product": jnp.ones([], jnp.float32)}


@rule("NAdam", init=_nadam_init)
def nadam(g, p, s, h):
    """Adam with Nesterov momentum and the momentum_decay warmup of mu_t."""
    beta1, beta2 = h["betas"]
    t = h["step"]
    g, decay = _decay(g, p, h, h["decoupled_weight_decay"])
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * h["momentum_decay"]))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * h["momentum_decay"]))
    mu_product = s["mu_product"] * jnp.asarray(mu, jnp.float32)
    prod = mu_product.astype(jnp.result_type(float))
    m = s["exp_avg"] + (1 - beta1) * (g - s["exp_avg"])
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    denom = jnp.sqrt(v / _pow1m(beta2, t)) + h["eps"]
    update = (-h["lr"] * (1.0 - mu) / (1.0 - prod)) * g / denom
    update = update + (-h["lr"] * mu_next / (1.0 - prod * mu_next)) * m / denom
    return decay + update, {"exp_avg": m, "exp_avg_sq": v, "mu_product": mu_product}


@rule("RAdam", init=_zeros("exp_avg", "exp_avg_sq"))
def radam(g, p, s, h):
    """Adam whose adaptive term is switched on (rectified) once the variance estimate is tractable."""
    beta1, beta2 = h["betas"]
    t = h["step"]
    g, decay = _decay(g, p, h, h["decoupled_weight_decay"])
    m = s["exp_avg"] + (1 - beta1) * (g - s["exp_avg"])
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    bc2 = _pow1m(beta2, t)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / bc2
    rect = jnp.sqrt(jnp.maximum((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t), 0))
    adaptive = jnp.sqrt(bc2) / (jnp.sqrt(v) + h["eps"])
    corrected = m / _pow1m(beta1, t)
    update = jnp.where(rho_t > 5.0, corrected * h["lr"] * adaptive * rect, corrected * h["lr"])
    return decay - update, {"exp_avg": m, "exp_avg_sq": v}


@rule("Adadelta", init=_zeros("square_avg", "acc_delta"))
def adadelta(g, p, s, h):
    """delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g; param -= lr * delta."""
    rho, eps = h["rho"], h["eps"]
    g = _l2(g, p, h)
    square_avg = s["square_avg"] * rho + (1 - rho) * g * g
    delta = jnp.sqrt(s["acc_delta"] + eps) / jnp.sqrt(square_avg + eps) * g
    acc_delta = s["acc_delta"] * rho + (1 - rho) * delta * delta
    return -h["lr"] * delta, {"square_avg": square_avg, "acc_delta": acc_delta}


@rule("Adagrad", init=lambda p, h: {"sum": jnp.full_like(p, h["initial_accumulator_value"])})
def adagrad(g, p, s, h):
    """param -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum g^2) + eps)."""
    g = _l2(g, p, h)
    total = s["sum"] + g * g
    clr = h["lr"] / (1 + (h["step"] - 1) * h["lr_decay"])
    return -clr * g / (jnp.sqrt(total) + h["eps"]), {"sum": total}


def _rmsprop_init(p, h):
    names = ["square_avg"] + ["momentum_buffer"] * bool(h["momentum"]) + ["grad_avg"] * bool(h["centered"])
    return {n: jnp.zeros_like(p) for n in names}


@rule("RMSprop", init=_rmsprop_init)
def rmsprop(g, p, s, h):
    """g / (sqrt(v) + eps), centered: sqrt(v - mean(g)^2); momentum before the lr."""
    alpha = h["alpha"]
    g = _l2(g, p, h)
    new = {"square_avg": s["square_avg"] * alpha + (1 - alpha) * g * g}
    if h["centered"]:
        new["grad_avg"] = s["grad_avg"] + (1 - alpha) * (g - s["grad_avg"])
        avg = jnp.sqrt(new["square_avg"] - new["grad_avg"] * new["grad_avg"]) + h["eps"]
    else:
        avg = jnp.sqrt(new["square_avg"]) + h["eps"]
    if "momentum_buffer" in s:
        new["momentum_buffer"] = s["momentum_buffer"] * h["momentum"] + g / avg
        return -h["lr"] * new["momentum_buffer"], new
    return -h["lr"] * g / avg, new


# --------------------------------------------------------------------------- the optax wrapper


class Held(NamedTuple):
    """A hyperparameter kept in the optimizer state: `init()` its state, `read(state)` its value."""

    init: Callable[[], Any]
    read: Callable[[Any], Any]


class RuleState(NamedTuple):
    count: jax.Array  # updates done so far
    held: dict  # state of the Held hyperparameters
    tensors: list  # one state dict per parameter tensor, in leaf order


def _scalar(x):
    """A traced hyperparameter at the highest float precision in use (Python floats stay as they are)."""
    return x.astype(jnp.result_type(float)) if isinstance(x, jax.Array) else x


def _values(hyper: dict, count, held: dict) -> dict:
    h = {}
    for k, v in hyper.items():
        if isinstance(v, Held):
            h[k] = _scalar(v.read(held[k]))
        elif callable(v):
            h[k] = _scalar(jnp.asarray(v(count)))
        else:
            h[k] = v
    h["step"] = (count + 1).astype(jnp.result_type(float))
    return h


def transform(name: str, **hyper) -> optax.GradientTransformation:
    """The optax twin of torch.optim.<name> with these (torch-named) hyperparameters."""
    r = RULES[name]

    def init_fn(params):
        held = {k: v.init() for k, v in hyper.items() if isinstance(v, Held)}
        h = _values(hyper, jnp.zeros([], jnp.int32), held)
        return RuleState(jnp.zeros([], jnp.int32), held, [r.init(p, h) for p in jax.tree.leaves(params)])

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"torch.optim.{name}'s twin needs the parameters: tx.update(grads, state, params)")
        h = _values(hyper, state.count, state.held)
        leaves, treedef = jax.tree.flatten(updates)
        new_updates, new_tensors = [], []
        for g, p, s in zip(leaves, treedef.flatten_up_to(params), state.tensors):
            g = -g if h.get("maximize") else g
            u, new = r.update(g, p, s, h)
            # scalars computed at higher precision meet the tensor in its dtype, as torch's Python floats do
            new_updates.append(jnp.asarray(u).astype(g.dtype))
            new_tensors.append(jax.tree.map(lambda n, o: n.astype(o.dtype), new, s))
        return treedef.unflatten(new_updates), RuleState(state.count + 1, state.held, new_tensors)

    return optax.GradientTransformation(init_fn, update_fn)

