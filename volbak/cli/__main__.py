"""`python -m volbak.cli` (the tests' signal runs use it)."""

import sys

from ..entry import main

sys.exit(main())
