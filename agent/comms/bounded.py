"""Containers with a fixed ceiling, for what arrives from the broker faster than it is handled.

A broker can deliver any number of messages; a queue of them is a way to run a device out of
memory. Deploy announcements and model chunks are retained, so only the latest message on a topic
matters: a :class:`Mailbox` keeps one value per topic and a fixed number of topics. Digests of
refused payloads are remembered in a :class:`RecentSet`, which forgets the oldest.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

V = TypeVar("V")


class Mailbox(Generic[V]):
    """The latest value per key, oldest key first. A put replaces what waits under its key, so at
    most ``max_keys`` values are ever held. Thread-safe: paho puts, a worker gets."""

    def __init__(self, max_keys: int):
        self._max_keys = max_keys
        self._items: dict[str, V] = {}
        self._changed = threading.Condition()

    def put(self, key: str, value: V) -> bool:
        """False (and nothing kept) for a new key when ``max_keys`` keys already wait."""
        with self._changed:
            if key not in self._items and len(self._items) >= self._max_keys:
                return False
            self._items.pop(key, None)  # the newest goes last
            self._items[key] = value
            self._changed.notify()
            return True

    def get(self, timeout: float) -> tuple[str, V] | None:
        """The oldest waiting (key, value), or None when nothing came within ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._items), timeout):
                return None
            key = next(iter(self._items))
            return key, self._items.pop(key)

    def pending(self) -> dict[str, V]:
        """What waits now, without taking it."""
        with self._changed:
            return dict(self._items)

    def discard(self, key: str) -> None:
        with self._changed:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._changed:
            self._items.clear()

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)


class RecentSet:
    """A set that keeps its ``capacity`` most recently added members."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._members: OrderedDict[str, None] = OrderedDict()

    def add(self, member: str) -> None:
        self._members.pop(member, None)
        self._members[member] = None
        while len(self._members) > self._capacity:
            self._members.popitem(last=False)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __len__(self) -> int:
        return len(self._members)


class DropOldest(Generic[V]):
    """A FIFO bounded by count and by total size; a put into a full one drops the oldest (and
    counts it in ``dropped``). Thread-safe."""

    def __init__(self, max_items: int, max_bytes: int):
        self._max_items, self._max_bytes = max_items, max_bytes
        self._items: deque[tuple[V, int]] = deque()
        self._bytes = 0
        self._changed = threading.Condition()
        self.dropped = 0

    def put(self, value: V, size: int) -> None:
        with self._changed:
            self._items.append((value, size))
            self._bytes += size
            while len(self._items) > self._max_items or (
                self._bytes > self._max_bytes and len(self._items) > 1
            ):
                _, gone = self._items.popleft()
                self._bytes -= gone
                self.dropped += 1
            self._changed.notify()

    def get(self, timeout: float) -> V | None:
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._items), timeout):
                return None
            value, size = self._items.popleft()
            self._bytes -= size
            return value

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)
