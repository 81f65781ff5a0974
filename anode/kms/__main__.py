"""``python -m anode.kms serve --config FILE`` (the same as ``anode kms serve``)."""

import sys

from anode.kms.cli import main

sys.exit(main())
