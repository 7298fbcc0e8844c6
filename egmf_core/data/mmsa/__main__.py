"""`python -m egmf_core.data.mmsa` (see :mod:`egmf_core.data.mmsa.cli`)."""

import sys

from egmf_core.data.mmsa.cli import main

if __name__ == "__main__":
    sys.exit(main())
