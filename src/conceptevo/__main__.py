"""``python -m conceptevo`` (also what ``torchrun -m conceptevo`` runs)."""

import sys

from .cli import main

sys.exit(main())
