"""The ``smime-milter`` command: one module per command group."""

from smime_milter.cli.main import main

__all__ = ["main"]
