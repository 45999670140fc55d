"""The README's main command, on the embedded broker it falls back to without mosquitto."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from compiler.fleet.broker import EmbeddedBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.recipe.demo import run_demo


def test_embedded_broker_relays_retained_and_qos1() -> None:
    broker = EmbeddedBroker().start()
    try:
        publisher = connect(BrokerAddress(broker.host, broker.port))
        publisher.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
        got = threading.Event()
        received: list[bytes] = []
        subscriber = connect(BrokerAddress(broker.host, broker.port))
        subscriber.on_message = lambda _c, _u, msg: (received.append(msg.payload), got.set())
        subscriber.subscribe("t/#", qos=1)
        assert got.wait(10) and received == [b"kept"]
        disconnect(publisher)
        disconnect(subscriber)
    finally:
        broker.stop()


def test_demo_end_to_end_on_embedded_broker(tmp_path: Path) -> None:
    outcome = run_demo(tmp_path, digits=20, prefer_embedded=True)
    assert outcome.results >= 50
    assert outcome.accuracy >= 0.9


def test_readme_demo_command_from_a_fresh_folder(tmp_path: Path) -> None:
    """What a newcomer runs: `edgewise demo` (what `./dev demo` execs) with its default
    arguments, from a folder where `demo-out/` does not exist yet, so every path is relative."""
    edgewise = Path(sys.executable).with_name("edgewise")
    done = subprocess.run(
        [str(edgewise), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    summary = re.search(r"== done: (\d+) results, accuracy ([0-9.]+)", done.stdout)
    assert summary, output[-3000:]
    assert int(summary.group(1)) >= 100 and float(summary.group(2)) >= 0.9
    # Not a terminal: progress bars stay out of the log.
    assert "it/s]" not in output and "step/s]" not in output
