"""check_port with the user's own training loop: optimizer factories (with schedulers, per epoch or per
batch), from_torch twins, torch_step, clipping and accumulation, on the tutorial MLP and a CNN;
healthy loops pass, planted loop bugs are found at the update they change, with the right diagnosis."""

import optax
import pytest
import torch

from examples.cnn import NnxCNN, TorchCNN
from jaxtrain.config import make_config
from jaxtrain.errors import ConfigError
from jaxtrain.models import make_model
from jaxtrain.optim import from_torch
from jaxtrain.parity import check_port
from torchref.models import make_model as make_torch_model

S = torch.optim.lr_scheduler


@pytest.fixture(scope="module")
def data(fashion):
    train, test = fashion
    return dict(train=(train.images[:256, None], train.labels[:256]), test=(test.images[:200, None],
                                                                            test.labels[:200]))


def mlp():
    torch.manual_seed(0)
    return make_torch_model(make_config()), make_model(make_config())


def check(data, model=mlp, **kw):
    torch_model, flax_model = model()
    args = dict(steps=8, batch_size=32, **data)
    args.update(kw)
    return check_port(torch_model, flax_model, **args)


def cnn():
    torch.manual_seed(0)
    return TorchCNN(), NnxCNN()


def no_decay_groups(params):
    """The recipe users copy: no weight decay on biases and norm weights."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1],
                                                            "weight_decay": 0.0}]


def adamw_one_cycle(params):
    optimizer = torch.optim.AdamW(no_decay_groups(params), lr=3e-3)
    return optimizer, S.OneCycleLR(optimizer, max_lr=3e-3, total_steps=20)


def clip(max_norm):
    return lambda model, optimizer: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


# --------------------------------------------------------------------------- healthy loops


def test_factory_with_param_groups_per_batch_one_cycle_and_clipping_passes(data):
    report = check(data, optimizer=adamw_one_cycle, scheduler_interval="step", clip_grad_norm=0.5)
    assert report.passed, str(report)


@pytest.mark.corpus  # the suite's budget: plateau's exactness is in test_from_torch, the corpus has loop_plateau
def test_plateau_scheduler_steps_on_the_test_loss_on_both_sides(data):
    def plateau(params):
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        return optimizer, S.ReduceLROnPlateau(optimizer, patience=0, factor=0.5, threshold=0.5)  # cuts every epoch

    report = check(data, optimizer=plateau, steps=None, epochs=3, batch_size=64, dtypes=("float64",))
    assert report.passed, str(report)


def test_torch_step_clipping_against_a_from_torch_twin_that_clips(data):
    torch_model, _ = mlp()
    twin = from_torch(sgd(torch_model.parameters()), model=torch_model, clip_grad_norm=0.3)
    assert check(data, optimizer=(sgd, twin), torch_step=clip(0.3)).passed


@pytest.mark.corpus  # the suite keeps the CNN's accumulation bug below
def test_the_whole_loop_on_a_cnn_passes(data):
    """A BatchNorm CNN with everything at once: a factory's AdamW in two groups and OneCycleLR stepped per
    optimizer step, 2 batches accumulated, clip_grad_norm_ in torch_step against a clipping twin."""
    def make(params):
        optimizer = torch.optim.AdamW(no_decay_groups(params), lr=3e-3)
        return optimizer, S.OneCycleLR(optimizer, max_lr=3e-3, total_steps=10)

    torch_model, _ = cnn()
    twin = from_torch(*make(torch_model.parameters()), model=torch_model, interval="step", steps=8,
                      clip_grad_norm=1.0)
    report = check(data, model=cnn, optimizer=(make, twin), torch_step=clip(1.0), scheduler_interval="step",
                   accumulate=2, flax_input="nhwc", steps=16)
    assert report.passed, str(report)


def test_optax_adams_float32_bias_correction_is_a_finding_not_a_failure(data):
    """optax.adam computes 1 - 0.999**t in float32 (1.3e-5 relative): the port is torch's math (float64 holds)
    and its forward pass is as precise as torch's; the updates' excess is the library's arithmetic."""
    report = check(data, optimizer=(lambda p: torch.optim.Adam(p, lr=1e-3), optax.adam(1e-3)), steps=6)
    assert report.passed, str(report)
    library = report.verdict["same_precision"]["library_float32"]  # XLA's gradient sums may exceed too (CPU kind)
    assert "updates" in library["stages"] and library["jax_median_error"] > 4 * library["torch_median_error"]
    assert "FINDING (not the port's): JAX's float32 arithmetic, not the port" in str(report)


def test_a_users_optax_schedule_in_float32_leaves_float64_undecided_and_float32_decides(data):
    """optax's warmup-cosine schedule computes the learning rate in float32 during the float64 run, as torch-side
    float32 would: named, float64 undecided, and the float32 parts (against torch's own float32 error) pass it."""
    from jaxtrain.parity.corpus.loops import optax_warmup_cosine, warmup_cosine

    report = check(data, optimizer=(warmup_cosine, optax_warmup_cosine(0.01)), scheduler_interval="step", steps=8)
    assert report.passed, str(report)
    math = report.verdict["same_math"]
    assert math["passed"] is None and math["float32_inside"] == ["the port's optax transformation"], math
    assert "no stage differs beyond what float32 rounding gives" in math["sentence"]


def test_a_bug_beside_float32_inside_is_still_decided_and_localised_by_float64(data):
    """The same schedule warming up from 0 (torch's LinearLR from 0.1 x lr): far beyond float32 rounding."""
    from jaxtrain.parity.corpus.loops import optax_warmup_cosine, warmup_cosine

    report = check(data, optimizer=(warmup_cosine, optax_warmup_cosine(0.0)), scheduler_interval="step", steps=4,
                   dtypes=("float64",))
    math = report.verdict["same_math"]
    assert math["passed"] is False and "beyond what float32 rounding gives" in math["sentence"], math
    assert (math["localised"]["stage"], math["localised"]["step"]) == ("updates", 1)


# --------------------------------------------------------------------------- planted loop bugs


def failing(report, step):
    c = report.checks[0]
    assert not report.passed and (c["stage"], c["first_failing_step"]) == ("updates", step), str(report)
    return report.diagnosis["trap"]


def test_clipping_on_the_torch_side_only(data):
    report = check(data, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), torch_step=clip(0.3), dtypes=("float64",))
    assert failing(report, 1) == "gradient clipping"


def test_per_tensor_clipping_against_torchs_global_norm(data):
    port = optax.chain(optax.clip_by_block_rms(0.01), optax.sgd(0.05))
    report = check(data, optimizer=(lambda p: torch.optim.SGD(p, lr=0.05), port), clip_grad_norm=0.3,
                   dtypes=("float64",))
    assert failing(report, 1) == "per-tensor vs global norm clipping"


def test_accumulated_sum_instead_of_mean_on_a_cnn(data):
    port = optax.MultiSteps(optax.sgd(0.05), 2, use_grad_mean=False, accumulator_dtype=None)
    report = check(data, model=cnn, optimizer=(lambda p: torch.optim.SGD(p, lr=0.05), port.gradient_transformation()),
                   accumulate=2, flax_input="nhwc", steps=4, dtypes=("float64",))
    assert failing(report, 2) == "accumulated sum instead of mean"


def test_decay_on_biases_where_torch_has_a_no_decay_group(data):
    port = optax.adamw(1e-3, eps=1e-8, weight_decay=1e-2)
    report = check(data, optimizer=(lambda p: torch.optim.AdamW(no_decay_groups(p), lr=1e-3), port),
                   dtypes=("float64",))
    assert failing(report, 1) == "decay on biases and norms"
    assert report.checks[0]["tensor"].endswith("bias")


def test_warmup_stepped_per_epoch_instead_of_per_batch(data):
    def warmup(params):
        optimizer = torch.optim.SGD(params, lr=0.05)
        return optimizer, S.LinearLR(optimizer, 0.1, total_iters=5)

    torch_model, _ = mlp()
    twin = from_torch(*warmup(torch_model.parameters()), model=torch_model, interval="epoch", steps_per_epoch=8,
                      steps=8)
    report = check(data, optimizer=(warmup, twin), scheduler_interval="step", dtypes=("float64",))
    assert failing(report, 2) == "learning rate at this step"


# --------------------------------------------------------------------------- bad loop arguments


@pytest.mark.parametrize("kw, words", [
    (dict(accumulate=0), "accumulate must be"),
    (dict(accumulate=3), "must divide the 8 batches"),
    (dict(scheduler_interval="batch"), "scheduler_interval must be"),
    (dict(torch_step="clip"), "torch_step must be a function"),
    (dict(clip_grad_norm=-1.0), "clip_grad_norm must be > 0"),
    (dict(optimizer=sgd, scheduler="step"), "scheduler= names go with an optimizer name"),
    (dict(optimizer=lambda p: "adam"), "must return a torch.optim optimizer"),
    (dict(optimizer=lambda p: torch.optim.SGD(p, lr=-1.0)), "the optimizer factory fails: ValueError"),
    (dict(optimizer=lambda p: torch.optim.LBFGS(p)), "LBFGS has no optax twin"),
])
def test_bad_loop_arguments_are_one_line_errors(data, kw, words):
    with pytest.raises(ConfigError) as e:
        check(data, **{"optimizer": "sgd", **kw})
    assert words in str(e.value) and "\n" not in str(e.value)
