from torchref.cli import main

raise SystemExit(main())
