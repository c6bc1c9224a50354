"""``python -m verification``: see :mod:`verification.cli`."""

import sys

from .cli import main

sys.exit(main())
