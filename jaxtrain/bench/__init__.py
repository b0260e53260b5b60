"""The speed comparisons, measured in one run: `tutorial` (`jaxtrain bench`: the tutorial's epoch in torch's
loops and jaxtrain's, against the matmul floors) and `port` (`compare_port`, `jaxtrain bench-port`: your own
port against your torch model)."""

from jaxtrain.bench.tutorial import (LAYERS, SETTLE_SECONDS, JaxVariant, TorchVariant, Worker, cpu_name, epoch_flop,
                                     fastest_floor, format_table, gemm_seconds, matmul_peak_gflops, measure, plot,
                                     run_bench, shape_floor, step_gemms, variants_here, write_json)
from jaxtrain.bench.port import compare_port  # after tutorial, which it builds on

__all__ = ["LAYERS", "SETTLE_SECONDS", "JaxVariant", "TorchVariant", "Worker", "compare_port", "cpu_name",
           "epoch_flop", "fastest_floor", "format_table", "gemm_seconds", "matmul_peak_gflops", "measure", "plot",
           "run_bench", "shape_floor", "step_gemms", "variants_here", "write_json"]
