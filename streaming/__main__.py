"""``python -m streaming``: see :mod:`streaming.cli`."""

from .cli import main

raise SystemExit(main())
