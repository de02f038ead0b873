"""``python -m reparam`` (used by ``torchrun -m reparam ...``)."""

import sys

from reparam.app.cli import main

sys.exit(main())
