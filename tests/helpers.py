"""Helpers the tests share: the agent as a subprocess, and waiting on broker messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


class AgentProcess:
    """The real ``edgewise-agent`` console script as a subprocess."""

    def __init__(
        self,
        config: Path,
        *args: str,
        prelude: list[str] | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        cmd = [*(prelude or [str(BIN / "edgewise-agent")]), "run", "--config", str(config), *args]
        self.log = log or config.with_suffix(".log")
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def results_produced(self) -> int:
        """How many results the agent says it produced, from its last log line after a stop."""
        return int(self.output().split("stopped: ")[1].split(" results")[0])

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush — a power cut as far as the agent can tell."""
        self.proc.kill()
        self.proc.wait(10)
        self._log_file.close()


# The smallest agent config that validates, relative to the folder it is written in.
GOOD_CONFIG = """
[device]
id = "cam-1"
state_dir = "state"

[trust]
public_keys = ["keys/a.pub"]

[source]
kind = "video"
uri = "clip.avi"
"""


def stored_result(device: str, seq: int) -> dict[str, object]:
    """A result as a device publishes it, with every field a results store keeps."""
    return {
        "id": f"{device}:boot1:{seq}", "device": device, "seq": seq, "frame": seq,
        "captured_at": 1795894879.25 + seq, "published_at": 1795894879.5 + seq,
        "model": {"name": "digits-cnn", "version": "1.0.0"}, "label": str(seq % 10),
        "score": 0.9, "latency_ms": {"inference": 0.31, "total": 0.52},
    }  # fmt: skip


def run_edgewise(
    host: str, port: int, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``edgewise ARGS --host HOST --port PORT`` to the end, its output captured."""
    return subprocess.run(
        [str(BIN / "edgewise"), *args, "--host", host, "--port", str(port)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
