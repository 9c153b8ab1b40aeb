"""Command-line interface. Each command is a module with ``add_parser(subparsers)``; see ``main.py``."""
