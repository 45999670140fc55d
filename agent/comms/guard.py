"""The boundary every handler of a subscribed topic runs inside.

Whatever a message makes a handler raise — a bad payload, a bug it reaches — becomes a counted
rejection with a short reason, and the thread carries on: one message must never silence the
deployer (it once died on ``"sig": null`` and, the message being retained, again on every
restart). Rejections are rate-limited, so a flood of garbage cannot become a flood of events;
those held back are counted and the next one reported says how many.

Named errors (the wire contract's and the agent's) are expected and their message is the reason;
anything else is a bug: the reason names only its type, the log has the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.contract import ContractError, clip
from agent.errors import AgentError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
# (reason, detail): detail holds what the caller passed to reject(), plus ``suppressed``.
Sink = Callable[[str, dict[str, Any]], None]
EXPECTED = (ContractError, AgentError, OSError)


@dataclass(frozen=True)
class Oversize:
    """What a paho callback keeps instead of a payload over its limit: never the bytes."""

    size: int
    summary: str  # size and sha256 prefix, from reasons.summarise
    limit: int
    setting: str  # the config key that sets the limit, for the reason

    def describe(self) -> str:
        return f"message of {self.summary} is over the {self.limit}-byte limit ({self.setting})"


class RateLimit:
    """A token bucket: ``burst`` at once, then one every ``every_s`` seconds."""

    def __init__(self, burst: int, every_s: float, clock: Callable[[], float] = time.monotonic):
        self._burst, self._every_s, self._clock = burst, every_s, clock
        self._tokens = float(burst)
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._every_s)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def reason_for(exc: BaseException) -> str:
    """The reason a rejection reports for an exception."""
    if isinstance(exc, EXPECTED):
        return clip(str(exc) or type(exc).__name__)
    return f"internal error ({type(exc).__name__}); the agent's log has the details"


class Boundary:
    """Runs handlers; turns what they raise into rejections sent to ``sink``, at most ``burst``
    at once and then one every ``every_s`` seconds."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        *,
        burst: int = 20,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.rejected = 0  # every rejection, reported or not
        self._sink = sink
        self._rate = RateLimit(burst, every_s, clock)
        self._held_back = 0
        self._lock = threading.Lock()

    def call(self, handler: Callable[..., Any], *args: Any) -> bool:
        """``handler(*args)``; False when it raised (and the rejection was made)."""
        try:
            handler(*args)
            return True
        except Exception as exc:  # the boundary: nothing a message causes may end the thread
            if not isinstance(exc, EXPECTED):
                log.error(
                    "%s: %s handling a message: %s",
                    self.name,
                    type(exc).__name__,
                    clip(exc),
                    exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
                )
            self.reject(reason_for(exc))
            return False

    def wrap(self, handler: MessageHandler) -> MessageHandler:
        """``handler`` as a paho message callback that never raises into paho's thread."""

        def guarded(topic: str, payload: bytes) -> None:
            self.call(handler, topic, payload)

        return guarded

    def reject(self, reason: str, **detail: Any) -> None:
        """Count a rejection and report it unless the rate limit holds it back."""
        reason = clip(reason)
        with self._lock:
            self.rejected += 1
            if not self._rate.allow():
                self._held_back += 1
                log.debug("%s: rejection not reported (rate limit): %s", self.name, reason)
                return
            held_back, self._held_back = self._held_back, 0
        if held_back:
            detail["suppressed"] = held_back
        try:
            self._sink(reason, detail)
        except Exception as exc:  # reporting must not undo the boundary
            log.error("%s: cannot report a rejection: %s", self.name, clip(exc))
