"""serve's DeviceTap: one subscription to every status and telemetry, handed on to the jobs
that listen (the console), with what came before a listener replayed to it."""

from __future__ import annotations

from compiler.fleet.serve import DeviceTap


def test_a_late_listener_gets_the_latest_of_each_topic_then_what_comes() -> None:
    tap = DeviceTap()
    tap.deliver("d/cam-1/status", b"old", True)
    tap.deliver("d/cam-1/status", b"new", False)
    tap.deliver("d/cam-2/telemetry", b"t", True)
    tap.deliver("d/cam-3/status", b"gone", True)
    tap.deliver("d/cam-3/status", b"", True)  # cleared: nothing to replay
    heard: list[tuple[str, bytes, bool]] = []
    tap.listen(lambda *message: heard.append(message))
    assert heard == [("d/cam-1/status", b"new", False), ("d/cam-2/telemetry", b"t", True)]
    tap.deliver("d/cam-2/telemetry", b"", False)
    assert heard[-1] == ("d/cam-2/telemetry", b"", False)  # a clear is passed on


def test_a_failing_listener_does_not_stop_the_others(caplog) -> None:  # type: ignore[no-untyped-def]
    tap, heard = DeviceTap(), []

    def broken(topic: str, payload: bytes, retained: bool) -> None:
        raise RuntimeError("a bug")

    tap.listen(broken)
    tap.listen(lambda topic, payload, retained: heard.append(payload))
    tap.deliver("d/cam-1/status", b"x", False)
    assert heard == [b"x"]
    assert "listener failed on d/cam-1/status" in caplog.text
