"""``python -m modelroute_operator``: the same as ``modelroute operator``."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
