"""What a shell user expects of both commands: help on every option with its default shown,
``--version``, ``-v`` before or after the subcommand, completion scripts, exit codes that tell
usage (2) from a file's content (65) and a missing extra (69), ``--json`` as one object, and
the broker password from a file or the environment."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import _parser as agent_parser
from agent.contract import generate_keypair
from compiler.cli import _parser as edgewise_parser
from compiler.cli import main
from compiler.cli.common import PASSWORD_ENV, broker_password

REPO = Path(__file__).resolve().parents[1]


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    """Every option and positional of ``parser`` and its subcommands, named by command path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, f"{path} {name}")
        else:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [("edgewise", edgewise_parser()), ("edgewise-agent", agent_parser())]


def test_every_option_of_both_commands_has_help() -> None:
    bare = [
        name for prog, parser in parsers() for name, action in walk(parser, prog) if not action.help
    ]
    assert not bare, f"options without help=: {bare}"


def test_every_help_page_renders() -> None:
    """Each command's and subcommand's --help formats (a stray % in a help line would not)."""
    pages = [sub for _, parser in parsers() for sub in _all_parsers(parser)]
    for page in pages:
        text = page.format_help()
        assert page.prog in text and "(default: None)" not in text
    assert len(pages) >= 25


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["push", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the broker's port (default: 1883)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize("prog", ["edgewise", "edgewise-agent"])
def test_version(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = dict(parsers())[prog]
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {__version__}"


@pytest.mark.parametrize(
    ("prog", "argv"),
    [
        ("edgewise", ["-v", "gc"]),
        ("edgewise", ["gc", "-v"]),
        ("edgewise", ["gc", "--port", "1", "--verbose"]),
        ("edgewise", ["rollout", "list", "-v"]),
        ("edgewise-agent", ["-v", "check-config"]),
        ("edgewise-agent", ["check-config", "-v"]),
    ],
)
def test_verbose_before_or_after_the_subcommand(prog: str, argv: list[str]) -> None:
    assert dict(parsers())[prog].parse_args(argv).verbose is True


def test_verbose_after_the_subcommand_does_not_reset_one_before() -> None:
    assert edgewise_parser().parse_args(["-v", "gc"]).verbose is True
    assert edgewise_parser().parse_args(["gc"]).verbose is False


@pytest.mark.parametrize("prog", ["edgewise", "edgewise-agent"])
@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script(prog: str, shell: str) -> None:
    launcher = "compiler" if prog == "edgewise" else "agent"
    run = subprocess.run(
        [sys.executable, "-m", launcher, "completion", shell],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert prog in run.stdout and "completion" in run.stdout
    assert ("push" if prog == "edgewise" else "check-config") in run.stdout
    if shell == "bash":  # the script parses in the shell it is for
        check = subprocess.run(["bash", "-n"], input=run.stdout, text=True, timeout=30)
        assert check.returncode == 0


@pytest.fixture
def key(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "signing.key", tmp_path / "signing.pub")
    return tmp_path / "signing.key"


def test_exit_codes_tell_usage_from_bad_files(
    key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf model")
    base = ["compile", str(garbage), "--name", "m", "--version", "1.0.0", "--key", str(key)]
    base += ["--out", str(tmp_path / "out")]
    assert main(base) == 65  # the file's content: EX_DATAERR
    assert main([*base, "--max-latency-ms", "5"]) == 2  # options that do not go together
    with pytest.raises(SystemExit) as usage:
        main([*base, "--calibration", "nope"])
    assert usage.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("edgewise") for line in err), err
    assert not (tmp_path / "out").exists()


def test_compile_json_is_one_object(
    key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf model")
    argv = ["compile", str(garbage), "--name", "m", "--version", "1.0.0", "--key", str(key)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--json"]) == 65
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["exit"] == 65 and "model.onnx" in doc["error"]
    assert "compile failed" in out.err


def test_push_json_is_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope-1.0.0"
    assert main(["push", str(missing), "--to", "all", "--port", "1", "--json"]) == 2
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc == {"exit": 2, "error": f"package folder {missing} does not exist"}
    assert out.err.strip() == f"edgewise: package folder {missing} does not exist"


def _broker_args(*argv: str) -> argparse.Namespace:
    return edgewise_parser().parse_args(["gc", *argv])


def test_broker_password_from_a_file_the_environment_or_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret pass\nignored\n")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert broker_password(_broker_args()) is None
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert broker_password(_broker_args()) == "from-env"
    assert broker_password(_broker_args("--password", "flag")) == "flag"
    assert broker_password(_broker_args("--password-file", str(secret))) == "s3cret pass"


def test_broker_password_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    assert main(["gc", "--password-file", str(empty), "--port", "1"]) == 2
    assert "--password-file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as both:
        main(["gc", "--password", "x", "--password-file", str(empty)])
    assert both.value.code == 2


def test_every_password_option_has_a_file_alternative() -> None:
    for prog, parser in parsers():
        commands: dict[str, set[str]] = {}
        for name, _ in walk(parser, prog):
            command, _, option = name.rpartition(" ")
            commands.setdefault(command, set()).add(option)
        for command, options in commands.items():
            if "--password" in options:
                assert "--password-file" in options, command
