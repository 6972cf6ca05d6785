"""`python -m sae` and `torchrun -m sae`: the process entry into the command line.

The command line lives in pipelines/cli.py, the application layer above the pipelines; this
file only starts it and nothing in the library imports it.
"""

from pipelines.cli import main

raise SystemExit(main())
