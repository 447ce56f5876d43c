"""``python -m koru.simulations --seed 42 --nodes 5 --duration 1h --faults default``."""

import sys

from ._cli import main

sys.exit(main())
