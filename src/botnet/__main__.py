"""``python -m botnet``: the ``botnet`` command."""

import sys

from botnet.cli import main

sys.exit(main())
