"""``python -m pyirg.bench``, as the single module allowed before it became a package."""

import sys

from pyirg.bench.cli import main

sys.exit(main())
