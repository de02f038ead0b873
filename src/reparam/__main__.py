"""``python -m reparam`` (used by ``torchrun -m reparam ...``)."""

import sys

from .cli import main

sys.exit(main())
