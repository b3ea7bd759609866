"""`python -m trioproxy` is `trioproxy`."""

import sys

from trioproxy.cli import main

sys.exit(main())
