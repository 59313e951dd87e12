"""``python -m nous_twisted``: the ``nous-twisted`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
