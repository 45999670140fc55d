"""``python -m agent``: the same as the ``edgewise-agent`` command."""

import sys

from agent.launch import main

sys.exit(main())
