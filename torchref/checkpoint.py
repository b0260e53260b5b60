"""torch checkpoints: torch.save to a temporary file in the same folder, then an atomic rename.

A process killed mid-save leaves only a `.tmp` file behind, which is ignored;
the previous checkpoint stays whole. Holds the model, optimizer and scheduler
state, torch's CPU and CUDA RNG states (dropout), the epochs done and the metrics so far.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from jaxtrain.checkpoint import check_dir, check_same_config
from jaxtrain.errors import UserError

NAME = re.compile(r"^epoch-(\d+)\.pt$")


class TorchCheckpointer:
    def __init__(self, directory: str, keep: int = 3):
        check_dir(directory)
        self.directory, self.keep = Path(directory), keep
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{directory}: cannot create --checkpoint-dir ({e.strerror})") from None

    def _saved(self) -> list[int]:
        return sorted(int(m[1]) for p in self.directory.iterdir() if (m := NAME.match(p.name)))

    def save(self, epochs_done: int, objects, record: dict) -> None:
        model, optimizer, scheduler = objects
        payload = {"epochs_done": epochs_done, "config": record["config"], "record": record,
                   "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict() if scheduler is not None else None,
                   "rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        fd, tmp = tempfile.mkstemp(prefix=".epoch-", suffix=".tmp", dir=self.directory)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / f"epoch-{epochs_done:06d}.pt")
        for old in self._saved()[: -self.keep]:
            (self.directory / f"epoch-{old:06d}.pt").unlink(missing_ok=True)

    def latest(self) -> int | None:
        saved = self._saved()
        return saved[-1] if saved else None

    def restorer(self, config):
        """A `restore(model, optimizer, scheduler)` for torchref.train.fit."""

        def restore(model, optimizer, scheduler):
            latest = self.latest()
            if latest is None:
                raise UserError(f"{self.directory}: --resume found no checkpoint; run without --resume first")
            path = self.directory / f"epoch-{latest:06d}.pt"
            try:
                payload = torch.load(path, weights_only=False)
            except Exception as e:  # a damaged file
                raise UserError(f"{path}: cannot load checkpoint ({type(e).__name__}); use another "
                                "--checkpoint-dir") from None
            check_same_config(payload["config"], config, str(self.directory))
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(payload["scheduler"])
            torch.set_rng_state(payload["rng"])
            if payload.get("cuda_rng") and torch.cuda.is_available():  # dropout on the GPU draws from these
                torch.cuda.set_rng_state_all(payload["cuda_rng"])
            return payload["record"], payload["epochs_done"]

        return restore
