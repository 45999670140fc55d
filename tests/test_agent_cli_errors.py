"""`edgewise-agent` never shows a traceback: every wrong input — a broken config, an optional
package missing, a port taken, a source that is not there, a bad package or video for `bench`,
argparse misuse — is one line on stderr with its documented exit code (2 usage or input,
1 runtime, 78 configuration). Config cases go through both `run` and `check-config`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from forge import body_of, edited
from helpers import BIN, AgentProcess
from helpers import GOOD_CONFIG as GOOD

from agent.contract import generate_keypair
from compiler.fleet.certs import create_ca, issue

TLS = '\n[mqtt]\nurl = "mqtts://broker:8883"\n[mqtt.tls]\nca_file = "tls/ca.crt"\n' \
      'cert_file = "tls/cam-1.crt"\nkey_file = "tls/cam-1.key"\n'  # fmt: skip
VIDEO_SOURCE = 'kind = "video"\nuri = "clip.avi"'
BOTH = ("run", "check-config")


@dataclass
class Case:
    """A wrong input: the config text (or how to break the folder), what the one line names."""

    name: str
    text: str | None  # None: the case makes its own config path
    needle: str
    commands: tuple[str, ...] = BOTH
    code: int = 78
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], Path | None] | None = None  # may return the config path to use


def source(body: str) -> str:
    return GOOD.replace(VIDEO_SOURCE, body)


def shim(folder: Path, module: str) -> dict[str, str]:
    """A PYTHONPATH entry where ``module`` is installed but fails to import."""
    root = folder / "shim"
    (root / module).mkdir(parents=True, exist_ok=True)
    (root / module / "__init__.py").write_text(f"raise ImportError('{module} is broken here')\n")
    return {"PYTHONPATH": str(root)}


def corrupt_outbox(folder: Path) -> None:
    (folder / "state").mkdir()
    (folder / "state" / "outbox.db").write_bytes(b"not a database" * 100)


def not_executable(folder: Path) -> None:
    (folder / "capture.sh").write_text("#!/bin/sh\n")
    (folder / "capture.sh").chmod(0o644)


# fmt: off
CONFIG_CASES = [
    Case("missing file", None, "cannot read config", prepare=lambda f: f / "nowhere.toml"),
    Case("a directory", None, "cannot read config", prepare=lambda f: f),
    Case("bad TOML", "[device\n", "not valid TOML"),
    Case("empty", "", "device: Field required"),
    Case("no device id", GOOD.replace('id = "cam-1"\n', ""), "device.id: Field required"),
    Case("bad device id", GOOD.replace('"cam-1"', '"cam/1"'), "device.id"),
    Case("dotted device id", GOOD.replace('"cam-1"', '"cam.1"'),
         "device.id: 'cam.1' contains '.', which RabbitMQ and NATS cannot carry in a topic; "
         "rename the device (e.g. 'cam-1')"),
    Case("dotted group", GOOD.replace('id = "cam-1"\n', 'id = "cam-1"\ngroups = ["x.y"]\n'),
         "device.groups.0: 'x.y' contains '.'"),
    Case("unknown key", GOOD + "\n[mqtt]\nprot = 1\n", "mqtt.prot"),
    Case("unknown section", GOOD + "\n[camera]\nfps = 1\n", "camera: Extra inputs"),
    Case("wrong type", GOOD + '\n[mqtt]\nport = "high"\n', "mqtt.port"),
    Case("port out of range", GOOD + "\n[mqtt]\nport = 70000\n", "mqtt.port"),
    Case("bad URL scheme", GOOD + '\n[mqtt]\nurl = "http://b:1883"\n', "mqtt.url"),
    Case("mqtts without TLS", GOOD + '\n[mqtt]\nurl = "mqtts://b"\n', "needs [mqtt.tls]"),
    Case("missing trusted key", GOOD.replace("a.pub", "none.pub"), "trust.public_keys.0"),
    Case("key is a certificate", GOOD.replace("keys/a.pub", "tls/ca.crt"), "trust.public_keys.0"),
    Case("TLS key missing", GOOD + TLS.replace("cam-1.key", "gone.key"), "mqtt.tls.key_file"),
    Case("TLS key of the CA", GOOD + TLS.replace("cam-1.key", "ca.key"), "do not load"),
    Case("unknown source kind", GOOD.replace('"video"', '"webcam"'), "source.kind"),
    Case("window on a video", GOOD + "window = 4\n", "apply to kind = 'sensor' only"),
    Case("negative threads", GOOD + "\n[runtime]\nintra_op_threads = -1\n", "intra_op_threads"),
    Case("unknown backend", GOOD + '\n[runtime]\nbackend = "tpu"\n', "runtime.backend"),
    Case("backend not here", GOOD + '\n[runtime]\nbackend = "ort-tensorrt"\n',
         "runtime.backend: ort-tensorrt is not installed here (needs onnxruntime-gpu with "
         "TensorRT); installed: onnxruntime"),
    Case("bad results mode", GOOD + '\n[results]\nmode = "always"\n', "results.mode"),
    Case("state dir is a file", GOOD.replace('"state"', '"clip.avi/state"'), "not a directory"),
    Case("bad env value", GOOD, "$EDGEWISE_MQTT__PORT", env={"EDGEWISE_MQTT__PORT": "high"}),
    Case("unknown env key", GOOD, "$EDGEWISE_MQTT__PROT", env={"EDGEWISE_MQTT__PROT": "1"}),
    Case("prometheus port taken", GOOD + "\n[telemetry]\nprometheus_port = {port}\n",
         "telemetry.prometheus_port: cannot listen on port"),
    Case("no prometheus-client", GOOD + "\n[telemetry]\nprometheus_port = 9\n",
         "needs prometheus-client", env={"shim": "prometheus_client"}),
    Case("no pyserial", source('kind = "sensor"\nuri = "serial:///dev/ttyUSB0"'),
         "needs pyserial", env={"shim": "serial"}),
    Case("no picamera2", source('kind = "picamera"'), "python3-picamera2"),
    Case("command without size", source('kind = "command"\ncommand = ["ffmpeg"]'),
         "needs width and height"),
    Case("command quote", source('kind = "command"\ncommand = "ffmpeg -i \'x"'), "cannot split"),
    Case("odd nv12", source('kind = "command"\ncommand = ["x"]\nwidth = 63\nheight = 48\n'
                            'pixel_format = "nv12"'), "even width and height"),
    Case("bad credential", GOOD + TLS.replace("tls/cam-1.key", "nope.key"), "do not load",
         env={"credential": "mqtt-tls-key"}),
    # What only check-config refuses: run starts and reports the source until it appears.
    Case("video missing", GOOD.replace("clip.avi", "gone.avi"), "gone.avi does not exist",
         commands=("check-config",)),
    Case("video is a folder", GOOD.replace("clip.avi", "keys"), "is not a file",
         commands=("check-config",)),
    Case("images missing", source('kind = "images"\nuri = "photos"'), "photos does not exist",
         commands=("check-config",)),
    Case("sensor file missing", source('kind = "sensor"\nuri = "s.csv"'), "s.csv does not exist",
         commands=("check-config",)),
    Case("program not on PATH", source('kind = "command"\ncommand = "rpicam-vid-x -o -"\n'
                                       "width = 64\nheight = 48"), "'rpicam-vid-x' is not on PATH",
         commands=("check-config",)),
    Case("program not executable", source('kind = "command"\ncommand = ["./capture.sh"]\n'
                                          "width = 64\nheight = 48"), "is not executable",
         commands=("check-config",), prepare=not_executable),
    # What only run meets: a runtime failure, exit 1.
    Case("corrupt outbox", GOOD, "cannot open the outbox", commands=("run",), code=1,
         prepare=corrupt_outbox),
    Case("broken onnxruntime", GOOD, "unexpected ImportError", commands=("run",), code=1,
         env={"shim": "onnxruntime"}),
]
# fmt: on


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    generate_keypair(tmp_path / "keys" / "a.key", tmp_path / "keys" / "a.pub")
    issue(create_ca(tmp_path / "tls"), "cam-1", tmp_path / "tls")
    (tmp_path / "clip.avi").write_bytes(b"")
    return tmp_path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (and never answers HTTP)."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def agent(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise-agent"), *map(str, args)], capture_output=True, text=True,
        timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, (result.returncode, output)
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr, result.stderr
    assert result.stderr.startswith("edgewise-agent"), result.stderr


def setup_case(case: Case, folder: Path, port: int) -> tuple[Path, dict[str, str]]:
    config = folder / "agent.toml"
    if case.text is not None:
        config.write_text(case.text.replace("{port}", str(port)))
    if case.prepare is not None:
        config = case.prepare(folder) or config
    env = dict(case.env)
    if "shim" in env:
        env.update(shim(folder, env.pop("shim")))
    if "credential" in env:
        credentials = folder / "credentials"
        credentials.mkdir()
        (credentials / env.pop("credential")).write_text("not a key\n")
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    return config, env


@pytest.mark.parametrize(
    ("case", "command"),
    [(c, command) for c in CONFIG_CASES for command in c.commands],
    ids=[f"{command}: {c.name}" for c in CONFIG_CASES for command in c.commands],
)
def test_wrong_config_is_one_line(case: Case, command: str, folder: Path, taken_port: int) -> None:
    config, env = setup_case(case, folder, taken_port)
    result = agent(command, "--config", config, env=env)
    assert_one_line(result, case.code, case.needle)
    assert result.stdout == ""
    if case.code == 78:
        assert "config error" in result.stderr


USAGE_CASES = [
    (["run", "--config"], "expected one argument"),
    (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["run", "extra"], "unrecognized arguments: extra"),
    (["run", "--max-results", "many"], "'many' is not a whole number"),
    (["run", "--max-results", "0"], "0 is below 1"),
    (["run", "--conf", "agent.toml"], "unrecognized arguments: --conf"),
    (["check-config", "--conf", "agent.toml"], "unrecognized arguments: --conf"),
    (["bench", "--pack", "p", "--source", "v"], "required: --package"),
    (["check-config", "--config"], "expected one argument"),
    (["check-config", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["check-config", "extra"], "unrecognized arguments: extra"),
    (["bench"], "required: --package, --source"),
    (["bench", "--package", "p"], "required: --source"),
    (["bench", "--package", "p", "--source", "v", "--frames", "0"], "0 is below 1"),
    (["bench", "--package", "p", "--source", "v", "--frames", "ten"], "'ten' is not a whole"),
    (["bench", "--package", "p", "--source", "v", "--threads", "-1"], "-1 is below 0"),
    (["bench", "--package", "p", "--source", "v", "--fast"], "unrecognized arguments: --fast"),
    (["bench", "--package", "p", "--source", "v", "--frames", "-5"], "-5 is below 1"),
    (["bench", "--package", "p", "--source", "v", "--frames", "1.5"], "'1.5' is not a whole"),
    (["bench", "--package", "p", "--source", "v", "--threads", "many"], "'many' is not a whole"),
    (["bench", "--package", "p", "--source", "v", "--json=yes"], "ignored explicit argument"),
    (["bench", "--package", "--source", "v"], "expected one argument"),
    (["bench", "--package", "p", "--source"], "expected one argument"),
    (["bench", "--package", "p", "--source", "v", "extra"], "unrecognized arguments: extra"),
    ([], "required: COMMAND"),
    (["serve"], "invalid choice: 'serve'"),
]


@pytest.mark.parametrize(("args", "needle"), USAGE_CASES, ids=[" ".join(a) for a, _ in USAGE_CASES])
def test_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    result = agent(*args)
    assert_one_line(result, 2, needle)
    assert "(see --help)" in result.stderr


# -- bench: bad packages and videos ------------------------------------------------------------


def video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (112, 112))
    for i in range(frames):
        writer.write(np.full((112, 112, 3), i * 20, np.uint8))
    writer.release()
    return path


def package_copy(compiled, tmp_path: Path, change: Callable[[Path], None]) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "pkg"
    shutil.copytree(compiled.package.root, root)
    change(root)
    return root


def rename_input(root: Path) -> None:
    """The manifest names an input the model does not have (bench does not check signatures)."""
    envelope = (root / "manifest.json").read_bytes()
    changed = {**body_of(envelope)["input"], "name": "pixels"}
    (root / "manifest.json").write_bytes(edited(envelope, input=changed))


def model_file(root: Path) -> Path:
    return next(p for p in root.iterdir() if p.suffix == ".onnx")


# fmt: off
BENCH_CASES: list[tuple[str, Callable[[Path], None] | None, str, str]] = [
    # (name, how to break the package (None: no package folder at all), video, what the line says)
    ("package missing", None, "good", "no such folder"),
    ("no manifest", lambda r: (r / "manifest.json").unlink(), "good", "no manifest.json"),
    ("manifest not JSON", lambda r: (r / "manifest.json").write_text("{"), "good",
     "manifest.json is not a package's"),
    ("manifest without fields", lambda r: (r / "manifest.json").write_text('{"manifest": {}}'),
     "good", "manifest.json is not a package's"),
    ("model missing", lambda r: model_file(r).unlink(), "good", "is missing"),
    ("model corrupt", lambda r: model_file(r).write_bytes(b"\x00garbage" * 64), "good",
     "the model does not load"),
    ("input name wrong", rename_input, "good", "do not match the manifest's ['pixels']"),
    ("video missing", lambda r: None, "missing", "no such file"),
    ("video is a folder", lambda r: None, "folder", "no such file"),
    ("video is text", lambda r: None, "text", "cannot read it as a video"),
    ("video without frames", lambda r: None, "empty", "no frames in it"),
    ("package is a file", lambda r: None, "package-file", "no such folder"),
]
# fmt: on


@pytest.mark.parametrize(
    ("change", "kind", "needle"), [c[1:] for c in BENCH_CASES], ids=[c[0] for c in BENCH_CASES]
)
def test_bench_wrong_input_is_one_line_exit_2(
    compiled, tmp_path: Path, change, kind: str, needle: str
) -> None:  # type: ignore[no-untyped-def]
    package = tmp_path / "nowhere" if change is None else package_copy(compiled, tmp_path, change)
    videos = {
        "good": lambda p: video(p, 5),
        "missing": lambda p: p,
        "folder": lambda p: p.mkdir() or p,
        "text": lambda p: p.write_text("not a video\n") and p,
        "empty": lambda p: video(p, 0),
        "package-file": lambda p: video(p, 5),
    }
    clip = videos[kind](tmp_path / "clip.avi")
    if kind == "package-file":
        package = clip
    result = agent("bench", "--package", package, "--source", clip, "--frames", "5")
    assert_one_line(result, 2, needle)
    assert result.stderr.startswith("edgewise-agent: bench: ")


def test_bench_with_a_broken_runtime_is_a_runtime_failure(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip = video(tmp_path / "clip.avi", 5)
    env = shim(tmp_path, "onnxruntime")
    result = agent("bench", "--package", compiled.package.root, "--source", clip, env=env)
    assert_one_line(result, 1, "unexpected ImportError: onnxruntime is broken here")


def test_the_working_commands_still_work(compiled, folder: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (folder / "agent.toml").write_text(GOOD)
    checked = agent("check-config", "--config", folder / "agent.toml")
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert "ok (device cam-1)" in checked.stdout
    clip = video(tmp_path / "clip.avi", 5)
    bench = agent("bench", "--package", compiled.package.root, "--source", clip, "--frames", "20")
    assert bench.returncode == 0, bench.stderr
    assert "frames/s" in bench.stdout and "Traceback" not in bench.stderr


def test_check_config_beside_the_running_agent_and_a_second_agent_on_its_port(
    folder: Path,
) -> None:
    """The container's HEALTHCHECK runs check-config while the agent serves its metrics port:
    that port is the agent's own, not a conflict. A second agent on it is one (exit 78)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = folder / "agent.toml"
    config.write_text(GOOD + f"\n[telemetry]\nprometheus_port = {port}\ninterval_s = 0.2\n")
    first = AgentProcess(config)  # no broker: it keeps retrying, and serves metrics meanwhile
    try:
        deadline = time.monotonic() + 60
        while not metrics_served(port):  # the exporter has no event to wait on: poll its port
            assert first.proc.poll() is None and time.monotonic() < deadline, first.output()
            time.sleep(0.1)
        checked = agent("check-config", "--config", config)
        assert checked.returncode == 0, checked.stderr
        second = agent("run", "--config", config)
        assert_one_line(second, 78, f"telemetry.prometheus_port: cannot serve on port {port}")
    finally:
        assert first.stop() == 0, first.output()


def metrics_served(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return b"edgewise_build_info{" in reply.read()
    except OSError:
        return False
