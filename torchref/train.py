"""The tutorial's train_loop and test_loop (twin: jaxtrain/train.py).

The DataLoader draws its batches from jaxtrain's batch plan, so torch sees the
same samples in the same order as JAX.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from jaxtrain import data as data_lib
from jaxtrain import inputs as inputs_lib
from torchref.distributed import ONE_PROCESS
from torchref.losses import make_loss
from torchref.models import make_model
from torchref.optim import make_optimizer, make_scheduler


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_kind() -> str:
    """"cpu" or "gpu", as the metrics record names it."""
    return "gpu" if device().type == "cuda" else "cpu"


def setup(config, model=None, steps_per_epoch: int = 1):
    """The tutorial's objects for a config: model (on the device), loss_fn, optimizer, scheduler
    (`steps_per_epoch`: batches per epoch, for a OneCycleLR stepped per batch)."""
    model = (model or make_model(config)).to(device())
    optimizer = make_optimizer(config, model)
    return model, make_loss(config), optimizer, make_scheduler(config, optimizer, steps_per_epoch)


class SharedBatchSampler(Sampler):
    """Yields the index lists of `jaxtrain.data.epoch_batches` (under DDP: this rank's block of
    each); `set_epoch` picks the epoch (and, for a run cut short by a step budget, how many of
    its batches)."""

    def __init__(self, num_samples, batch_size, shuffle=False, seed=0, parallel=ONE_PROCESS):
        self.num_samples, self.batch_size, self.shuffle, self.seed, self.epoch = (
            num_samples, batch_size, shuffle, seed, 0)
        self.num_batches = -(-num_samples // batch_size)
        self.parallel = parallel

    def set_epoch(self, epoch, num_batches=None):
        self.epoch = epoch
        self.num_batches = num_batches or -(-self.num_samples // self.batch_size)

    def __iter__(self):
        plan = data_lib.epoch_batches(self.num_samples, self.batch_size, self.shuffle, self.seed, self.epoch)
        for b in range(self.num_batches):
            yield self.parallel.rank_rows(plan.index[b, : plan.sizes[b]]).tolist()

    def __len__(self):
        return self.num_batches


class ArraysDataset(Dataset):
    """Inputs (an array, tuple or dict of arrays, as the model takes them) and targets, batch by
    batch: `dataset[index_list]` is one batch, as TensorDataset's rows stacked."""

    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return inputs_lib.rows(self.inputs, index), self.labels[index]

    __getitems__ = __getitem__  # the DataLoader fetches a batch's indices in one call


def make_dataloader(split: data_lib.Split, config, train: bool, parallel=ONE_PROCESS,
                    add_channel: bool = True) -> DataLoader:
    """The split's samples in the batches of jaxtrain's plan (this rank's block of each).
    FashionMNIST's (N, 28, 28) images get the channel axis ToTensor gives them (N, 1, 28, 28)
    (`add_channel`); other float inputs are taken as they are, in the run's dtype; integer
    inputs (token ids, masks) stay integers. Inputs may be an array, a tuple or a dict of arrays."""
    dtype = torch.float64 if config.dtype == "float64" else torch.float32

    def tensor(array):
        x = torch.from_numpy(np.asarray(array))
        if not x.is_floating_point():
            return x.long()  # token ids stay integers (what nn.Embedding takes)
        return x.to(dtype).unsqueeze(1) if add_channel and x.ndim == 3 else x.to(dtype)

    labels = torch.from_numpy(split.labels)
    labels = labels.long() if data_lib.is_classification(split) else labels.to(dtype)
    parallel.check_batches(len(split), config.batch_size, "training" if train else "test")
    sampler = SharedBatchSampler(len(split), config.batch_size, config.shuffle and train, config.seed, parallel)
    dataset = ArraysDataset(inputs_lib.map_leaves(tensor, split.images), labels)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda batch: batch)


def to_device(X):
    """A batch's inputs (a tensor, tuple or dict of tensors) on the device."""
    return inputs_lib.map_leaves(lambda t: t.to(device()), X)


@dataclasses.dataclass(frozen=True)
class Loop:
    """What a user's loop does besides zero_grad -> backward -> step, in their order: the loss of
    each of `accumulate` micro-batches divided by `accumulate` and backpropagated, then
    `torch_step(model, optimizer)` (clipping, gradient surgery), optimizer.step(), zero_grad(), and
    `scheduler.step()` when the schedule is stepped per batch."""

    accumulate: int = 1
    torch_step: Callable | None = None
    scheduler: Any = None


PLAIN = Loop()


def train_step(model, loss_fn, optimizer, X, y, capture=None, parallel=ONE_PROCESS, global_rows=None,
               loop=PLAIN, step=True):
    """The body of the tutorial's train_loop; returns the global batch's loss. `capture` (a dict)
    receives the logits, gradients (this batch's, before `loop.torch_step`) and parameter updates,
    for the parity harness. Under DDP, X is this rank's block of a global batch of `global_rows`.
    `step`: whether this batch ends an accumulation (always, without one)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()} if capture is not None else None
    accumulated = {}
    if capture is not None and loop.accumulate > 1:  # set aside earlier micro-batches' sum to see this one's
        for n, p in model.named_parameters():
            if p.grad is not None:
                accumulated[n], p.grad = p.grad, None
    # Compute prediction and loss
    pred = model(X)
    loss = loss_fn(pred, y)
    loss = parallel.loss_share(loss, loss_fn, len(y), global_rows or len(y))  # DDP: this rank's share

    # Backpropagation
    parallel.backward(loss / loop.accumulate if loop.accumulate > 1 else loss)
    if capture is not None:
        capture["logits"] = pred.detach().clone()
        capture["grads"] = {n: p.grad.detach() * loop.accumulate for n, p in model.named_parameters()
                            if p.grad is not None}
        for n, p in model.named_parameters():  # then the sum, as autograd would have made it
            if n in accumulated:
                p.grad = accumulated[n] + p.grad if p.grad is not None else accumulated[n]
    if step:
        if loop.torch_step is not None:
            loop.torch_step(model, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        if loop.scheduler is not None:
            loop.scheduler.step()
    if capture is not None:
        capture["updates"] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return parallel.sum(loss.detach())


def train_loop(dataloader, model, loss_fn, optimizer, report=None, parallel=ONE_PROCESS, loop=PLAIN):
    """One epoch; returns every batch's loss. `report(loss, current, size)` every 100 batches.
    `loop`: the user's accumulation, gradient code and per-batch scheduler (see Loop)."""
    size, batch_size = len(dataloader.dataset), dataloader.batch_sampler.batch_size
    # Set the model to training mode - important for batch normalization and dropout layers
    model.train()
    losses = []
    for batch, (X, y) in enumerate(dataloader):
        X, y = to_device(X), y.to(device())
        global_rows = min(batch_size, size - batch * batch_size)  # len(X) on one process
        loss = train_step(model, loss_fn, optimizer, X, y, parallel=parallel, global_rows=global_rows, loop=loop,
                          step=(batch + 1) % loop.accumulate == 0)
        losses.append(loss)
        if batch % 100 == 0 and report is not None:
            loss, current = loss.item(), batch * batch_size + global_rows
            report(loss, current, size)
    return torch.stack(losses).double().cpu().numpy()


def test_loop(dataloader, model, loss_fn, parallel=ONE_PROCESS):
    """Returns (avg loss = mean of batch means, accuracy = correct / size)."""
    # Set the model to evaluation mode - important for batch normalization and dropout layers
    model.eval()
    size, batch_size = len(dataloader.dataset), dataloader.batch_sampler.batch_size
    num_batches = len(dataloader)
    test_loss, correct = 0, 0

    # Evaluating the model with torch.no_grad() ensures that no gradients are computed during test mode
    with torch.no_grad():
        for batch, (X, y) in enumerate(dataloader):
            X, y = to_device(X), y.to(device())
            pred = model(X)
            global_rows = min(batch_size, size - batch * batch_size)
            test_loss += parallel.loss_share(loss_fn(pred, y), loss_fn, len(y), global_rows).item()
            if not y.is_floating_point():  # class labels (regression targets have no accuracy)
                correct += (pred.argmax(-1) == y).type(torch.float).sum().item()  # every position of sequences

    test_loss, correct = parallel.sum(torch.tensor([test_loss, correct], dtype=torch.float64)).tolist()
    test_loss /= num_batches
    positions = size * y[0].numel()  # samples, or every position of sequence targets
    correct = correct / positions if not y.is_floating_point() else float("nan")
    return test_loss, correct


def fit(config, train: data_lib.Split, test: data_lib.Split, report=None, model=None, restore=None,
        on_epoch_end=None, parallel=ONE_PROCESS) -> dict:
    """`for t in range(epochs): train_loop(...); test_loop(...)`; returns the metrics record.
    `restore(model, optimizer, scheduler) -> (record, epochs_done)` continues a saved run;
    `on_epoch_end(epochs_done, (model, optimizer, scheduler), record)` runs after each epoch.
    `parallel`: the DDP ranks (torchref.distributed), one process by default."""
    from jaxtrain.metrics import append_epoch, check_finite, new_record

    report = report or (lambda event, **kw: None)
    model, loss_fn, optimizer, scheduler = setup(config, model, -(-len(train) // config.batch_size))
    train_dataloader = make_dataloader(train, config, True, parallel)
    clip = (lambda m, o: torch.nn.utils.clip_grad_norm_(m.parameters(), config.clip_grad_norm)) \
        if config.clip_grad_norm is not None else None
    per_batch = scheduler if config.scheduler_interval == "step" else None
    loop = Loop(config.accumulate, clip, per_batch)
    test_dataloader = make_dataloader(test, config, False, parallel)
    record, start_epoch = new_record("torch", config, device_kind()), 0
    if restore is not None:
        record, start_epoch = restore(model, optimizer, scheduler)
    net = parallel.wrap(model)  # after restoring: DDP starts every rank from rank 0's weights
    report("compiled", seconds=0.0)
    for t in range(start_epoch, config.epochs):
        report("epoch_start", epoch=t)
        train_dataloader.batch_sampler.set_epoch(t)
        start = time.perf_counter()
        losses = train_loop(train_dataloader, net, loss_fn, optimizer,
                            lambda loss, current, size: report("train_progress", loss=loss, current=current, size=size),
                            parallel, loop)
        train_seconds = time.perf_counter() - start
        if config.nan_guard:
            check_finite(losses, t, len(record["steps"]))
        test_loss, accuracy = test_loop(test_dataloader, net, loss_fn, parallel)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(test_loss)
        elif scheduler is not None and per_batch is None:
            scheduler.step()
        seconds = time.perf_counter() - start
        append_epoch(record, t, losses, test_loss, accuracy, seconds)
        report("epoch_end", epoch=t, test_loss=test_loss, accuracy=accuracy, train_seconds=train_seconds,
               seconds=seconds)
        if on_epoch_end is not None:
            on_epoch_end(t + 1, (model, optimizer, scheduler), record)
    report("done", record=record, compile_seconds=0.0)
    return record
