"""Run the command line: python -m progemu ..."""

import sys

from progemu.cli import main

sys.exit(main())
