"""``python -m triflow3d.train`` / ``torchrun --nproc_per_node G -m triflow3d.train``: same flags as
``triflow3d train``."""

import sys

from triflow3d.train.cli import main

sys.exit(main())
