"""Loading a model a command names as MODULE:ATTR: shared by the command line and the benches, below both."""

from __future__ import annotations

import importlib
import os
import sys

from jaxtrain.errors import PortMappingError


def load_model(spec: str, flag: str):
    """MODULE:ATTR -> the model ATTR builds (a class or a zero-argument factory), importable from
    the current directory or PYTHONPATH; anything wrong is a one-line PortMappingError."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PortMappingError(f"{flag} {spec!r}: expected MODULE:ATTR, e.g. examples.cnn:TorchCNN")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module failing on import
        raise PortMappingError(f"{flag}: cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise PortMappingError(f"{flag}: {module_name!r} has no class or factory named {attr!r}")
    try:
        return factory()
    except Exception as e:  # the user's constructor
        raise PortMappingError(f"{flag}: {spec} could not be built with no arguments: {type(e).__name__}: {e}; "
                               "give a zero-argument factory") from None
