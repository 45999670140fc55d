"""The loop of ``edgewise results``: results and events from the broker to the terminal and the
sinks, deduplicated, until ``--count`` or ``--timeout``.

With ``--client-id`` (a persistent session) a message is acknowledged to the broker only once
every result in it is written and committed (SQLite, PostgreSQL): a message received but not
handled — the consumer stopped or was interrupted — is sent again next time instead of lost.
``--count`` therefore stops at the end of the batch that reaches the count (it may show up to one
batch more); without ``--client-id`` nothing is kept for the consumer anyway, and it stops at
exactly the count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .results import Deduper, DeviceFeed, IdleTimer, SqliteSink, format_result

if TYPE_CHECKING:
    from .postgres import PostgresSink


class Sinks:
    """``--jsonl``, ``--sqlite`` and ``--postgres``, opened before connecting so a bad path or
    database fails first. :meth:`flush` commits what was written (called at the end of every
    MQTT message, before it is acknowledged)."""

    def __init__(self, jsonl: Path | None, sqlite: Path | None, postgres: str | None = None):
        self._sqlite = SqliteSink(sqlite) if sqlite else None
        self._jsonl: TextIO | None = None
        self._postgres: PostgresSink | None = None
        try:
            if postgres is not None:
                from .postgres import PostgresSink

                self._postgres = PostgresSink(postgres)
            self._jsonl = open(jsonl, "a") if jsonl else None  # noqa: SIM115 - closed in close()
        except BaseException:
            self.close()
            raise

    def write(self, result: dict[str, Any]) -> None:
        if self._sqlite:
            self._sqlite.write(result)
        if self._postgres:
            self._postgres.write(result)
        if self._jsonl:
            self._jsonl.write(json.dumps(result) + "\n")

    def flush(self) -> None:
        if self._sqlite:
            self._sqlite.commit()
        if self._postgres:
            self._postgres.flush()
        if self._jsonl:
            self._jsonl.flush()

    def close(self) -> None:
        try:
            if self._postgres:
                self._postgres.close()
        finally:
            if self._sqlite:
                self._sqlite.close()
            if self._jsonl:
                self._jsonl.close()


# Messages whose rows share one commit when they arrive back to back (Mosquitto sends at most
# 20 unacknowledged QoS 1 messages to a client by default): one commit per message would cap a
# database that syncs each commit at a few hundred messages/s.
HOLD_MESSAGES = 16


class Consumer:
    """Counts what it shows; ``run`` returns when done (KeyboardInterrupt passes through)."""

    def __init__(self, feed: DeviceFeed, sinks: Sinks, as_json: bool, persistent: bool):
        self._feed, self._sinks, self._json, self._persistent = feed, sinks, as_json, persistent
        self.dedupe = Deduper()
        self.shown = 0

    def run(self, count: int | None, timeout: float) -> None:
        idle = IdleTimer(timeout)
        held = 0  # messages handled, their rows not yet committed nor the messages acknowledged
        while not idle.expired and (item := self._feed.next(idle.remaining())) is not None:
            if self._handle(*item):
                idle.renew()
            more = self._feed.in_batch
            if count and self.shown >= count and not (self._persistent and more):
                break
            self._feed.done(hold=True)
            held += 0 if more else 1
            # Back-to-back messages share one commit; the last one waiting ends it.
            if not more and (held >= HOLD_MESSAGES or not self._feed.waiting):
                self._commit()
                held = 0
        self._feed.done(hold=True)
        self._commit()

    def _commit(self) -> None:
        """The rows written so far committed, then their messages acknowledged."""
        self._sinks.flush()
        self._feed.release()

    def _handle(self, kind: str, message: dict[str, Any]) -> bool:
        """Show and store one item; True for a result not seen before."""
        new = kind == "results" and self.dedupe.first_time(str(message.get("id")))
        if kind == "results" and not new:
            return False
        if new:
            self.shown += 1
            self._sinks.write(message)
        if self._json:
            print(json.dumps(message), flush=True)
        elif kind == "results":
            print(format_result(message), flush=True)
        else:
            print(f"[{kind}] {json.dumps(message)}", flush=True)
        return new

    @property
    def summary(self) -> str:
        text = f"{self.shown} results, {self.dedupe.duplicates} duplicates dropped"
        if self._feed.partition is not None:
            text += f", {self._feed.skipped} messages of other partitions skipped"
        return text


def listening(feed: DeviceFeed) -> None:
    """The first line on stderr once subscribed; then, with --partition, what it keeps."""
    print(f"listening on {', '.join(feed.filters)}", file=sys.stderr, flush=True)
    if feed.partition is not None:
        print(feed.partition.describe(), file=sys.stderr, flush=True)


def warn_if_group_unknowable(feed: DeviceFeed, protocol: str) -> None:
    """--group on an MQTT 3.1.1 connection: the broker cannot say whether it has shared
    subscriptions, and RabbitMQ 3.10 and NATS 2.9 grant ``$share/...`` and then deliver nothing."""
    if feed.share_group and protocol != "5":
        print(
            "edgewise: warning: the broker speaks only MQTT 3.1.1, so it cannot say whether it "
            f"has shared subscriptions; some (RabbitMQ, NATS) grant $share/{feed.share_group}/... "
            "and deliver nothing — if no results arrive, use --partition i/n instead of --group",
            file=sys.stderr,
            flush=True,
        )
