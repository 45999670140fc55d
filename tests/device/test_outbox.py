"""The outbox on its own: order, acknowledgement, the cap, and surviving a reopen."""

from __future__ import annotations

from pathlib import Path

from agent.upstream.outbox import Outbox


def payload(i: int) -> bytes:
    return b'{"seq":%d}' % i


def test_fifo_order_and_acknowledgement(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(10):
        box.append(payload(i))
    rows = box.peek(0, 4)
    assert [p for _, p in rows] == [payload(i) for i in range(4)]
    assert [p for _, p in box.peek(rows[-1][0], 100)] == [payload(i) for i in range(4, 10)]
    box.acknowledge(rows[0][0], rows[-1][0])
    assert box.queued == 6
    assert [p for _, p in box.peek(0, 100)] == [payload(i) for i in range(4, 10)]


def test_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=50)
    for i in range(200):
        box.append(payload(i))
    assert box.queued <= 50
    assert box.dropped == 200 - box.queued
    kept = [p for _, p in box.peek(0, 1000)]
    assert kept == [payload(i) for i in range(200 - box.queued, 200)], "the newest are kept"


def test_byte_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=1000)
    for i in range(100):
        box.append(b"x" * 100 + payload(i))
    assert sum(len(p) for _, p in box.peek(0, 1000)) <= 1000
    assert box.dropped > 0 and box.peek(0, 1000)[-1][1].endswith(payload(99))


def test_contents_and_drop_count_survive_a_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=5)
    for i in range(8):
        box.append(payload(i))
    box.close()
    again = Outbox(tmp_path / "o.db", max_rows=5)
    assert again.dropped == 8 - again.queued
    assert again.peek(0, 10)[-1][1] == payload(7)
    again.append(payload(8))
    assert again.peek(0, 10)[-1][1] == payload(8)
