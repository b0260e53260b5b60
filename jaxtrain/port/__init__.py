"""The port writer: the Flax NNX port of a torch model, written as readable source, and proved with check_port.

    from jaxtrain.port import port
    p = port(torch_model, example_inputs)   # an array, a tuple of arrays, or a dict (as check_port takes them)
    p.source                                # the generated Python source (str)
    p.save("my_port.py")
    model = p.flax_model()                  # the generated class, the torch model's weights loaded
    p.untranslated                          # [(torch op or module, where in torch's source, why)]
    report = p.check(train=(x, y), test=(xt, yt), optimizer="adam", optimizer_kwargs={"lr": 1e-3})

`trace` reads the torch model (torch.fx, one graph per module class), `modules` and `ops` are the rules (one
small function per torch.nn family and per op), `writer` assembles the classes.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import types
from pathlib import Path

import numpy as np

from jaxtrain.errors import PortMappingError, first_line

__all__ = ["Port", "from_file", "port"]


@dataclasses.dataclass
class Port:
    """A written port: its source, the root class's name, what could not be written, and the torch model
    and example inputs it was written from (the weights `flax_model()` loads)."""

    source: str
    class_name: str
    untranslated: list
    torch_model: object
    example_inputs: object

    def save(self, path) -> Path:
        """Write the source to `path` (a .py file); returns the path."""
        path = Path(path)
        path.write_text(self.source)
        return path

    def module(self) -> types.ModuleType:
        """The generated source as an imported module (no torch import in it)."""
        import linecache

        name = f"jaxtrain_port_{self.class_name}_{abs(hash(self.source)) % 10 ** 8}"
        filename = f"<jaxtrain.port {self.class_name}>"
        module = types.ModuleType(name)
        module.__file__ = filename
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True), filename)
        sys.modules[name] = module
        exec(compile(self.source, filename, "exec"), module.__dict__)  # noqa: S102  (our own generated source)
        return module

    def flax_model(self, seed: int = 0):
        """An nnx.Module of the generated class holding the torch model's weights (`jaxtrain.convert`)."""
        from flax import nnx

        from jaxtrain.convert import torch_to_flax

        self._complete()
        model = getattr(self.module(), self.class_name)(rngs=nnx.Rngs(seed))
        return torch_to_flax(self.torch_model, model, self.example_inputs)

    def check(self, train, test=None, **check_port_kwargs):
        """`check_port(torch_model, self.flax_model(), train, test, **check_port_kwargs)`: the verdict on the
        written port. A port that fails is the writer's bug, not the user's model's."""
        from jaxtrain.parity import check_port

        return check_port(self.torch_model, self.flax_model(), train, test, **check_port_kwargs)

    def _complete(self) -> None:
        if self.untranslated:
            parts = "; ".join(f"{what} at {where}: {why}" for what, where, why in self.untranslated)
            raise PortMappingError(f"jaxtrain.port could not write {len(self.untranslated)} part(s) of "
                                   f"{self.class_name}, so the port cannot run: {parts}")


def from_file(path, class_name: str, seed: int = 0):
    """An instance of a saved port's class (Flax's initial weights), built from its file: a recipe another
    process can build (`functools.partial(from_file, path, name)`, as compare_port's workers do)."""
    import importlib.util

    from flax import nnx

    spec = importlib.util.spec_from_file_location(f"jaxtrain_port_file_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)(rngs=nnx.Rngs(seed))


def port(torch_model, example_inputs) -> Port:
    """Write the Flax NNX port of `torch_model` (a torch.nn.Module), traced on `example_inputs` in torch's
    layout: one array (the model's input), a tuple (its positional arguments) or a dict (its keyword
    arguments); float arrays as float32, integer arrays (token ids) stay integers."""
    import torch

    from jaxtrain.port.writer import write

    if not isinstance(torch_model, torch.nn.Module):
        raise PortMappingError(f"port() takes a torch.nn.Module, got {type(torch_model).__name__}")
    arrays = _arrays(example_inputs)
    tensors = (({k: torch.from_numpy(v) for k, v in arrays.items()}) if isinstance(arrays, dict)
               else tuple(torch.from_numpy(a) for a in arrays))
    model = copy.deepcopy(torch_model).eval()  # a copy: running it must not move BatchNorm's statistics
    try:
        with torch.no_grad():
            model(**tensors) if isinstance(tensors, dict) else model(*tensors)
    except Exception as e:  # noqa: BLE001  (the user's model on the user's inputs: said in one line)
        shapes = {k: v.shape for k, v in arrays.items()} if isinstance(arrays, dict) else [a.shape for a in arrays]
        raise PortMappingError(f"{type(torch_model).__name__} does not run on example inputs of shape {shapes}: "
                               f"{type(e).__name__}: {first_line(e)}") from None
    written = write(model, tensors)
    return Port(written.source, written.class_name, written.untranslated, torch_model,
                arrays if isinstance(arrays, dict) else (arrays[0] if len(arrays) == 1 else arrays))


def _arrays(example_inputs):
    """Example inputs as numpy: a dict of arrays, or a tuple of arrays."""
    def one(a):
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        return a if np.issubdtype(a.dtype, np.integer) or a.dtype == bool else a.astype(np.float32)

    if isinstance(example_inputs, dict):
        return {k: one(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(one(a) for a in example_inputs)
    return (one(example_inputs),)
