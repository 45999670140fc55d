"""Which broker to try next, and after how long: the link's failover across ``[mqtt] urls``.

On a lost connection or a failed connect the next node is tried (round robin), after an
exponential backoff from ``MIN_DELAY_S`` doubling up to the configured cap, each wait jittered by
±``JITTER`` so a fleet that lost the same node does not reconnect in step. A successful CONNACK
resets the backoff."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

MIN_DELAY_S = 1.0
JITTER = 0.2


class Failover:
    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        max_delay_s: float,
        uniform: Callable[[float, float], float] = random.uniform,
    ):
        if not endpoints:
            raise ValueError("no broker to connect to")
        self.endpoints = tuple(endpoints)
        self.max_delay_s = max_delay_s
        self._uniform = uniform
        self._index = 0
        self._failures = 0

    @property
    def current(self) -> tuple[str, int]:
        return self.endpoints[self._index]

    @property
    def where(self) -> str:
        host, port = self.current
        node = (
            f" (node {self._index + 1} of {len(self.endpoints)})" if len(self.endpoints) > 1 else ""
        )
        return f"{host}:{port}{node}"

    def connected(self) -> None:
        self._failures = 0

    def failed(self) -> float:
        """Move to the next node; returns the seconds to wait before trying it."""
        self._index = (self._index + 1) % len(self.endpoints)
        base = min(self.max_delay_s, MIN_DELAY_S * 2**self._failures)
        self._failures = min(self._failures + 1, 32)
        return max(0.05, base * self._uniform(1 - JITTER, 1 + JITTER))
