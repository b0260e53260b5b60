"""torch.optim's update rules, one small function pair per torch optimizer class.

Every torch optimizer but LBFGS updates each parameter tensor on its own, from its
gradient, its value, its per-tensor state and the group's hyperparameters at this
step. A rule here is that per-tensor step, written op for op after torch's
single-tensor implementation (`torch/optim/<name>.py`, `_single_tensor_<name>`), its order of
operations included (`addcdiv_(a, b, value=-lr)` is `(a / b) * -lr`: with -lr * a first, a tiny
float32 gradient times lr flushes to zero on XLA's CPU where torch's quotient stays normal):

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

import math
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


def _log(beta):
    """log(beta) in float64 for a Python float (torch's hyperparameters are doubles: 0.999 rounded to
    float32 first would move 1 - beta by 1.3e-5), in the array's precision for a scheduled one."""
    return math.log(beta) if isinstance(beta, (int, float)) else jnp.log(beta)


def _pow(beta, t):
    """beta**t as torch computes it in float64, kept accurate in float32 runs."""
    return jnp.exp(t * _log(beta))


def _pow1m(beta, t):
    """1 - beta**t, accurate in float32 as well (torch computes it in float64)."""
    return -jnp.expm1(t * _log(beta))


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
    return decay + (m / denom) * (-h["lr"] / _pow1m(beta1, t)), new


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
    return (m / u) * (-h["lr"] / _pow1m(beta1, h["step"])), {"exp_avg": m, "exp_inf": u}


def _nadam_init(p, h):
    # torch keeps mu_product as a float32 scalar tensor (torch's default dtype), whatever the parameter's
    return {"exp_avg": jnp.zeros_like(p), "exp_avg_sq": jnp.zeros_like(p), "mu_product": jnp.ones([], jnp.float32)}


@rule("NAdam", init=_nadam_init)
def nadam(g, p, s, h):
    """Adam with Nesterov momentum and the momentum_decay warmup of mu_t."""
    beta1, beta2 = h["betas"]
    t = h["step"]
    g, decay = _decay(g, p, h, h["decoupled_weight_decay"])
    mu = beta1 * (1.0 - 0.5 * _pow(0.96, t * h["momentum_decay"]))
    mu_next = beta1 * (1.0 - 0.5 * _pow(0.96, (t + 1) * h["momentum_decay"]))
    mu_product = s["mu_product"] * jnp.asarray(mu, jnp.float32)
    prod = mu_product.astype(jnp.result_type(float))
    m = s["exp_avg"] + (1 - beta1) * (g - s["exp_avg"])
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    denom = jnp.sqrt(v / _pow1m(beta2, t)) + h["eps"]
    update = (g / denom) * (-h["lr"] * (1.0 - mu) / (1.0 - prod))
    update = update + (m / denom) * (-h["lr"] * mu_next / (1.0 - prod * mu_next))
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
    rho_t = rho_inf - 2 * t * _pow(beta2, t) / bc2
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
    return (g / (jnp.sqrt(total) + h["eps"])) * -clr, {"sum": total}


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
    return (g / avg) * -h["lr"], new


def _lerp(a, b, w):
    """torch.lerp: a + w (b - a), or b - (b - a)(1 - w) when |w| >= 0.5, as torch computes it."""
    if isinstance(w, jax.Array):
        return jnp.where(jnp.abs(w) < 0.5, a + w * (b - a), b - (b - a) * (1 - w))
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1 - w)


@rule("Rprop", init=lambda p, h: {"prev": jnp.zeros_like(p), "step_size": jnp.full_like(p, h["lr"])})
def rprop(g, p, s, h):
    """step_size *= etaplus/etaminus/1 as sign(g * prev) is +/-/0, clamped; param -= sign(g) * step_size."""
    etaminus, etaplus = h["etas"]
    step_size_min, step_size_max = h["step_sizes"]
    sign = jnp.sign(g * s["prev"])
    factor = jnp.where(sign > 0, etaplus, sign)
    factor = jnp.where(factor < 0, etaminus, factor)
    factor = jnp.where(factor == 0, 1, factor)
    step_size = jnp.clip(s["step_size"] * factor, step_size_min, step_size_max)
    g = jnp.where(factor == etaminus, 0, g)  # after a sign change: no step, and no sign change next time
    return -jnp.sign(g) * step_size, {"prev": g, "step_size": step_size}


def _asgd_init(p, h):
    # torch keeps eta, mu (and step) as float32 scalar tensors, whatever the parameter's dtype
    return {"eta": jnp.asarray(h["lr"]).astype(jnp.float32), "mu": jnp.ones([], jnp.float32), "ax": jnp.zeros_like(p)}


@rule("ASGD", init=_asgd_init)
def asgd(g, p, s, h):
    """param = param (1 - lambd eta) - eta g; ax averages param once t > t0; eta = lr / (1 + lambd lr t)^alpha."""
    eta, t, lr, lambd = s["eta"].astype(jnp.result_type(float)), h["step"], h["lr"], h["lambd"]
    g = _l2(g, p, h)
    new_p = p * (1 - lambd * eta) + (-eta) * g
    ax = jnp.where(s["mu"] != 1, s["ax"] + (new_p - s["ax"]) * s["mu"], new_p)
    new_eta = jnp.asarray(lr / ((1 + lambd * lr * t) ** h["alpha"])).astype(jnp.float32)
    new_mu = jnp.asarray(1 / jnp.maximum(1.0, t - h["t0"])).astype(jnp.float32)
    return new_p - p, {"eta": new_eta, "mu": new_mu, "ax": ax}


def _adafactor_init(p, h):
    if p.ndim > 1:  # factored: row and column means of g^2 over the last two dims
        *batch, rows, cols = p.shape
        return {"row_var": jnp.zeros((*batch, rows, 1), p.dtype), "col_var": jnp.zeros((*batch, 1, cols), p.dtype)}
    return {"variance": jnp.zeros_like(p)}


def _rsqrt(x):
    """torch's rsqrt, 1 / sqrt(x) rounded twice (XLA would fuse 1 / sqrt into its rsqrt, which rounds otherwise)."""
    return 1 / jax.lax.optimization_barrier(jnp.sqrt(x))


def _rms(x):
    """torch's x.norm(2).item() / x.numel() ** 0.5."""
    return jnp.sqrt(jnp.sum(x * x)).astype(jnp.result_type(float)) / x.size**0.5


@rule("Adafactor", init=_adafactor_init)
def adafactor(g, p, s, h):
    """param -= max(eps2, rms(param)) min(lr, t^-1/2) u / max(1, rms(u) / d), u = g / sqrt(v); v factored if >= 2-D."""
    eps1, eps2 = h["eps"]
    eps1 = float(jnp.finfo(p.dtype).eps) if eps1 is None else eps1  # torch: finfo(param.dtype).eps
    t, lr = h["step"], h["lr"]
    w = t ** h["beta2_decay"]  # 1 - beta2_t
    alpha = jnp.maximum(eps2, _rms(p)) * jnp.minimum(lr, 1 / t**0.5)
    decay = -lr * h["weight_decay"] * p if h["weight_decay"] else 0.0
    if p.ndim > 1:
        row_mean = jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True)) ** 2 / g.shape[-1]  # torch: norm, square_, div_
        col_mean = jnp.sqrt(jnp.sum(g * g, axis=-2, keepdims=True)) ** 2 / g.shape[-2]
        row_var, col_var = _lerp(s["row_var"], row_mean, w), _lerp(s["col_var"], col_mean, w)
        new = {"row_var": row_var, "col_var": col_var}
        var = (row_var @ col_var) / jnp.maximum(jnp.mean(row_var, axis=-2, keepdims=True), eps1)
    else:
        var = _lerp(s["variance"], g * g, w)
        new = {"variance": var}
    u = _rsqrt(jnp.maximum(var, eps1 * eps1)) * g
    return decay - (alpha / jnp.maximum(1.0, _rms(u) / h["d"])) * u, new


def _newton_schulz(x, coefficients, steps, eps):
    """torch's Muon orthogonalisation, in bfloat16 as torch does on every device: x -> a x + (b A + c A^2) x, A = x x^T.

    Each torch op rounds once to bfloat16 from float32 (CPU addmm: beta * C + alpha * A @ B accumulated in float32).
    Where torch's gemm orders a float32 sum otherwise than XLA (per CPU kind), a bfloat16 rounding flips now and
    then and spreads: the two agree as two bfloat16 evaluations of one iteration do (equal RMS error against the
    iteration in exact arithmetic), not bit for bit.
    """
    bf16, f32 = jnp.bfloat16, jnp.float32
    a, b, c = (jnp.asarray(v, f32) for v in coefficients)  # torch's addmm takes alpha and beta as float32 for bfloat16
    x = x.astype(f32).astype(bf16)  # torch's .bfloat16() of a float64 tensor goes through float32
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(f32)))).astype(bf16)
    x = (x.astype(f32) / jnp.maximum(norm.astype(f32), eps).astype(bf16).astype(f32)).astype(bf16)

    def mm(u, v):
        return jnp.matmul(u, v, preferred_element_type=f32)

    for _ in range(steps):
        gram = mm(x, x.T).astype(bf16)
        update = (b * gram.astype(f32) + c * mm(gram, gram)).astype(bf16)
        x = (a * x.astype(f32) + mm(update, x)).astype(bf16)
    return x.T if tall else x


@rule("Muon", init=_zeros("momentum_buffer"))
def muon(g, p, s, h):
    """buf = lerp(buf, g, 1 - mu); param *= 1 - lr wd; param -= adjusted lr * NS(nesterov ? lerp(g, buf, mu) : buf)."""
    if p.ndim != 2:
        raise ValueError(f"torch.optim.Muon updates 2-D parameters only, got shape {p.shape}")
    momentum, lr = h["momentum"], h["lr"]
    buf = _lerp(s["momentum_buffer"], g, 1 - momentum)
    update = _lerp(g, buf, momentum) if h["nesterov"] else buf
    update = _newton_schulz(update, h["ns_coefficients"], h["ns_steps"], h["eps"]).astype(p.dtype)
    rows, cols = p.shape
    if h["adjust_lr_fn"] in (None, "original"):
        ratio = math.sqrt(max(1, rows / cols))
    elif h["adjust_lr_fn"] == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    decay = -lr * h["weight_decay"] * p if h["weight_decay"] else 0.0
    return decay - (lr * ratio) * update, {"momentum_buffer": buf}


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

