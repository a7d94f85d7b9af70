"""`python -m litewhisper ...` runs the command-line interface."""

import sys

from litewhisper.cli import main

sys.exit(main())
