"""The spool in front of the outbox, on a real full filesystem (a small tmpfs filled with a
ballast file): what the database cannot take waits in memory, in order, and is written when
space returns; the agent is told when it starts and stops failing, and when to give up."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent.upstream.outbox import Outbox
from agent.upstream.spool import Spool
from small_disk import fill, tmpfs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, disk: Path, memory_bytes: int = 1 << 20, max_failing_s: float = 60):
        self.events: list[dict[str, object]] = []
        self.fatal: list[str] = []
        self.clock = Clock()
        self.spool = Spool(
            lambda: Outbox(disk / "outbox.db"), memory_bytes, max_failing_s, self.events.append,
            self.fatal.append, clock=self.clock,
        )  # fmt: skip

    def retry(self) -> None:
        self.clock.now += 1.5
        self.spool.retry()

    def states(self) -> list[object]:
        return [e["state"] for e in self.events]


def drain(spool: Spool) -> list[bytes]:
    rows = spool.peek(0, 10_000)
    if rows:
        spool.acknowledge(rows[0][0], rows[-1][0])
    return [payload for _, payload in rows]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", size="4m") as folder:
        yield folder


def test_results_wait_in_memory_in_order_while_the_disk_is_full(disk: Path) -> None:
    harness = Harness(disk)
    spool = harness.spool
    for i in range(50):
        spool.append(b"before %d" % i)
    ballast = fill(disk)
    for i in range(2000):
        spool.append(b"during %d" % i)
    assert spool.failing and spool.in_memory > 0 and spool.queued == 2050
    assert harness.states() == ["failing"] and "disk is full" in str(harness.events[0]["error"])
    harness.retry()  # still full: nothing changes, nothing reported again
    assert harness.states() == ["failing"] and spool.errors >= 2
    ballast.unlink()
    harness.retry()
    assert harness.states() == ["failing", "recovered"] and not spool.failing
    assert spool.in_memory == 0 and spool.error is None
    spool.append(b"after")
    got = drain(spool)
    assert got == [b"before %d" % i for i in range(50)] + [
        b"during %d" % i for i in range(2000)
    ] + [b"after"]
    assert spool.queued == 0 and spool.dropped == 0 and not harness.fatal
    spool.close()


def test_acknowledged_results_that_cannot_be_deleted_are_deleted_later(disk: Path) -> None:
    harness = Harness(disk)
    spool = harness.spool
    for i in range(300):
        spool.append(b"x" * 400 + b"%d" % i)
    ballast = fill(disk)
    rows = spool.peek(0, 300)
    spool.acknowledge(rows[0][0], rows[-1][0])  # the broker has them; the disk cannot say so
    assert spool.failing
    ballast.unlink()
    harness.retry()
    assert spool.queued == 0 and not spool.failing
    spool.close()


def test_past_the_memory_bound_the_oldest_held_are_dropped_and_counted(disk: Path) -> None:
    harness = Harness(disk, memory_bytes=1000)
    spool = harness.spool
    ballast = fill(disk)
    for i in range(100):
        spool.append(b"result %03d" % i)  # 10 bytes each: 100 held at most
    assert spool.in_memory == 100
    for i in range(100, 150):
        spool.append(b"result %03d" % i)
    assert spool.in_memory == 100 and spool.dropped == 50
    ballast.unlink()
    harness.retry()
    assert harness.events[-1] == {"type": "outbox", "state": "recovered", "failing_s": 1.5,
                                  "dropped": 50}  # fmt: skip
    assert drain(spool) == [b"result %03d" % i for i in range(50, 150)]
    spool.close()


def test_it_starts_on_a_full_disk_and_opens_the_outbox_when_space_returns(disk: Path) -> None:
    Outbox(disk / "outbox.db").close()  # an agent ran here before
    ballast = fill(disk)
    harness = Harness(disk)
    spool = harness.spool
    assert spool.failing and harness.states() == ["failing"]
    spool.append(b"first")
    assert spool.peek(0, 10) == [] and spool.queued == 1
    ballast.unlink()
    harness.retry()
    assert not spool.failing and drain(spool) == [b"first"]
    spool.close()


def test_no_write_for_max_failing_s_gives_up_once(disk: Path) -> None:
    harness = Harness(disk, max_failing_s=10)
    spool = harness.spool
    spool.append(b"ok")
    fill(disk)
    spool.append(b"held")
    for _ in range(6):
        harness.retry()  # 9 s without a write
    assert harness.fatal == []
    for _ in range(4):
        harness.retry()
    assert len(harness.fatal) == 1 and "no write succeeded for 10 s" in harness.fatal[0]
    spool.close()


def test_a_database_that_is_not_one_is_not_taken_for_a_full_disk(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        Harness(tmp_path)
