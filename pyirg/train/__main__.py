"""``python -m pyirg.train``, as the single-file module allowed before it became a package."""

from pyirg.train.cli import main

raise SystemExit(main())
