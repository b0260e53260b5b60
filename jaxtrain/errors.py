"""The errors a user can cause, each reported as one line on stderr with exit code 2; and ours."""

import os
import re


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


class InputTypeError(PortMappingError, TypeError):
    """A model, output or input of the wrong kind, raised by our code on purpose (a TypeError to the callers
    that catch one)."""


class InputValueError(ConfigError, ValueError):
    """Input arrays that do not fit together, raised by our code on purpose (a ValueError to its callers)."""


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
    standard library) or 'user' (everything else: the user's model and scripts, exec'd code, notebook cells)."""
    import sysconfig

    path = os.path.abspath(filename)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding jaxtrain/, torchref/
    inside = os.path.relpath(path, here).split(os.sep)
    if inside[0] in ("jaxtrain", "torchref") and not filename.startswith("<"):
        return "user" if any(p.startswith("corpus") for p in inside) else "ours"  # corpus cases are users' models
    parts = path.split(os.sep)
    stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    if "site-packages" in parts or "dist-packages" in parts or any(path.startswith(p + os.sep) for p in stdlib):
        return "library"
    return "user"


CALL_SIGNATURE = re.compile(r"positional argument|keyword argument|takes \d+|required (positional|keyword)")


def raised_by_us(error: BaseException) -> bool:
    """Whether `error` is a failure of jaxtrain's own code rather than of the model, loss or input being run: it
    was raised in our code (or by a builtin our code called), is not an error we raise on purpose for bad input
    (UserError), and is not the user's function refusing the arguments it was called with. An error raised
    inside a library (torch, flax, optax) stays the model's: the model or loss chose that library call."""
    import traceback

    if isinstance(error, UserError):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or _frame_owner(frames[-1].filename) != "ours":
        return False
    return not (isinstance(error, TypeError) and CALL_SIGNATURE.search(str(error)))


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
