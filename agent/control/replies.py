"""A device's answers to commands on its own ``replies`` topic: accepted or rejected, then done
or failed. Over MQTT 5 a reply carries the command's Correlation Data back."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from agent.comms.link import MqttLink
from agent.contract import Topics, clip
from agent.contract.commands import Reply, ReplyState

log = logging.getLogger(__name__)


class Replies:
    def __init__(self, link: MqttLink, topics: Topics, device: str):
        self._link, self._device = link, device
        self.topic = topics.replies(device)
        self.sent: dict[str, int] = {}  # by state, since start

    def send(
        self,
        command_id: str,
        state: ReplyState,
        *,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
        correlation: bytes | None = None,
    ) -> None:
        reply = Reply(
            id=command_id[:64],
            state=state,
            reason=clip(reason) if reason else None,
            result=result,
            at=time.time(),
        )
        message = {**reply.model_dump(mode="json"), "device": self._device}
        payload = json.dumps(message, separators=(",", ":"), default=str).encode()
        self.sent[state] = self.sent.get(state, 0) + 1
        if state in ("rejected", "failed"):
            log.warning("command %s %s: %s", command_id[:64], state, reason)
        # Not retained: a reply answers one operator now; an old one must not greet the next.
        self._link.publish(self.topic, payload, qos=1, correlation=correlation, small=False)
