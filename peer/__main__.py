"""``python -m peer``: the same as ``swarmpull peer``."""

import sys

from swarmpull.cli import main

sys.exit(main(["peer", *sys.argv[1:]]))
