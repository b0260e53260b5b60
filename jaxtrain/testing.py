"""Port checks for your own test suite, as `torch.testing.assert_close` is for tensors:

    from jaxtrain.testing import assert_converts, assert_port

    def test_my_port_loads_torchs_weights():
        assert_converts(MyTorchModel(), MyFlaxPort(rngs=nnx.Rngs(0)), example_inputs)

    def test_my_port_trains_like_torch():
        assert_port(MyTorchModel(), MyFlaxPort(rngs=nnx.Rngs(0)), train=(x, y), test=(xt, yt), steps=8)

Each raises `AssertionError` with what failed and where, in torch's names (one screen: the verdict, the
localisation and the diagnosis of `check_port`'s report), and returns the report or the loaded port when
the check holds. `examples/test_my_port.py` is a file to copy.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

__all__ = ["assert_converts", "assert_port"]

# The port's float64 forward pass may differ from torch's by this many times what float32 rounding moves torch's
# own output (a cast to float32 inside the model, in torch's code and kept by the port), and always by 1e-10 of
# the output's scale (float64 rounding through a deep model).
FORWARD_FACTOR, FORWARD_FLOOR = 100.0, 1e-10


def assert_port(torch_model, flax_model, train, test=None, **check_port_kwargs):
    """`check_port(torch_model, flax_model, train, test, **check_port_kwargs)`; raises AssertionError with the
    report's verdict, localisation and diagnosis when any part fails. Returns the report."""
    from jaxtrain.parity import check_port
    from jaxtrain.parity.report import format_verdict

    report = check_port(torch_model, flax_model, train, test, **check_port_kwargs)
    if not report.passed:
        raise AssertionError("the port does not train like the torch model\n" + format_verdict(report))
    return report


def assert_converts(torch_model, flax_model, example_inputs, *, flax_input=None, weight_map=None, rtol=None):
    """torch's weights load into the port (`convert.torch_to_flax`), the port then computes torch's forward pass
    on `example_inputs` (eval mode, float64, within FORWARD_FACTOR x what float32 rounding moves torch's output,
    or `rtol` of its scale), and its weights load back into torch unchanged (`convert.flax_to_torch`). Returns
    the loaded port (the NNX module, or the linen variables)."""
    import torch

    from jaxtrain.convert import flax_to_torch, torch_to_flax

    original = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    loaded = torch_to_flax(copy.deepcopy(torch_model), flax_model, example_inputs, flax_input=flax_input,
                           weight_map=weight_map)
    ours = _flax_forward64(flax_model, loaded, example_inputs, flax_input)
    theirs64, theirs32 = (_torch_forward(torch_model, example_inputs, dtype) for dtype in (torch.float64, torch.float32))
    scale = float(np.max(np.abs(theirs64))) if theirs64.size else 0.0
    rounding = float(np.sqrt(np.mean((theirs32 - theirs64) ** 2))) if theirs64.size else 0.0
    allowed = rtol * scale if rtol is not None else FORWARD_FACTOR * rounding + FORWARD_FLOOR * scale
    if ours.shape != theirs64.shape:
        raise AssertionError(f"the port's output has shape {ours.shape}, torch's {theirs64.shape}")
    worst = np.abs(ours - theirs64)
    if worst.size and float(worst.max()) > allowed:
        at = np.unravel_index(int(np.argmax(worst)), worst.shape)
        raise AssertionError(f"with torch's weights loaded, the port's forward pass differs from torch's: element "
                             f"{list(map(int, at))} by {float(worst.max()):.3e} (allowed {allowed:.3e}; torch's own "
                             f"float32 rounding moves its output by {rounding:.3e} RMS)")
    back = copy.deepcopy(torch_model)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    flax_to_torch(loaded, back, example_inputs, flax_model=flax_model if isinstance(loaded, dict) else None,
                  flax_input=flax_input, weight_map=weight_map)
    changed = [k for k, v in back.state_dict().items()
               if k in original and not torch.equal(v.to(original[k].dtype), original[k])]
    if changed:
        raise AssertionError(f"the port's weights do not load back into torch unchanged: {', '.join(changed[:5])}"
                             f"{' ...' if len(changed) > 5 else ''}")
    return loaded


def _torch_forward(model, inputs, dtype) -> np.ndarray:
    import torch

    from jaxtrain.inputs import call, map_leaves, prediction

    def tensor(a):
        a = np.asarray(a)
        t = torch.from_numpy(a.copy())
        return t.to(dtype) if np.issubdtype(a.dtype, np.floating) else t

    model = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        out = call(model, map_leaves(tensor, inputs))
    return np.asarray(prediction(out).detach().numpy(), np.float64)


def _flax_forward64(flax_model, loaded, inputs, flax_input) -> np.ndarray:
    import jax

    from jaxtrain.flax_model import cast_floats, pure_model
    from jaxtrain.inputs import map_leaves, prediction
    from jaxtrain.parity.check import FLAX_INPUTS

    jax.config.update("jax_enable_x64", True)  # as check_port does for its float64 runs
    floats = lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a)  # noqa: E731
    x = FLAX_INPUTS.get(flax_input or "same", flax_input)(map_leaves(floats, inputs))
    model = pure_model(flax_model, x)
    if isinstance(loaded, dict):  # linen: the variables torch_to_flax returned
        model = dataclasses.replace(model, params=loaded["params"],
                                    buffers={k: v for k, v in loaded.items() if k != "params"})
    model = model.computing_in(np.float64)
    out, _, _ = model.apply(cast_floats(model.params, np.float64), cast_floats(model.buffers, np.float64), x, False)
    return np.asarray(prediction(out), np.float64)
