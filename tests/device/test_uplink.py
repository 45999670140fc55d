"""The uplink's hold on acknowledged batches: what a dying cluster node acknowledged is sent
again from the next node; on one broker an acknowledgement is final."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from agent.upstream.outbox import Outbox
from agent.upstream.uplink import ResultsUplink


class AckingLink:
    """Stands in for MqttLink: every batch is acknowledged at once; ``reconnect()`` is a new
    connection (another node)."""

    max_packet = 1 << 20

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()
        self.epoch = 1
        self.sent: list[bytes] = []
        self._on_ack: list = []
        self._mid = 0

    def on_ack(self, handler) -> None:  # type: ignore[no-untyped-def]
        self._on_ack.append(handler)

    def publish_batch(self, _topic: str, payload: bytes):  # type: ignore[no-untyped-def]
        self._mid += 1
        self.sent.append(payload)
        for handler in self._on_ack:
            handler(self._mid)

        class Info:
            mid = self._mid

        return Info()

    def reconnect(self) -> None:
        self.epoch += 1


@pytest.mark.parametrize(("settle_s", "sent_again"), [(60.0, True), (0.0, False)])
def test_a_batch_acknowledged_just_before_a_lost_connection_is_sent_again(
    tmp_path: Path, settle_s: float, sent_again: bool
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    link = AckingLink()
    uplink = ResultsUplink(
        outbox,
        link,
        "t",
        threading.Event(),
        settle_s=settle_s,  # type: ignore[arg-type]
    )
    outbox.append(b'{"id":"a"}')
    for _ in range(5):
        uplink._step()
    assert link.sent == [b'[{"id":"a"}]']
    assert outbox.queued == (1 if settle_s else 0)  # held while it settles
    link.reconnect()
    for _ in range(5):
        uplink._step()
    assert link.sent.count(b'[{"id":"a"}]') == (2 if sent_again else 1)
    assert uplink.flush(5)  # stopping: the acknowledgement is final
    assert outbox.queued == 0
