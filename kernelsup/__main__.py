"""``python -m kernelsup`` is the ``kernelsup`` command."""

import sys

from kernelsup.cli import main

sys.exit(main())
