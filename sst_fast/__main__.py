"""``python -m sst_fast`` is ``sst-fast``."""

import sys

from .cli import main

sys.exit(main())
