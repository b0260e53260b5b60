"""`python -m jaxtrain`: the `jaxtrain` command line (jaxtrain.cli)."""

from jaxtrain.cli import main

raise SystemExit(main())
