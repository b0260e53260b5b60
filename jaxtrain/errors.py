"""The errors a user can cause, each reported as one line on stderr with exit code 2; and ours."""

import os


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for a
    one-line error that wraps a library's."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


class UserError(Exception):
    """Bad input from the user: a flag, a file, a path. Printed as one line, exit 2."""

    exit_code = 2


class DataError(UserError):
    """Missing, corrupt or truncated dataset files."""


class ConfigError(UserError):
    """A flag value or a combination of flags that cannot work."""


class DivergedError(Exception):
    """A training loss became NaN or infinite. Printed as one line, exit 3."""

    exit_code = 3


class Interrupted(Exception):
    """SIGINT/SIGTERM: stopped at an epoch boundary. Exit 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class PortMappingError(UserError):
    """A torch model and its Flax port cannot be paired: unmatched tensors, shapes that differ
    after the layout rule, a model that fails to run, a module path that does not import."""


class PeerLost(Exception):
    """A collective of a multi-process run failed: another process died or the network broke.
    Printed as one line, exit 1."""

    exit_code = 1


class InternalError(Exception):
    """jaxtrain's own code failed (a bug of ours, not of the user's model or input). Printed as one
    line that says so, exit 70 (EX_SOFTWARE)."""

    exit_code = 70


def _frame_owner(filename: str) -> str:
    """'ours' (jaxtrain's and torchref's code, its case corpus aside), 'library' (installed packages, the
    standard library) or 'user' (everything else: the user's model and scripts)."""
    import os
    import sysconfig

    path = os.path.abspath(filename)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding jaxtrain/, torchref/
    parts = path.split(os.sep)
    if path.startswith(os.path.join(here, "jaxtrain") + os.sep) or path.startswith(os.path.join(here, "torchref") + os.sep):
        return "user" if any(p.startswith("corpus") for p in parts) else "ours"  # corpus cases are users' models
    stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    if ("site-packages" in parts or "dist-packages" in parts or filename.startswith("<")
            or any(path.startswith(p + os.sep) for p in stdlib)):
        return "library"
    return "user"


MODEL_CALLS = (os.sep.join(("torch", "nn", "modules", "module.py")), os.sep.join(("flax", "")))


def raised_by_us(error: BaseException) -> bool:
    """Whether `error` is a failure of jaxtrain's own code rather than of the model being run: the deepest
    frame of its traceback outside the libraries is ours, and no module (torch's or Flax's) was called
    below it. A model built from library layers alone fails inside those libraries, under our call."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    owners = [_frame_owner(f.filename) for f in frames]
    deepest = max((i for i, o in enumerate(owners) if o != "library"), default=None)
    if deepest is None or owners[deepest] != "ours":
        return False
    return not any(any(m in f.filename for m in MODEL_CALLS) for f in frames[deepest + 1:])


def ours(error: BaseException, where: str) -> InternalError:
    """The one line for a failure of our own code, with the (deepest) place of ours it happened."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if _frame_owner(f.filename) == "ours"]
    place = ""
    if frames:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        place = f"at {os.path.relpath(frames[-1].filename, here)}:{frames[-1].lineno} in {frames[-1].name}; "
    return InternalError(f"jaxtrain failed {where}, not the model: {type(error).__name__}: {first_line(error)} "
                         f"({place}a bug in jaxtrain, please report it)")
