"""`jaxtrain launch --nproc N -- train <flags>`: N local processes of one run, like `torchrun --standalone`.

Each process is `python -m jaxtrain train <flags> --coordinator 127.0.0.1:PORT
--num-processes N --process-id I`. The launcher forwards SIGINT/SIGTERM to all of
them (they stop at the next epoch boundary, checkpointed), and when one dies it ends
the others (SIGTERM, then SIGKILL: a process waiting in a collective for a dead peer
never reaches an epoch boundary), says in one line which rank failed and why, and
returns that rank's exit code. Checkpoints and metrics files are written atomically,
so ending a run at any moment leaves the last whole checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from jaxtrain.distributed import LOCAL_RANK_ENV
from jaxtrain.errors import ConfigError

PROCESS_FLAGS = ("--coordinator", "--num-processes", "--process-id")
GLOO_NOTICE = "[Gloo] Rank "
GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL for the surviving ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_command(command: list[str]) -> list[str]:
    """The forwarded command: `train <flags>` without the flags the launcher sets."""
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] != ["train"]:
        raise ConfigError("launch runs train: jaxtrain launch --nproc N -- train <flags>")
    for flag in PROCESS_FLAGS:
        if any(arg == flag or arg.startswith(flag + "=") for arg in command):
            raise ConfigError(f"{flag} is set by jaxtrain launch; leave it out")
    return command


class _Rank:
    """One child process. Its stderr is passed through, the last line kept to say why it failed;
    rank 0's stdout (the only one jaxtrain prints to) is passed through without gloo's
    connection notices, which its C++ side prints in every process."""

    def __init__(self, rank: int, argv: list[str], env: dict):
        self.rank, self.last_line = rank, ""
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)  # our own signals reach it only when forwarded
        self.readers = [threading.Thread(target=self._pass_stderr, daemon=True)]
        if rank == 0:
            self.readers.append(threading.Thread(target=self._pass_stdout, daemon=True))
        for reader in self.readers:
            reader.start()

    def _pass_stderr(self) -> None:
        for line in self.proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                self.last_line = line.strip()

    def _pass_stdout(self) -> None:
        for line in self.proc.stdout:
            if not line.startswith(GLOO_NOTICE):
                sys.stdout.write(line)
                sys.stdout.flush()

    def join(self) -> None:
        for reader in self.readers:
            reader.join(timeout=5)

    def why(self) -> str:
        code = self.proc.returncode
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        self.join()
        return f"exited with code {code}" + (f": {self.last_line}" if self.last_line else "")

    def exit_code(self) -> int:
        code = self.proc.returncode
        return 128 - code if code < 0 else code

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass


def launch(nproc: int, command: list[str], port: int | None = None, python: str = sys.executable) -> int:
    """Run the N processes to the end; the first non-zero exit code (0 when all succeed)."""
    command = check_command(command)
    coordinator = f"127.0.0.1:{port or free_port()}"
    ranks = []
    for rank in range(nproc):
        argv = [python, "-m", "jaxtrain", *command, "--coordinator", coordinator, "--num-processes", str(nproc),
                "--process-id", str(rank)]
        ranks.append(_Rank(rank, argv, {**os.environ, LOCAL_RANK_ENV: str(rank)}))

    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        for r in ranks:
            r.signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [r.proc.poll() for r in ranks]
            failed = next((r for r, c in zip(ranks, codes) if c not in (None, 0)), None)
            if failed is not None:
                break
            if all(c == 0 for c in codes):
                ranks[0].join()  # the last lines rank 0 printed
                return 0
            time.sleep(0.1)
        if forwarded:  # we were told to stop: the ranks report their own interrupt
            _wait_or_kill([r for r in ranks if r is not failed])
            return failed.exit_code()
        print(f"jaxtrain launch: rank {failed.rank} of {nproc} {failed.why()}; stopping the other ranks",
              file=sys.stderr, flush=True)
        _wait_or_kill([r for r in ranks if r is not failed], terminate=True)
        return failed.exit_code()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for r in ranks:
            r.join()


def _wait_or_kill(ranks: list[_Rank], terminate: bool = False) -> None:
    """Let the ranks end (after SIGTERM with `terminate`); SIGKILL what is left after the grace."""
    if terminate:
        for r in ranks:
            r.signal(signal.SIGTERM)
    deadline = time.monotonic() + (GRACE_SECONDS if terminate else 30.0)
    for r in ranks:
        try:
            r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.signal(signal.SIGKILL)
            r.proc.wait()
