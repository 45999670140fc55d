"""``python -m compiler``: the same as the ``edgewise`` command."""

import sys

from compiler.launch import main

sys.exit(main())
