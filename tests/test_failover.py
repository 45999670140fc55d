"""Failover across ``[mqtt] urls``: the agent on two real brokers; the one it is on is killed,
it goes to the other and results continue; nothing is lost after dedupe (the outbox re-sends
what the dead broker never acknowledged)."""

from __future__ import annotations

import pytest
from upstream_harness import Consumer, start_agent, wait_until

from compiler.fleet.broker import MosquittoBroker


@pytest.fixture
def brokers():  # type: ignore[no-untyped-def]
    pair = [MosquittoBroker(persistent=True).start() for _ in range(2)]
    yield pair
    for broker in pair:
        broker.close()


def test_failover_to_the_other_broker_loses_nothing(
    brokers, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    first, second = brokers
    urls = ", ".join(f'"mqtt://127.0.0.1:{b.port}"' for b in brokers)
    on_first, on_second = Consumer(first), Consumer(second)
    agent = start_agent(first, compiled, signing_keys, video, tmp_path, mqtt=f"urls = [{urls}]\n")
    try:
        on_first.collect_until(lambda: len(on_first.results) >= 30, 60)
        first.stop()  # the node the agent is on goes away
        on_second.collect_until(lambda: len(on_second.results) >= 30, 60)
        wait_until(
            lambda: f"connected to 127.0.0.1:{second.port} (node 2 of 2" in agent.output(),
            10,
            lambda: agent.output()[-2000:],
        )
    finally:
        assert agent.stop() == 0, agent.output()[-2000:]
    first.start()  # what the first broker acknowledged before it died reaches its consumer
    on_first.take(3)
    expected = agent.results_produced()
    seen = {r["id"]: r for r in [*on_first.results, *on_second.results]}
    if len(seen) < expected:
        on_second.take(10, lambda: len(seen | {r["id"]: r for r in on_second.results}) >= expected)
        seen |= {r["id"]: r for r in on_second.results}
    on_first.close()
    on_second.close()
    seqs = sorted(r["seq"] for r in seen.values())
    assert seqs == list(range(1, expected + 1)), (
        f"missing: {set(range(1, expected + 1)) - set(seqs)}"
    )
