"""Weight transfer both ways, forward parity in train and eval mode, dropout statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxtrain.config import Config
from jaxtrain.models import make_model
from jaxtrain.transfer import flax_to_torch, torch_to_flax, unbiased_to_biased
from torchref.models import make_model as make_torch_model


def test_round_trip_keeps_every_tensor():
    model = make_torch_model(Config(model="mlp_bn_dropout"))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params, stats = torch_to_flax(state)
    assert params["linear_relu_stack_0"]["kernel"].shape == (784, 512)  # (in, out) in Flax
    back = flax_to_torch(params, stats)
    assert set(back) == set(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


@pytest.mark.parametrize("model_name", ["mlp", "mlp_bn_dropout"])
def test_forward_matches_in_eval_and_train_mode(model_name):
    jax.config.update("jax_enable_x64", True)
    config = Config(model=model_name, dropout=0.3, dtype="float64")
    torch_model = make_torch_model(config)
    # non-trivial BatchNorm statistics: a few training-mode forwards in torch
    torch_model.train()
    x = torch.rand(32, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        with torch.no_grad():
            torch_model(x)
    params, stats = torch_to_flax({k: v.numpy() for k, v in torch_model.state_dict().items()})
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    flax_model = make_model(config)
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(x).numpy()
    got = flax_model.apply(variables, jnp.asarray(x.numpy().reshape(32, -1)), train=False)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    if model_name == "mlp_bn_dropout":
        # train mode with the same dropout masks: outputs and updated running statistics agree
        masks = [np.random.default_rng(i).random((32, 512)) >= 0.3 for i in range(2)]
        hooks = [m.register_forward_hook(lambda mod, i, o, k=k: i[0] * (torch.as_tensor(masks[k]).double() / 0.7))
                 for k, m in enumerate(d for d in torch_model.modules() if isinstance(d, torch.nn.Dropout))]
        torch_model.train()
        with torch.no_grad():
            expected = torch_model(x).numpy()
        for h in hooks:
            h.remove()
        got, mutated = flax_model.apply(variables, jnp.asarray(x.numpy().reshape(32, -1)), train=True,
                                        dropout_masks=tuple(jnp.asarray(m) for m in masks), mutable=["batch_stats"])
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)
        new_stats = flax_to_torch(params, mutated["batch_stats"])
        for key in ("linear_relu_stack.1.running_var", "linear_relu_stack.5.running_mean"):
            np.testing.assert_allclose(new_stats[key], torch_model.state_dict()[key].numpy(), rtol=1e-12)


def test_unbiased_to_biased_variance():
    samples = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(unbiased_to_biased(samples.var(0, ddof=1), 10), samples.var(0))


def test_random_dropout_drops_p_and_scales_by_one_over_one_minus_p():
    """JAX's own dropout draws (not the injected masks): the same distribution as torch's."""
    jax.config.update("jax_enable_x64", False)
    from jaxtrain.models import dropout
    import flax.linen as nn

    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x):
            return dropout(self, x, 0.3, train=True)

    x = jnp.ones((200, 512))
    out = np.asarray(Drop().apply({}, x, rngs={"dropout": jax.random.key(0)}))
    torch_out = torch.nn.functional.dropout(torch.ones(200, 512), 0.3, training=True).numpy()
    for sample in (out, torch_out):
        kept = sample != 0
        assert abs(1 - kept.mean() - 0.3) < 0.01  # 102400 draws: 4+ standard deviations
        np.testing.assert_allclose(sample[kept], 1 / 0.7, rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.02
