"""Operations asked of the deployer by other threads (remote commands, rollouts): each is posted
into the deployer's inbox and runs on its own thread between two messages, so it never races a
deployment; the caller waits for the outcome with a timeout.

A request not yet taken up when the caller stops waiting is cancelled: it never runs, and the
caller is told nothing changed. One already running is waited for to its end (a switch between
installed packages takes a load and a golden check, not a download).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.errors import DeployerBusy

T = TypeVar("T")
POLL_S = 0.25  # how often a waiting caller looks whether the deployer still runs

PENDING, RUNNING, CANCELLED = "pending", "running", "cancelled"


class Request(Generic[T]):
    def __init__(self, operation: Callable[[], T]):
        self._operation = operation
        self._lock = threading.Lock()
        self._state = PENDING
        self._done = threading.Event()
        self._outcome: tuple[T] | None = None
        self._error: Exception | None = None

    def run(self) -> None:
        """On the deployer's thread; never raises (the caller gets what the operation raised)."""
        with self._lock:
            if self._state != PENDING:
                return
            self._state = RUNNING
        try:
            self._outcome = (self._operation(),)
        except Exception as exc:  # handed to the caller, who asked for it
            self._error = exc
        finally:
            self._done.set()

    def wait(self, timeout: float, alive: Callable[[], bool]) -> T:
        """The operation's result, or what it raised; DeployerBusy when the deployer did not take
        it up within ``timeout`` seconds or stopped first (it then never runs)."""
        deadline = time.monotonic() + timeout
        while not self._done.wait(POLL_S):
            if not alive() and not self._done.is_set():
                self._cancel()
                raise DeployerBusy("the deployer stopped before it could answer; nothing changed")
            if time.monotonic() >= deadline and self._cancel():
                raise DeployerBusy(
                    f"the deployer was busy for {timeout:.0f} s (a deployment in progress); "
                    "nothing changed"
                )
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome[0]

    def _cancel(self) -> bool:
        """True when it had not started: now it never will."""
        with self._lock:
            if self._state == PENDING:
                self._state = CANCELLED
            return self._state == CANCELLED
