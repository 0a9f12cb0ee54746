"""``python -m swarmpull``."""

import sys

from swarmpull.app.cli import main

sys.exit(main())
