"""``python -m resilient``: the same as the ``resilient`` command."""

import sys

from resilient._cli import main

sys.exit(main())
