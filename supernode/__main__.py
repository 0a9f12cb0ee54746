"""``python -m supernode``: the same as ``swarmpull supernode``."""

import sys

from swarmpull.cli import main

sys.exit(main(["supernode", *sys.argv[1:]]))
