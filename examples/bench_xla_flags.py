"""A/B: jaxtrain's scanned epoch with default XLA CPU settings vs candidate XLA_FLAGS, interleaved in one run.

    python examples/bench_xla_flags.py "--xla_cpu_multi_thread_eigen=false" --rounds 9

Each setting runs in its own worker process (XLA_FLAGS is read once, at start-up);
the rounds alternate A B A B ... after a warm-up epoch. Prints medians and the
per-round ratio B/A. The losses of both are compared too: a flag must not change the math.
"""

import argparse
import statistics

from jaxtrain.bench import Worker
from jaxtrain.config import Config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("flags", help="XLA_FLAGS for B")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    config = Config()
    a, b = Worker("jax_epoch", config, ""), Worker("jax_epoch", config, args.flags)
    a.run("train"), b.run("train")
    times_a, times_b = [], []
    for r in range(args.rounds):
        times_a.append(a.run("train"))
        times_b.append(b.run("train"))
    ratios = [tb / ta for ta, tb in zip(times_a, times_b)]
    print(f"A default     : median {statistics.median(times_a):.3f} s [{min(times_a):.3f}-{max(times_a):.3f}]")
    print(f"B {args.flags}: median {statistics.median(times_b):.3f} s [{min(times_b):.3f}-{max(times_b):.3f}]")
    print(f"B/A per round : median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")
    a.stop(), b.stop()


if __name__ == "__main__":  # the workers are spawned: they re-import this file
    main()
