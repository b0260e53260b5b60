"""`python -m jaxtrain.parity.corpus`: run the verdict corpus (see the package's docstring)."""

from jaxtrain.parity.corpus import main

raise SystemExit(main())
