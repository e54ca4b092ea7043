"""Layer 7, the command line: ``kernelsup run|check|exec|status|...``, a thin shell over
the library. May import every layer below it.
"""

from kernelsup.cli.main import main

__all__ = ["main"]
