"""``python -m keypatch``: the command line, as ``keypatch``."""

from keypatch.cli.main import main

raise SystemExit(main())
