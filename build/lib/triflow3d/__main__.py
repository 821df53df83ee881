import sys

from triflow3d.cli import main

sys.exit(main())
