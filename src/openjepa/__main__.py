"""``python -m openjepa ...`` (and ``torchrun -m openjepa pretrain ...``)."""

import sys

from .cli.main import main

sys.exit(main())
