"""What both command lines (`jaxtrain train`, `torchref train`) share: the tutorial's printed
lines, interrupts at epoch boundaries, and the end-of-epoch hook (checkpoint, stop)."""

from __future__ import annotations

import statistics
import sys

from jaxtrain import metrics


class TutorialPrinter:
    """Prints what the tutorial prints (or a tqdm bar with --progress; nothing with --quiet)."""

    def __init__(self, config, out=sys.stdout):
        self.config, self.out, self.bar = config, out, None
        self.train_seconds: list[float] = []

    def __call__(self, event: str, **kw) -> None:
        c = self.config
        if event == "compiled" and c.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=c.epochs, unit="epoch", file=sys.stderr, disable=c.quiet)
        if event == "epoch_end":
            self.train_seconds.append(kw["train_seconds"])
        if c.quiet:
            if event == "done":
                self._timing(kw["compile_seconds"], sys.stderr)
            return
        if self.bar is not None:
            if event == "epoch_end":
                self.bar.set_postfix(test_loss=f"{kw['test_loss']:.4f}", acc=f"{100 * kw['accuracy']:.1f}%")
                self.bar.update(1)
            if event == "done":
                self.bar.close()
                self._timing(kw["compile_seconds"], self.out)
            return
        if event == "epoch_start":
            print(metrics.epoch_header(kw["epoch"]), file=self.out)
        elif event == "train_losses":
            batches = kw["batches"]
            for b in range(0, len(kw["losses"]), 100):
                current = b * c.batch_size + int(batches.sizes[b])
                print(metrics.train_progress_line(kw["losses"][b], current, kw["size"]), file=self.out)
        elif event == "train_progress":  # torchref reports as it goes
            print(metrics.train_progress_line(kw["loss"], kw["current"], kw["size"]), file=self.out)
        elif event == "epoch_end":
            print(metrics.test_summary_lines(kw["accuracy"], kw["test_loss"]), file=self.out)
        elif event == "done":
            print("Done!", file=self.out)
            self._timing(kw["compile_seconds"], self.out)
        self.out.flush()

    def _timing(self, compile_seconds: float, out) -> None:
        if not self.train_seconds:
            print(f"nothing to train: the checkpoint already holds {self.config.epochs}+ epochs", file=out)
            return
        steady = self.train_seconds[1:] or self.train_seconds
        compiled = f"compile: {compile_seconds:.2f} s; " if compile_seconds else ""
        print(f"{compiled}train epoch (steady state, median of {len(steady)}): "
              f"{statistics.median(steady):.3f} s", file=out)


class Interrupts:
    """While active, SIGINT/SIGTERM only set `signum`; training stops at the next epoch
    boundary (a second SIGINT stops at once)."""

    def __enter__(self):
        import signal

        self.signum, self.previous = None, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def epoch_hook(save, config, interrupts: Interrupts, prog: str, any_process=lambda flag: flag):
    """After each epoch: checkpoint every --checkpoint-every epochs, and on an interrupt
    checkpoint and stop with a one-line message saying how to resume. `any_process` makes
    every process of a data-parallel run see an interrupt any of them got."""
    import signal

    from jaxtrain.errors import Interrupted

    def on_epoch_end(epochs_done, state, record):
        interrupted = any_process(interrupts.signum is not None)
        if interrupted and interrupts.signum is None:
            interrupts.signum = signal.SIGTERM  # another process was told to stop
        if save is not None and (interrupted or epochs_done % config.checkpoint_every == 0
                                 or epochs_done == config.epochs):
            save(epochs_done, state, record)
        if interrupted:
            name = signal.Signals(interrupts.signum).name
            if save is None:
                raise Interrupted(f"{name} after epoch {epochs_done}; no --checkpoint-dir, nothing saved",
                                  interrupts.signum)
            raise Interrupted(f"{name} after epoch {epochs_done}; checkpoint saved in {config.checkpoint_dir}; "
                              f"resume with: {prog} train <same flags> --resume", interrupts.signum)

    return on_epoch_end
