"""``edgewise serve --console`` options and ``edgewise console-user``: each bad input is one line
and exit 2, found before anything connects."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest
from helpers import BIN

from compiler.cli.console import CREDENTIAL, console_address


def edgewise(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise"), *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def one_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("value", "address"),
    [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:0", ("::1", 0))],
)
def test_console_address(value: str, address: tuple[str, int]) -> None:
    assert console_address(value) == address


@pytest.mark.parametrize("value", ["", "http", "host:", "70000", "a:-1"])
def test_bad_console_address(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="PORT or HOST:PORT"):
        console_address(value)


def test_a_console_option_without_console_is_refused(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("")
    run = edgewise("serve", "--users", str(users), "--port", "1")
    assert run.returncode == 2
    assert "--users is a console option: add --console" in one_line(run)


def test_packages_without_console_is_checked_not_refused(tmp_path: Path) -> None:
    """--packages alone feeds devices' figures into the reports (the feedback job): allowed,
    and a folder that is not there is one line before anything connects."""
    run = edgewise("serve", "--packages", str(tmp_path / "missing"), "--port", "1")
    assert run.returncode == 2
    assert one_line(run).endswith(f"--packages {tmp_path / 'missing'} is not a folder")


def test_the_console_without_users_says_how_to_make_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    run = edgewise("serve", "--console", "0", "--port", "1", env=env)
    assert run.returncode == 2
    line = one_line(run)
    assert CREDENTIAL in line and "edgewise console-user" in line


def test_https_needs_both_halves(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    run = edgewise("serve", "--console", "0", "--console-cert", str(cert), "--port", "1")
    assert run.returncode == 2
    assert "both --console-cert and --console-key" in one_line(run)


def test_console_user_refuses_a_short_password() -> None:
    run = edgewise("console-user", "ann", "--role", "operator", stdin="short\n")
    assert run.returncode == 2 and "at least 8 characters" in one_line(run)


def test_console_user_lines_load_and_check(tmp_path: Path) -> None:
    from compiler.console.auth import load_users

    password = edgewise("console-user", "ann", "--role", "operator", stdin="correct horse\n")
    token = edgewise("console-user", "grafana", "--token")
    assert password.returncode == 0 and token.returncode == 0, password.stderr + token.stderr
    assert "correct horse" not in password.stdout
    secret = token.stderr.rsplit(" ", 1)[-1].strip()
    users_file = tmp_path / "users"
    users_file.write_text(password.stdout + token.stdout)
    users = load_users(users_file)
    ann = users.check_password("ann", "correct horse")
    assert ann is not None and ann.role == "operator"
    assert users.check_password("ann", "wrong horse") is None
    grafana = users.check_token(secret)
    assert grafana is not None and grafana.role == "viewer"
