"""Journald priorities: when standard error is the stream systemd names in JOURNAL_STREAM, every
log line starts with <3>/<4>/<6>/<7>, so `journalctl -p err` finds a rejected deployment; any
other standard error keeps plain lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from device_harness import DEVICE, TOPICS, install, send
from helpers import AgentProcess

from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config

LOGGER = """
import logging, sys
from agent.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "verbose", fmt="%(levelname)s %(message)s")
log = logging.getLogger("probe")
log.debug("debug line")
log.info("info line")
log.warning("warning line")
log.error("error line\\nsecond line of it")
log.critical("critical line")
"""


def stream_of(path: Path) -> str:
    """JOURNAL_STREAM as systemd writes it for a stream connected to ``path``."""
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def log_to(path: Path, journal_stream: str | None, verbose: bool = False) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with open(path, "wb") as stderr:
        subprocess.run(
            [sys.executable, "-c", LOGGER, "verbose" if verbose else "quiet"],
            stderr=stderr, env=env, check=True, timeout=60, cwd=Path(__file__).parents[1],
        )  # fmt: skip
    return path.read_text().splitlines()


def test_lines_carry_priorities_when_stderr_is_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    path.touch()
    assert log_to(path, stream_of(path)) == [
        "<6>INFO info line",
        "<4>WARNING warning line",
        "<3>ERROR error line",
        "<3>second line of it",  # journald reads each line as an entry: each keeps <3>
        "<3>CRITICAL critical line",
    ]
    assert log_to(path, stream_of(path), verbose=True)[0] == "<7>DEBUG debug line"


def test_plain_lines_anywhere_else(tmp_path: Path) -> None:
    path, other = tmp_path / "stderr", tmp_path / "journal"
    path.touch()
    other.touch()
    plain = ["INFO info line", "WARNING warning line", "ERROR error line", "second line of it",
             "CRITICAL critical line"]  # fmt: skip
    assert log_to(path, None) == plain
    # Inherited from a parent under systemd, but standard error was redirected since.
    assert log_to(path, stream_of(other)) == plain
    assert log_to(path, "garbage") == plain


def test_a_rejected_deployment_is_an_error_in_the_journal(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE,
    )  # fmt: skip
    log = tmp_path / "journal"
    log.touch()  # AgentProcess truncates it in place: the inode systemd would name stays
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config, log=log, env={**os.environ, "JOURNAL_STREAM": stream_of(log)})
    try:
        assert feed.wait_for("results", 30) is not None, agent.output()
        send(cloud, b"not a signed envelope")
        event = feed.wait_for("events", 30, lambda e: e.get("state") == "rejected")
        assert event is not None, agent.output()
    finally:
        assert agent.stop() == 0, agent.output()
    lines = agent.output().splitlines()
    rejected = [line for line in lines if "rejected deployment" in line]
    assert rejected and all(line.startswith("<3>") for line in rejected), rejected
    assert any(line.startswith("<6>") and "stopped:" in line for line in lines)
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
