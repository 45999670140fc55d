"""Runs the agent's CLI or pytest with ``torch`` and ``compiler`` made unimportable, then proves
neither was loaded (exit 3 if one was).

    python without_torch.py agent AGENT-ARGS...     edgewise-agent
    python without_torch.py pytest PYTEST-ARGS...   a test run (tests/device/)
"""

import importlib.abc
import sys

BLOCKED = ("torch", "compiler")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"the agent must not import {fullname}")
        return None


sys.meta_path.insert(0, Blocker())
what, args = sys.argv[1], sys.argv[2:]
if what == "agent":
    from agent.cli import main

    code = main(args)
else:
    import pytest

    code = int(pytest.main(args))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(f"BLOCKED-MODULES-LOADED={loaded}", flush=True)
sys.exit(code if not loaded else 3)
