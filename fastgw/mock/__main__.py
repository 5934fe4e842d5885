"""``python -m fastgw.mock [--host H] [--port P] ...``: the mock upstream alone."""

import sys

from fastgw.mock.upstream import main

sys.exit(main())
