"""`python -m torchao_nb ...`: the command line (see cli.py)."""

from .cli import main

raise SystemExit(main())
