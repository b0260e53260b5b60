"""`jaxtrain parity`: prove that the JAX trainer follows the PyTorch reference, step by step.

Both frameworks start from the same weights (torch's init, seeded, copied into
Flax) and take the same batches from the shared plan, epoch by epoch; dropout
masks are drawn once in numpy and given to both. Then:

- float64: every step's loss agrees to <= 1e-10 relative (same math, so only
  float64 rounding may differ);
- float32: at every step |loss_jax32 - loss_torch32| <= 2 * g + 1e-6, where g is
  the largest |loss_torch32 - loss_torch64| seen so far in the same run (torch's
  own float32 rounding error), and every epoch's test accuracy agrees to within
  0.1 point.

On a failure the run is replayed up to the first failing step, capturing every
stage of every step (logits, loss, each parameter's gradient, each parameter's
update) in both frameworks; the first stage that differs by more than rounding
is reported, with the tensor and the size of the difference.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from jaxtrain import data as data_lib
from jaxtrain.metrics import append_epoch, new_record

FLOAT64_REL_TOL = 1e-10
FLOAT32_GAP_FACTOR, FLOAT32_ABS_TOL = 2.0, 1e-6
ACCURACY_TOL = 0.001  # 0.1 point, or twice torch's own float32-vs-float64 difference if larger
STAGES = ("logits", "loss", "grads", "updates")


def dropout_masks(config, step: int, batch_size: int) -> list[np.ndarray]:
    """Keep-masks for one step, drawn from (seed, step): both frameworks apply these."""
    from jaxtrain.models import dropout_shapes

    rng = np.random.default_rng([config.seed, 7919, step])
    return [rng.random(shape) >= config.dropout for shape in dropout_shapes(config, batch_size)]


# --------------------------------------------------------------------------- runners


class JaxRunner:
    """jaxtrain's Trainer on one dtype: whole scanned epochs, or train_step batch by batch."""

    def __init__(self, config, params, batch_stats, train: data_lib.Split, test: data_lib.Split, make_tx=None):
        import jax
        import jax.numpy as jnp

        from jaxtrain import train as train_lib

        self.jnp, self.jax = jnp, jax
        self.dtype = jnp.dtype(config.dtype)
        steps_per_epoch = -(-len(train) // config.batch_size)
        state = train_lib.create_state(config, steps_per_epoch, params=params, batch_stats=batch_stats)
        if make_tx is not None:  # the planted-bug test swaps the optimizer
            state = state.replace(tx=make_tx(config, steps_per_epoch))
            state = state.replace(opt_state=state.tx.init(state.params))
        self.trainer = train_lib.Trainer(config, train, test, state=state)
        self.step_fn = jax.jit(train_lib.train_step, donate_argnums=0)
        self.diagnose_fn = jax.jit(self._diagnose)
        self.losses: list = []
        self.seconds = 0.0

    @staticmethod
    def _diagnose(state, batch):
        import jax

        from jaxtrain.train import forward_and_grad

        loss, outputs, batch_stats, grads = forward_and_grad(state, batch)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        updates = jax.tree.map(lambda new, old: new - old, new_state.params, state.params)
        return new_state, {"logits": outputs, "loss": loss, "grads": grads, "updates": updates}

    def _batch(self, x, y, mask, masks):
        jnp = self.jnp
        batch = {"x": jnp.asarray(x.reshape(len(x), -1), self.dtype), "y": jnp.asarray(y),
                 "mask": jnp.asarray(mask, self.dtype)}
        if masks:
            batch["dropout"] = tuple(jnp.asarray(m) for m in masks)
        return batch

    def step(self, x, y, mask, masks, capture=False):
        start = time.perf_counter()
        batch = self._batch(x, y, mask, masks)
        trainer = self.trainer
        if capture:
            from jaxtrain.transfer import flax_to_torch

            trainer.state, out = self.diagnose_fn(trainer.state, batch)
            out = self.jax.device_get(out)
            size = int(mask.sum())
            return {"logits": out["logits"][:size], "loss": out["loss"],
                    "grads": flax_to_torch(out["grads"]), "updates": flax_to_torch(out["updates"])}
        trainer.state, metrics = self.step_fn(trainer.state, batch)
        self.losses.append(metrics["loss"])
        self.seconds += time.perf_counter() - start
        return None

    def scan_epoch(self, epoch: int):
        """A whole epoch in one `lax.scan` (the Trainer's compiled epoch), the same steps as `step`."""
        start = time.perf_counter()
        self.losses.append(self.trainer.train_one_epoch(epoch))
        self.seconds += time.perf_counter() - start

    def evaluate(self) -> tuple[float, float]:
        start = time.perf_counter()
        result = self.trainer.evaluate()
        self.seconds += time.perf_counter() - start
        return result

    def take_losses(self) -> np.ndarray:
        parts = [np.atleast_1d(np.asarray(x, np.float64)) for x in self.jax.device_get(self.losses)]
        self.losses = []
        return np.concatenate(parts)


class TorchRunner:
    """torchref's train_step/test_loop on one dtype, fed batch by batch; dropout via injected masks."""

    def __init__(self, config, initial_state_dict, test: data_lib.Split):
        import torch

        from torchref import train as torch_train
        from torchref.models import make_model

        self.torch, self.train_lib, self.config = torch, torch_train, config
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.device = torch_train.device()
        model = make_model(config)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in initial_state_dict.items()})
        self.model, self.loss_fn, self.optimizer, self.scheduler = torch_train.setup(config, model)
        self.test_loader = torch_train.make_dataloader(test, config, train=False)
        self.masks: list = []
        dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        for k, module in enumerate(dropouts):
            module.register_forward_hook(self._inject_mask(k))
        self.losses: list = []
        self.seconds = 0.0

    def _inject_mask(self, k):
        def hook(module, inputs, output):
            if not module.training:
                return output
            keep = self.torch.as_tensor(self.masks[k], device=self.device).to(self.dtype)
            return inputs[0] * (keep / (1 - module.p))  # what F.dropout computes, with our mask

        return hook

    def step(self, x, y, mask, masks, capture=False):
        torch = self.torch
        start = time.perf_counter()
        self.model.train()
        self.masks = masks
        X = torch.as_tensor(x, device=self.device).to(self.dtype).unsqueeze(1)
        Y = torch.as_tensor(y, device=self.device).long()
        out = {} if capture else None
        loss = self.train_lib.train_step(self.model, self.loss_fn, self.optimizer, X, Y, capture=out)
        if capture:
            as_np = lambda t: t.double().cpu().numpy()  # noqa: E731
            return {"logits": as_np(out["logits"]), "loss": float(loss),
                    "grads": {k: as_np(v) for k, v in out["grads"].items()},
                    "updates": {k: as_np(v) for k, v in out["updates"].items()}}
        self.losses.append(loss)
        self.seconds += time.perf_counter() - start
        return None

    def evaluate(self) -> tuple[float, float]:
        start = time.perf_counter()
        result = self.train_lib.test_loop(self.test_loader, self.model, self.loss_fn)
        self.seconds += time.perf_counter() - start
        return result

    def end_epoch(self):
        if self.scheduler is not None:
            self.scheduler.step()

    def take_losses(self) -> np.ndarray:
        losses, self.losses = self.torch.stack(self.losses).double().cpu().numpy(), []
        return losses


# --------------------------------------------------------------------------- trajectories


@dataclasses.dataclass
class Trajectory:
    record: dict
    losses: np.ndarray
    accuracies: list


def initial_weights(config) -> dict:
    """torch's seeded init (float32, as `torchref train` does), as numpy."""
    from torchref.models import make_model

    model = make_model(dataclasses.replace(config, dtype="float32"))
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _runners(config, dtypes, train, test, make_tx):
    """A JAX and a torch runner per dtype checked, plus torch float64 as float32's yardstick."""
    from jaxtrain.train import configure_jax
    from jaxtrain.transfer import torch_to_flax

    weights = initial_weights(config)
    wanted = [(fw, d) for d in dtypes for fw in ("jax", "torch")]
    if "float32" in dtypes and "float64" not in dtypes:
        wanted.append(("torch", "float64"))
    runners = {}
    for framework, dtype in wanted:
        cfg = dataclasses.replace(config, dtype=dtype)
        cast = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in weights.items()}
        if framework == "jax":
            configure_jax(dtype)
            params, stats = torch_to_flax(cast)
            runners[(framework, dtype)] = JaxRunner(cfg, params, stats, train, test, make_tx)
        else:
            runners[(framework, dtype)] = TorchRunner(cfg, cast, test)
    return runners


def _step_batches(config, train, plan, b, step):
    """Batch b of an epoch for both sides: torch gets the real rows, JAX the padded batch."""
    real = plan.index[b, : plan.sizes[b]]
    masks = dropout_masks(config, step, len(real))
    padded_masks = [np.pad(m, ((0, config.batch_size - len(real)), (0, 0)), constant_values=True) for m in masks]
    torch_batch = (train.images[real], train.labels[real], None, masks)
    jax_batch = (train.images[plan.index[b]], train.labels[plan.index[b]], plan.mask[b], padded_masks)
    return {"torch": torch_batch, "jax": jax_batch}


def run_epoch(runner, key, config, train, epoch, plan, num_steps, first_step):
    """`num_steps` steps of one epoch on one runner. The JAX side scans the whole epoch when it can:
    dropout masks are injected per step, so a model with dropout goes step by step."""
    from jaxtrain.models import dropout_shapes
    from jaxtrain.train import configure_jax

    if key[0] == "jax":
        configure_jax(key[1])
        if num_steps == len(plan) and not dropout_shapes(config, 1):
            return runner.scan_epoch(epoch)
    for b in range(num_steps):
        runner.step(*_step_batches(config, train, plan, b, first_step + b)[key[0]])


def run_trajectories(config, dtypes, train, test, max_steps=None, make_tx=None):
    """Train every (framework, dtype) on the same plan, epoch by epoch; evaluate after each epoch."""
    from jaxtrain.train import configure_jax

    runners = _runners(config, dtypes, train, test, make_tx)
    records = {key: new_record(key[0], dataclasses.replace(config, dtype=key[1]), _device(key[0]))
               for key in runners}
    step = 0
    for epoch in range(config.epochs):
        plan = data_lib.epoch_batches(len(train), config.batch_size, config.shuffle, config.seed, epoch)
        num_steps = len(plan) if max_steps is None else min(len(plan), max_steps - step)
        if num_steps <= 0:
            break
        for key, runner in runners.items():
            start = runner.seconds
            run_epoch(runner, key, config, train, epoch, plan, num_steps, step)
            if key[0] == "jax":
                configure_jax(key[1])
            losses = runner.take_losses()
            test_loss, accuracy = runner.evaluate()
            if key[0] == "torch":
                runner.end_epoch()
            record = records[key]
            append_epoch(record, epoch, losses, test_loss, accuracy, runner.seconds - start)
        step += num_steps
    return {key: Trajectory(rec, np.array([s["loss"] for s in rec["steps"]]),
                            [e["test_accuracy"] for e in rec["epochs"]]) for key, rec in records.items()}


def capture_stages(config, dtypes, train, test, until_step, make_tx=None) -> list[dict]:
    """Replay steps 1..until_step in lockstep, capturing every stage of every runner."""
    from jaxtrain.train import configure_jax

    runners = _runners(config, dtypes, train, test, make_tx)
    captured, step = [], 0
    for epoch in range(config.epochs):
        plan = data_lib.epoch_batches(len(train), config.batch_size, config.shuffle, config.seed, epoch)
        for b in range(len(plan)):
            if step >= until_step:
                return captured
            batches = _step_batches(config, train, plan, b, step)
            stages = {}
            for key, runner in runners.items():
                if key[0] == "jax":
                    configure_jax(key[1])
                stages[key] = runner.step(*batches[key[0]], capture=True)
            captured.append(stages)
            step += 1
        for key, runner in runners.items():
            if key[0] == "torch":
                runner.end_epoch()
    return captured


def _device(framework: str) -> str:
    if framework == "jax":
        from jaxtrain.train import device_kind
    else:
        from torchref.train import device_kind
    return device_kind()


# --------------------------------------------------------------------------- criteria


def loss_criterion(dtype: str, jax_loss, torch_loss, torch64_loss=None) -> np.ndarray:
    """Per step: True where JAX and torch agree (see module docstring)."""
    diff = np.abs(jax_loss - torch_loss)
    if dtype == "float64":
        return diff <= FLOAT64_REL_TOL * np.abs(torch_loss)
    own_gap = np.maximum.accumulate(np.abs(torch_loss - torch64_loss))
    return diff <= FLOAT32_GAP_FACTOR * own_gap + FLOAT32_ABS_TOL


def _stage_tolerance(dtype, reference, baseline):
    scale = float(np.max(np.abs(reference))) if np.size(reference) else 0.0
    if dtype == "float64":
        return FLOAT64_REL_TOL * max(scale, 1e-300)
    return 4.0 * baseline + 1e-5 * scale + 1e-12


def localise(config, dtype, train, test, failing_step, make_tx=None) -> dict:
    """Replay to `failing_step`; the first (step, stage, tensor) that differs beyond rounding."""
    captured = capture_stages(config, [dtype], train, test, failing_step, make_tx)
    worst = None
    for index, stages in enumerate(captured):
        jax_s, torch_s = stages[("jax", dtype)], stages[("torch", dtype)]
        base = stages.get(("torch", "float64")) if dtype == "float32" else None
        for stage in STAGES:
            if stage in ("grads", "updates"):
                tensors = [(name, jax_s[stage][name], torch_s[stage][name],
                            base[stage][name] if base else None) for name in torch_s[stage]]
            else:
                tensors = [(None, np.asarray(jax_s[stage]), np.asarray(torch_s[stage]),
                            np.asarray(base[stage]) if base else None)]
            for name, a, b, c in tensors:
                diff = float(np.max(np.abs(a - b))) if np.size(a) else 0.0
                baseline = float(np.max(np.abs(b - c))) if c is not None and np.size(b) else 0.0
                tolerance = _stage_tolerance(dtype, b, baseline)
                finding = {"step": index + 1, "stage": stage, "tensor": name, "max_abs_diff": diff,
                           "tolerance": tolerance}
                if diff > tolerance:
                    return finding
                if worst is None or diff / tolerance > worst["max_abs_diff"] / worst["tolerance"]:
                    worst = finding
    return {"step": failing_step, "stage": "loss", "tensor": None, "closest": worst,
            "note": "no single stage differs beyond rounding: rounding differences accumulated"}


def check_parity(config, dtypes=("float32", "float64"), train=None, test=None, max_steps=None,
                 make_tx: Callable | None = None, localise_failures: bool = True) -> dict:
    """Run both frameworks on the same plan and return the parity report (schema in README)."""
    trajectories = run_trajectories(config, list(dtypes), train, test, max_steps, make_tx)
    checks = []
    for dtype in dtypes:
        j, t = trajectories[("jax", dtype)], trajectories[("torch", dtype)]
        t64 = trajectories[("torch", "float64")].losses
        ok = loss_criterion(dtype, j.losses, t.losses, t64)
        t64_acc = trajectories[("torch", "float64")].accuracies
        acc_tol = [max(ACCURACY_TOL, 2 * abs(b - c) if dtype == "float32" else 0.0) + 1e-12
                   for b, c in zip(t.accuracies, t64_acc)]
        acc_ok = [abs(a - b) <= tol for a, b, tol in zip(j.accuracies, t.accuracies, acc_tol)]
        diff = np.abs(j.losses - t.losses)
        first_bad = int(np.argmin(ok)) + 1 if not ok.all() else None
        check = {"dtype": dtype, "passed": bool(ok.all() and all(acc_ok)),
                 "max_abs_loss_diff": float(diff.max()),
                 "max_rel_loss_diff": float((diff / np.abs(t.losses)).max()),
                 "first_failing_step": first_bad, "stage": None, "tensor": None,
                 "steps": int(len(j.losses)),
                 "accuracy_max_abs_diff": float(max(abs(a - b) for a, b in zip(j.accuracies, t.accuracies)))}
        if first_bad is None and not all(acc_ok):
            check["stage"] = "accuracy"
            check["first_failing_epoch"] = acc_ok.index(False) + 1
        if first_bad is not None and localise_failures:
            found = localise(config, dtype, train, test, first_bad, make_tx)
            check.update(stage=found.get("stage"), tensor=found.get("tensor"), localised=found)
        checks.append(check)
    first = dtypes[0]
    return {"passed": all(c["passed"] for c in checks), "config": config.to_json(), "checks": checks,
            "jax": trajectories[("jax", first)].record, "torch": trajectories[("torch", first)].record,
            "_trajectories": trajectories}


def format_table(report: dict) -> str:
    """Side-by-side per-epoch table for each dtype, then the verdicts."""
    lines = []
    trajectories = report["_trajectories"]
    for check in report["checks"]:
        dtype = check["dtype"]
        j, t = trajectories[("jax", dtype)].record, trajectories[("torch", dtype)].record
        lines.append(f"{dtype}: {check['steps']} steps")
        lines.append(f"{'epoch':>5} {'jax loss':>12} {'torch loss':>12} {'|Δ loss|':>9} "
                     f"{'jax acc':>8} {'torch acc':>9} {'|Δ acc|':>8}")
        for a, b in zip(j["epochs"], t["epochs"]):
            lines.append(f"{a['epoch']:>5} {a['test_loss']:>12.6f} {b['test_loss']:>12.6f} "
                         f"{abs(a['test_loss'] - b['test_loss']):>9.1e} {100 * a['test_accuracy']:>7.2f}% "
                         f"{100 * b['test_accuracy']:>8.2f}% {100 * abs(a['test_accuracy'] - b['test_accuracy']):>7.2f}")
        verdict = "PASS" if check["passed"] else "FAIL"
        detail = (f"max |Δ step loss| {check['max_abs_loss_diff']:.2e} "
                  f"(relative {check['max_rel_loss_diff']:.2e})")
        lines.append(f"{verdict} {dtype}: {detail}")
        if check["first_failing_step"] is not None:
            found = check.get("localised", {})
            where = f" {check['tensor']}" if check["tensor"] else ""
            if "note" in found:
                lines.append(f"  first failing step {check['first_failing_step']}: {found['note']}")
            else:
                lines.append(f"  first failing step {check['first_failing_step']}; first difference: step "
                             f"{found.get('step')} stage {check['stage']}{where} "
                             f"(max |Δ| {found.get('max_abs_diff', float('nan')):.3e}, "
                             f"tolerance {found.get('tolerance', float('nan')):.3e})")
        elif check["stage"] == "accuracy":
            lines.append(f"  epoch {check['first_failing_epoch']}: test accuracy differs by more than 0.1 point")
        lines.append("")
    lines.append("PARITY " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)


def public_report(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def run_and_print(config, dtypes, data_dir=None, train_limit=None) -> int:
    """Load the data, check parity, print the table; the exit code (0 pass, 1 fail). For the examples."""
    train, test = data_lib.load_fashion_mnist(data_dir)
    report = check_parity(config, tuple(dtypes), train.take(train_limit), test)
    print(format_table(report))
    return 0 if report["passed"] else 1
