import sys

from litewhisper.cli import main

sys.exit(main())
