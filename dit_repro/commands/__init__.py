"""One module per ``dit-repro`` subcommand; each exposes ``register(subparsers)``."""
