"""Every ``edgewise`` subcommand, driven through wrong inputs: a documented exit code, one line on
stderr naming the problem, and never a traceback.

Cases run in-process (``main(argv)``, hundreds of them); the console script itself is checked
for a sample in subprocesses, so what a shell user sees is covered too.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli import main

USAGE, FAILED, DATA = 2, 1, 65  # DATA: a file exists but its content cannot be used

# Wrong in the same way for every subcommand: argparse's own errors, made one line.
GENERIC = [
    (["--bogus"], USAGE),
    (["--bogus=1"], USAGE),
    (["-x"], USAGE),
    (["--verbose=yes"], USAGE),
]


def _closed_port() -> int:
    """A port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory, compiled) -> dict[str, str]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("wrong")
    (root / "file.txt").write_text("not what anyone asked for\n")
    (root / "keys").mkdir()
    main(["keygen", "--out", str(root / "keys")])
    (root / "empty").mkdir()
    (root / "notpkg").mkdir()
    (root / "notpkg" / "manifest.json").write_text("{not json")
    (root / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "bad.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    (root / "fleet").mkdir()
    (root / "fleet" / "fleet.json").write_text("[1, 2")
    return {
        "tmp": str(root), "file": str(root / "file.txt"), "key": str(root / "keys/signing.key"),
        "pub": str(root / "keys/signing.pub"), "keys": str(root / "keys"),
        "empty": str(root / "empty"), "notpkg": str(root / "notpkg"),
        "npz": str(root / "bad.npz"), "onnx": str(root / "bad.onnx"),
        "fleet": str(root / "fleet"), "port": str(_closed_port()),
        "pkg": str(compiled.package.root),
    }  # fmt: skip


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    return [arg.format(**places) for arg in argv]


TRAIN = [
    (["train"], USAGE),
    (["train", "--out"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", "0"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", "1.5"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", "abc"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", "-0.1"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", "nan"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", "inf"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--labeled-fraction", ""], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--pretrain-epochs", "-1"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--pretrain-epochs", "x"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--pretrain-epochs", "1.5"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--epochs", "0"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--epochs", "-3"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--epochs", "1e3"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--seed", "-1"], USAGE),
    (["train", "--out", "{tmp}/m.pt", "--seed", ""], USAGE),
    (["train", "--out", "{file}/m.pt"], USAGE),
    (["train", "--out", "{tmp}/missing/sub/m.pt"], USAGE),
    (["train", "--out", "{empty}"], USAGE),
    (["train", "--out", ""], USAGE),
    (["train", "--out", "{tmp}/m.pt", "stray"], USAGE),
]

KEYGEN = [
    (["keygen"], USAGE),
    (["keygen", "--out"], USAGE),
    (["keygen", "--out", ""], USAGE),
    (["keygen", "--out", "   "], USAGE),
    (["keygen", "--out", "{file}"], USAGE),
    (["keygen", "--out", "{file}/sub"], USAGE),
    (["keygen", "--out", "{keys}"], USAGE),  # a key is there: replacing it needs --force
    (["keygen", "--out", "/dev/null"], USAGE),
    (["keygen", "--out", "{tmp}/k", "--force=yes"], USAGE),
    (["keygen", "--out", "{tmp}/k", "stray"], USAGE),
    (["keygen", "--out", "{tmp}/k", "--name", "x"], USAGE),
    (["keygen", "--force"], USAGE),
    (["keygen", "--out", "{tmp}/k", "--out"], USAGE),
    (["keygen", "-o", "{tmp}/k"], USAGE),
    (["keygen", "--out={file}"], USAGE),
    (["keygen", "--out", "{keys}", "--forc"], USAGE),  # --forc is not a prefix argparse guesses
    (["keygen", "out"], USAGE),
    (["keygen", "--out", "{file}/a/b/c"], USAGE),
    (["keygen", "--out", "{keys}/signing.key"], USAGE),
    (["keygen", "--out", "{keys}/signing.pub/x"], USAGE),
    (["keygen", "--keys", "{tmp}"], USAGE),
]

CERTS = [
    (["certs"], USAGE),
    (["certs", "--out"], USAGE),
    (["certs", "--out", ""], USAGE),
    (["certs", "--out", "{file}"], USAGE),
    (["certs", "--out", "{tmp}/c1"], USAGE),  # no --broker-name for a new broker certificate
    (["certs", "--out", "{tmp}/c2", "--broker-name", "b", "--device", ""], USAGE),
    (["certs", "--out", "{tmp}/c3", "--broker-name", "b", "--device", "a b"], USAGE),
    (["certs", "--out", "{tmp}/c4", "--broker-name", "b", "--device", "../x"], USAGE),
    (["certs", "--out", "{tmp}/c5", "--broker-name", "b", "--device", "cam:bad group"], USAGE),
    (["certs", "--out", "{tmp}/c6", "--broker-name", "b", "--device", "#"], USAGE),
    (["certs", "--out", "{tmp}/c6", "--broker-name", "b", "--device", "cam.1"], USAGE),
    (["certs", "--out", "{tmp}/c7", "--broker-name", "b", "--device", "cam+1"], USAGE),
    (["certs", "--out", "{tmp}/c8", "--broker-name", "b", "--device", "cam/1"], USAGE),
    (["certs", "--out", "{tmp}/c9", "--broker-name", "b", "--topic-root", "#"], USAGE),
    (["certs", "--out", "{tmp}/c9", "--broker-name", "b", "--topic-root", "a/+/b"], USAGE),
    (["certs", "--out", "{tmp}/c9", "--broker-name", "b", "--topic-root", ""], USAGE),
    (["certs", "--out", "{tmp}/c9", "--broker-name", "b", "--topic-root", "$SYS"], USAGE),
    (["certs", "--out", "{fleet}", "--broker-name", "b"], USAGE),  # fleet.json is garbage
    (["certs", "--out", "{file}/sub", "--broker-name", "b"], USAGE),
    (["certs", "--out", "{tmp}/c10", "--broker-name"], USAGE),
    (["certs", "--out", "{tmp}/c11", "--device"], USAGE),
    (["certs", "--broker-name", "b"], USAGE),
]

COMPILE_OK = ["--name", "d", "--version", "1.0.0", "--key", "{key}", "--out", "{tmp}/pk"]
COMPILE = [
    (["compile"], USAGE),
    (["compile", "{file}"], USAGE),
    (["compile", "{file}", *COMPILE_OK], DATA),  # not a model in any format
    (["compile", "{onnx}", *COMPILE_OK], DATA),
    (["compile", "{tmp}/missing.onnx", *COMPILE_OK], USAGE),
    (["compile", "no.such.module:factory", *COMPILE_OK], USAGE),
    (["compile", "{onnx}", *COMPILE_OK[:2], "--version", "v1", *COMPILE_OK[4:]], USAGE),
    (["compile", "{onnx}", *COMPILE_OK[:2], "--version", "1.0", *COMPILE_OK[4:]], USAGE),
    (["compile", "{onnx}", *COMPILE_OK[:2], "--version", "01.0.0", *COMPILE_OK[4:]], USAGE),
    (["compile", "{onnx}", "--name", "a/../b", *COMPILE_OK[2:]], USAGE),
    (["compile", "{onnx}", "--name", "Upper", *COMPILE_OK[2:]], USAGE),
    (["compile", "{onnx}", "--name", "", *COMPILE_OK[2:]], USAGE),
    (["compile", "{onnx}", "--name", "x" * 80, *COMPILE_OK[2:]], USAGE),
    (["compile", "{onnx}", *COMPILE_OK[:4], "--key", "{tmp}/nokey", *COMPILE_OK[6:]], USAGE),
    (["compile", "{onnx}", *COMPILE_OK[:4], "--key", "{pub}", *COMPILE_OK[6:]], DATA),
    (["compile", "{onnx}", *COMPILE_OK[:4], "--key", "{file}", *COMPILE_OK[6:]], DATA),
    (["compile", "{onnx}", *COMPILE_OK[:6], "--out", "{file}"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--prune-ratio", "1"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--prune-ratio", "0"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--prune-ratio", "0.5", "--target-macs", "0.5"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--target-macs", "2"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--max-accuracy-drop", "-1"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--calibration", "magic"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--calibration-samples", "0"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--target", "riscv"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--chunk-size", "0"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--recovery-epochs", "-2"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--preprocess", "{tmp}/nope.toml"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--weights", "{tmp}/nope.pt"], USAGE),
    (["compile", "{onnx}", *COMPILE_OK, "--seed", "x"], USAGE),
]

BROKER = ["--host", "127.0.0.1", "--port", "{port}"]


def _broker_cases(command: list[str]) -> list[tuple[list[str], int]]:
    """Wrong broker options, the same for every command that talks to a broker."""
    return [
        ([*command, "--port", "0"], USAGE),
        ([*command, "--port", "70000"], USAGE),
        ([*command, "--port", "http"], USAGE),
        ([*command, "--port"], USAGE),
        ([*command, "--topic-root", "#"], USAGE),
        ([*command, "--topic-root", ""], USAGE),
        ([*command, "--topic-root", "a/+"], USAGE),
        ([*command, "--tls-ca", "{tmp}/no-ca.pem"], USAGE),
        ([*command, "--tls-cert", "{tmp}/no-cert.pem"], USAGE),
        ([*command, "--tls-key", "{tmp}/no-key.pem"], USAGE),
        ([*command, *BROKER], FAILED),  # nothing listens there
        ([*command, "--host", "256.1.1.1", "--port", "{port}"], FAILED),
        ([*command, *BROKER, "--tls-ca", "{file}"], FAILED),  # not a certificate
    ]


PUSH = [
    (["push"], USAGE),
    (["push", "{empty}"], USAGE),
    (["push", "{empty}", "--to", "all", *BROKER], USAGE),  # not a package
    (["push", "{notpkg}", "--to", "all", *BROKER], USAGE),
    (["push", "{tmp}/missing", "--to", "all", *BROKER], USAGE),
    (["push", "{file}", "--to", "all", *BROKER], USAGE),
    (["push", "{empty}", "--to", "everyone"], USAGE),
    (["push", "{empty}", "--to", "device:"], USAGE),
    (["push", "{empty}", "--to", "device:a/b"], USAGE),
    (["push", "{empty}", "--to", "group:#"], USAGE),
    (["push", "{empty}", "--to", "device:cam.1"], USAGE),  # RabbitMQ and NATS cannot carry '.'
    (["push", "{empty}", "--to", "group:lobby.east"], USAGE),
    (["push", "{empty}", "--to", ""], USAGE),
    (["push", "{empty}", "--to", "all", "--key"], USAGE),
    *_broker_cases(["push", "{pkg}", "--to", "all"]),
]

RESULTS = [
    (["results", "--count", "x", *BROKER], USAGE),
    (["results", "--timeout", "soon", *BROKER], USAGE),
    (["results", "--jsonl"], USAGE),
    (["results", "--device", "a/b", *BROKER], USAGE),
    (["results", "--device", "#", *BROKER], USAGE),
    (["results", "--device", "cam.1", *BROKER], USAGE),
    (["results", "--group", "", *BROKER], USAGE),
    (["results", "--group", "a/b", *BROKER], USAGE),
    (["results", "stray", *BROKER], USAGE),
    (["results", "--json=1"], USAGE),
    (["results", "--postgres"], USAGE),
    (["results", "--postgres", "", *BROKER], USAGE),
    (["results", "--postgres", "not a dsn", *BROKER], USAGE),
    (["results", "--postgres", "postgresql://[bad", *BROKER], USAGE),
    (["results", "--postgres", "host=127.0.0.1 port=many", *BROKER], USAGE),
    # Nothing listens there: refused before the broker is tried (the password is not printed).
    (["results", "--postgres", "host=127.0.0.1 port={port} password=s3cret", *BROKER], FAILED),
    (["results", "--postgres", "postgresql://u:s3cret@127.0.0.1:{port}/db", *BROKER], FAILED),
    *_broker_cases(["results", "--timeout", "1"]),
]

FLEET = [
    (["fleet", "--interval", "0"], USAGE),
    (["fleet", "--interval", "-1"], USAGE),
    (["fleet", "--interval", "fast"], USAGE),
    (["fleet", "--interval", "nan"], USAGE),
    (["fleet", "--once=yes"], USAGE),
    (["fleet", "stray"], USAGE),
    (["fleet", "--interval"], USAGE),
    (["fleet", "--host"], USAGE),
    *_broker_cases(["fleet", "--once"]),
]

COMMAND_KEY = ["--key", "{key}"]
COMMAND = [
    (["command"], USAGE),
    (["command", "all", *COMMAND_KEY], USAGE),  # no CMD
    (["command", "all", "ping"], USAGE),  # no --key
    (["command", "everyone", "ping", *COMMAND_KEY], USAGE),
    (["command", "device:", "ping", *COMMAND_KEY], USAGE),
    (["command", "device:a/b", "ping", *COMMAND_KEY], USAGE),
    (["command", "group:#", "ping", *COMMAND_KEY], USAGE),
    (["command", "device:cam.1", "ping", *COMMAND_KEY], USAGE),
    (["command", "all", "Ping", *COMMAND_KEY], USAGE),
    (["command", "all", "ping", "--key", "{tmp}/none.key"], USAGE),
    (["command", "all", "ping", "--key", "{pub}", *BROKER], USAGE),  # the public half
    (["command", "all", "ping", "--key", "{file}", *BROKER], USAGE),
    (["command", "all", "ping", *COMMAND_KEY, "--ttl", "0"], USAGE),
    (["command", "all", "ping", *COMMAND_KEY, "--ttl", "1e9"], USAGE),
    (["command", "all", "ping", *COMMAND_KEY, "--timeout", "0"], USAGE),
    (["command", "all", "ping", *COMMAND_KEY, "--expect", "0"], USAGE),
    (["command", "device:cam-1", "ping", *COMMAND_KEY, "--expect", "2", *BROKER], USAGE),
    (["command", "all", "rate", "max_fps=1", "max_fps=2", *COMMAND_KEY, *BROKER], USAGE),
    (["command", "all", "shadow", "start", "stop", *COMMAND_KEY, *BROKER], USAGE),
    (["command", "all", "rate", "max-fps=1", *COMMAND_KEY, *BROKER], USAGE),
    (["command", "all", "snapshot", *COMMAND_KEY, "--out", "{file}", *BROKER], USAGE),
    *_broker_cases(["command", "all", "ping", *COMMAND_KEY, "--timeout", "1"]),
]

DEMO = [
    (["demo", "--digits", "0"], USAGE),
    (["demo", "--digits", "-5"], USAGE),
    (["demo", "--digits", "many"], USAGE),
    (["demo", "--digits", "2.5"], USAGE),
    (["demo", "--digits", ""], USAGE),
    (["demo", "--digits"], USAGE),
    (["demo", "--workdir"], USAGE),
    (["demo", "--workdir", ""], USAGE),
    (["demo", "--workdir", "{file}"], USAGE),
    (["demo", "--workdir", "{file}/sub"], USAGE),
    (["demo", "--workdir", "/dev/null"], USAGE),
    (["demo", "--embedded-broker=yes"], USAGE),
    (["demo", "stray"], USAGE),
    (["demo", "--embedded"], USAGE),  # an abbreviation: refused, not guessed
    (["demo", "--digits", "1e2"], USAGE),
    (["demo", "--digits", "0x10"], USAGE),
    (["demo", "--work-dir", "x"], USAGE),
    (["demo", "--digits", "10", "--digits"], USAGE),
    (["demo", "--workdir", "{file}/a/b"], USAGE),
    (["demo", "-d", "3"], USAGE),
    (["demo", "--port", "1883"], USAGE),
]

TOP = [
    ([], USAGE),
    (["bogus"], USAGE),
    (["Compile"], USAGE),
    (["--versio"], USAGE),  # an abbreviation of --version: refused, not guessed
]

COMMANDS = {
    "train": TRAIN, "keygen": KEYGEN, "certs": CERTS, "compile": COMPILE, "push": PUSH,
    "results": RESULTS, "fleet": FLEET, "command": COMMAND, "demo": DEMO,
}  # fmt: skip
CASES = [
    (name, argv, code)
    for name, cases in COMMANDS.items()
    for argv, code in [*cases, *(([name, *extra], c) for extra, c in GENERIC)]
] + [("top", argv, code) for argv, code in TOP]


def _run(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits by itself
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def test_every_subcommand_has_at_least_25_wrong_inputs() -> None:
    for name, cases in COMMANDS.items():
        assert len(cases) + len(GENERIC) >= 25, name


@pytest.mark.parametrize(
    ("command", "argv", "code"), CASES, ids=[" ".join(c[1]) or "(none)" for c in CASES]
)
def test_wrong_input_gets_one_line_and_an_exit_code(
    command: str, argv: list[str], code: int, places: dict[str, str], capfd
) -> None:  # type: ignore[no-untyped-def]
    got, out, err = _run(_fill(argv, places), capfd)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgewise"), err
    assert got == code, (got, err)
    assert "s3cret" not in out + err
    assert not Path(places["tmp"], "pk").exists()  # a refused compile leaves nothing behind


@pytest.mark.parametrize(
    "argv",
    [
        ["compile", "{onnx}", *COMPILE_OK],
        ["push", "{notpkg}", "--to", "all", *BROKER],
        ["results", "--timeout", "1", *BROKER],
        ["keygen", "--out", "{file}"],
        ["demo", "--digits", "0"],
    ],
)
def test_the_console_script_prints_one_line(argv: list[str], places: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("edgewise")
    done = subprocess.run(
        [str(script), *_fill(argv, places)], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.returncode in (USAGE, FAILED, DATA)
