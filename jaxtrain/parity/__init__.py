"""Parity: proof that a JAX port trains as its PyTorch original does, and where it does not.

One file per job: `runners` (the four runs: JAX and torch in float32 and
float64, on one batch plan), `criteria` (the three-part verdict), `localise`
(replay to the first differing stage), `report` (JSON, table, picture),
`check` (`check_parity`, which ties them together).
"""

from jaxtrain.parity.check import check_parity, run_and_print
from jaxtrain.parity.report import ParityReport, plot
from jaxtrain.parity.runners import JaxPort

__all__ = ["check_parity", "run_and_print", "ParityReport", "plot", "JaxPort"]
