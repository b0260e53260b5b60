"""The errors a user can cause, each reported as one line on stderr with exit code 2."""


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
