"""``python -m pyirg`` is the ``pyirg`` console command."""

import sys

from pyirg.cli import main

sys.exit(main())
