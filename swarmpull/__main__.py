"""``python -m swarmpull``."""

import sys

from swarmpull.cli import main

sys.exit(main())
