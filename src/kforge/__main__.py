"""`python -m kforge ...`: the same as the `kforge` console script."""
from kforge.cli.main import main

raise SystemExit(main())
