"""Runs ``edgewise-agent`` with ``torch`` and ``compiler`` made unimportable, then proves neither
was loaded. Usage: python agent_without_torch.py AGENT-ARGS..."""

import importlib.abc
import sys

BLOCKED = ("torch", "compiler")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"the agent must not import {fullname}")
        return None


sys.meta_path.insert(0, Blocker())
from agent.cli import main  # noqa: E402

code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(f"BLOCKED-MODULES-LOADED={loaded}", flush=True)
sys.exit(code if not loaded else 3)
