"""Runs ``edgewise-agent`` with a deployer that dies on its first deploy message in a way its
boundary cannot catch (BROKEN_DEPLOYER=crash: a BaseException reaches the thread's top;
=vanish: its run() returns, the thread ends without a word). Usage: python THIS AGENT-ARGS..."""

import os
import sys

import agent.delivery.deployer


class Fatal(BaseException):
    """Not an Exception: nothing in the deployer catches it."""


def crash(self, topic, payload):  # type: ignore[no-untyped-def]
    raise Fatal("deployer broken on purpose")


def vanish(self):  # type: ignore[no-untyped-def]
    while self._inbox.get(timeout=0.5) is None:
        pass


if os.environ["BROKEN_DEPLOYER"] == "crash":
    agent.delivery.deployer.Deployer._handle = crash  # type: ignore[method-assign]
else:
    agent.delivery.deployer.Deployer.run = vanish  # type: ignore[method-assign]
from agent.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
