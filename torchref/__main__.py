"""`python -m torchref`: the torch twin's command line (torchref.cli)."""

from torchref.cli import main
from torchref.distributed import exit_process

exit_process(main())
