"""``python -m anode.keyserver serve --config FILE`` (the same as ``anode keyserver serve``)."""

import sys

from anode.keyserver.cli import main

sys.exit(main())
