"""Parity: proof that a JAX port trains as its PyTorch original does, and where it does not.

One file per job: `mapping` (torch state_dict <-> Flax params/buffers, by layer
type and call order), `runners` (the four runs: JAX and torch in float32 and
float64, on one batch plan), `criteria` (the three-part verdict), `localise`
(replay to the first differing stage and layer), `diagnose` (the porting trap
that signature means), `report` (JSON, table, picture), `check` (`check_port`,
and `check_parity` for the tutorial, which ties them together).
"""

from jaxtrain.errors import PortMappingError
from jaxtrain.parity.check import check_parity, check_port, run_and_print
from jaxtrain.parity.report import ParityReport, plot

__all__ = ["check_port", "check_parity", "run_and_print", "ParityReport", "PortMappingError", "plot"]
