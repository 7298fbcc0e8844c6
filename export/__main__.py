"""`python -m export --checkpoint <path|default> --out engines/ [--fp16] [--tensorrt]` (see export/cli.py)."""

import sys

from export.cli import main

if __name__ == "__main__":
    sys.exit(main())
