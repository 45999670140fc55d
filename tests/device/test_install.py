"""deploy/install.sh and the container files, checked without root, network or a docker daemon.

The installer runs under ``--root TMP --no-venv`` so that it touches nothing outside a temporary
folder; what it would do to the live system (users, systemctl) shows in its output instead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
EXAMPLE_CONFIG = REPO / "deploy" / "agent.example.toml"
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("Dockerfile.*"))


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def install_into(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = run("--root", root, "--no-venv", "--board", "pi", *extra)
    assert result.returncode == 0, result.stderr
    return result


def actions(output: str) -> list[str]:
    """The commands a run performed (or, with --dry-run, would perform)."""
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def test_script_parses_and_is_executable() -> None:
    result = subprocess.run(
        ["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert os.access(INSTALL, os.X_OK)


def test_shellcheck_is_clean() -> None:
    # shellcheck is not everywhere; bash -n at least catches syntax errors where it is missing.
    shellcheck = shutil.which("shellcheck")
    command = [shellcheck, str(INSTALL)] if shellcheck else ["bash", "-n", str(INSTALL)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "--uninstall" in result.stdout
    assert "--purge" in result.stdout
    assert run("-h").stdout == result.stdout


@pytest.mark.parametrize("args", [["--frobnicate"], ["--dry-run", "--frobnicate"]])
def test_unknown_option_exits_64_naming_it(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 64
    assert "--frobnicate" in result.stderr


@pytest.mark.parametrize(
    ("args", "named"), [(["--board"], "--board"), (["--board", "rpi5"], "rpi5")]
)
def test_bad_option_value_exits_64(args: list[str], named: str) -> None:
    result = run("--dry-run", *args)
    assert result.returncode == 64
    assert named in result.stderr


def test_live_install_needs_root() -> None:
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and no setpriv to drop privileges")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        prefix = []
    result = subprocess.run(
        [*prefix, "bash", str(INSTALL), "--no-venv"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 77, result.stderr
    assert "root" in result.stderr


def test_install_into_root_twice(tmp_path: Path) -> None:
    first = install_into(tmp_path)

    config = tmp_path / "etc/edgewise/agent.toml"
    assert config.read_bytes() == EXAMPLE_CONFIG.read_bytes()
    unit = tmp_path / "etc/systemd/system/edgewise-agent.service"
    assert unit.read_bytes() == (REPO / "systemd/edgewise-agent.service").read_bytes()
    assert (tmp_path / "var/lib/edgewise").is_dir()
    modes = {
        "etc/edgewise": 0o750,
        "etc/edgewise/keys": 0o750,
        "etc/edgewise/credentials": 0o700,
        "var/lib/edgewise": 0o750,
        "etc/edgewise/agent.toml": 0o640,
    }
    for path, mode in modes.items():
        assert (tmp_path / path).stat().st_mode & 0o777 == mode, path
    # Under --root the host's users and systemd are left alone, only reported.
    assert not any(a.startswith(("useradd", "systemctl", "chown")) for a in actions(first.stdout))
    assert "systemctl enable edgewise-agent" in first.stdout
    assert "useradd" in first.stdout

    config.write_text(
        config.read_text() + '\n# edited on the device\n[results]\nmode = "on_change"\n'
    )
    edited = config.read_bytes()
    second = install_into(tmp_path)
    assert config.read_bytes() == edited
    assert actions(second.stdout) == [], "a second run should have nothing left to do"


def test_install_restores_loosened_modes(tmp_path: Path) -> None:
    install_into(tmp_path)
    credentials = tmp_path / "etc/edgewise/credentials"
    credentials.chmod(0o755)
    install_into(tmp_path)
    assert credentials.stat().st_mode & 0o777 == 0o700


def test_dry_run_jetson_installs_the_gpu_runtime(tmp_path: Path) -> None:
    result = run("--dry-run", "--board", "jetson", "--root", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout + result.stderr
    pip_lines = [a for a in actions(result.stdout) if " -m pip install " in a]
    gpu = [line for line in pip_lines if "onnxruntime-gpu" in line]
    assert gpu, result.stdout
    # The project goes in with --no-deps, or pip would add the CPU onnxruntime next to the GPU one.
    assert any("--no-deps" in line for line in pip_lines)
    assert not any(re.search(r"\bonnxruntime(?!-gpu)[<>=\s]", line + " ") for line in pip_lines)
    assert list(tmp_path.iterdir()) == [], "--dry-run changed something"


def test_dry_run_on_the_live_system_changes_nothing() -> None:
    existed = {p: Path(p).exists() for p in ("/etc/edgewise", "/opt/edgewise", "/var/lib/edgewise")}
    result = run("--dry-run", "--board", "pi")
    assert result.returncode == 0, result.stderr
    pip = [a for a in actions(result.stdout) if " -m pip install " in a]
    assert pip, result.stdout
    assert not any("onnxruntime-gpu" in line or "torch" in line for line in pip)
    assert {p: Path(p).exists() for p in existed} == existed


def test_jetson_dependencies_follow_the_agent_extra(tmp_path: Path) -> None:
    """The Jetson list is pyproject's agent extra with onnxruntime swapped for onnxruntime-gpu."""
    agent_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["agent"]
    expected = {
        re.sub(r"^onnxruntime\b", "onnxruntime-gpu", req).replace(" ", "") for req in agent_extra
    }
    result = run("--dry-run", "--board", "jetson", "--root", tmp_path)
    (deps_line,) = [
        a for a in actions(result.stdout) if " -m pip install " in a and "onnxruntime-gpu" in a
    ]
    words = shlex.split(deps_line)
    listed = {w.replace(" ", "") for w in words[words.index("install") + 1 :] if w[0] != "-"}
    assert listed == expected


def test_pi_gets_picamera2_from_apt_and_a_venv_that_sees_it(tmp_path: Path) -> None:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "python3-picamera2"],
        capture_output=True, text=True, timeout=60,
    ).stdout.endswith("install ok installed") if shutil.which("dpkg-query") else False  # fmt: skip
    pi = actions(run("--dry-run", "--board", "pi").stdout)
    assert "python3 -m venv --system-site-packages /opt/edgewise/venv" in pi
    apt = [a for a in pi if a.startswith("apt-get ")]
    assert apt == ([] if installed else
                   ["apt-get install -y --no-install-recommends python3-picamera2"])  # fmt: skip
    for board in ("generic", "jetson"):
        other = run("--dry-run", "--board", board, "--root", tmp_path).stdout
        assert "--system-site-packages" not in other and "apt-get" not in other, board

    # A venv from an earlier install on a Pi is opened to the system packages once, not again.
    venv = tmp_path / "opt/edgewise/venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text("#!/bin/sh\n")
    (venv / "bin/python").chmod(0o755)
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    upgrade = f"python3 -m venv --system-site-packages {venv}"
    assert upgrade in actions(run("--dry-run", "--board", "pi", "--root", tmp_path).stdout)
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = true\n")
    assert upgrade not in actions(run("--dry-run", "--board", "pi", "--root", tmp_path).stdout)


def test_uninstall_keeps_config_and_purge_removes_it(tmp_path: Path) -> None:
    install_into(tmp_path)
    (tmp_path / "opt/edgewise/venv/bin").mkdir(parents=True)  # what --no-venv left out

    result = run("--root", tmp_path, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc/systemd/system/edgewise-agent.service").exists()
    assert not (tmp_path / "opt/edgewise").exists()
    assert (tmp_path / "etc/edgewise/agent.toml").read_bytes() == EXAMPLE_CONFIG.read_bytes()
    assert (tmp_path / "var/lib/edgewise").is_dir()
    assert "userdel" not in result.stdout

    again = run("--root", tmp_path, "--uninstall")
    assert again.returncode == 0, again.stderr
    assert actions(again.stdout) == []

    purged = run("--root", tmp_path, "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (tmp_path / "etc/edgewise").exists()
    assert not (tmp_path / "var/lib/edgewise").exists()
    assert "userdel edgewise" in purged.stdout


def test_jetson_gets_a_gpu_device_dropin_that_uninstall_removes(tmp_path: Path) -> None:
    result = run("--root", tmp_path, "--no-venv", "--board", "jetson")
    assert result.returncode == 0, result.stderr
    dropin = tmp_path / "etc/systemd/system/edgewise-agent.service.d/jetson.conf"
    assert "DeviceAllow=char-nvmap rw" in dropin.read_text()
    again = run("--root", tmp_path, "--no-venv", "--board", "jetson")
    assert actions(again.stdout) == []
    assert run("--root", tmp_path, "--uninstall").returncode == 0
    assert not dropin.parent.exists()


def test_missing_root_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--root", tmp_path / "nope", "--no-venv")
    assert result.returncode == 64
    assert "nope" in result.stderr


# Dockerfiles: no daemon here, so a line-based parse. Continuation lines are joined first so
# that a `RUN pip install \` spread over lines is read as one instruction.
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{dockerfile.name}: ends inside a continued line"
    result = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


KNOWN = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "USER", "WORKDIR", "VOLUME", "EXPOSE",
    "LABEL", "STOPSIGNAL", "HEALTHCHECK", "ENTRYPOINT", "CMD", "SHELL", "ONBUILD",
}  # fmt: skip


def test_both_dockerfiles_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.arm64", "Dockerfile.jetson"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_instructions(dockerfile: Path) -> None:
    parsed = instructions(dockerfile)
    keywords = [k for k, _ in parsed]
    assert set(keywords) <= KNOWN, set(keywords) - KNOWN
    for required in ("FROM", "USER", "ENTRYPOINT", "CMD", "VOLUME", "HEALTHCHECK", "STOPSIGNAL"):
        assert required in keywords, f"{dockerfile.name}: no {required}"
    args = dict(parsed)
    assert args["ENTRYPOINT"] == '["edgewise-agent"]'
    assert args["CMD"] == '["run", "--config", "/etc/edgewise/agent.toml"]'
    assert args["USER"] == "edgewise"
    assert args["VOLUME"] == "/var/lib/edgewise"
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert "check-config" in args["HEALTHCHECK"]
    # USER comes after every RUN: the agent itself never runs as root.
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    for keyword, rest in parsed:
        if keyword == "RUN":
            assert "torch" not in rest, rest
            assert "compiler" not in rest, rest
    assert any("uid 10001" in rest or "--uid 10001" in rest for _, rest in parsed)


def test_dockerfile_bases() -> None:
    arm64 = instructions(REPO / "deploy/docker/Dockerfile.arm64")
    assert arm64[0] == ("FROM", "python:3.11-slim-bookworm")
    assert ("COPY", ". /src") in arm64
    assert ("RUN", 'pip install --no-cache-dir "/src[agent]"') in arm64
    jetson = instructions(REPO / "deploy/docker/Dockerfile.jetson")
    assert ("ARG", "L4T_TAG=r36.2.0") in jetson
    assert ("FROM", "nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}") in jetson
    runs = " ".join(rest for k, rest in jetson if k == "RUN")
    assert "onnxruntime-gpu" in runs
    assert "--no-deps" in runs
    assert not re.search(r"\bonnxruntime(?!-gpu)[<>=\"\s]", runs)


def test_compose_example() -> None:
    text = (REPO / "deploy/docker/compose.yaml").read_text()
    for needle in (
        "/dev/video0:/dev/video0",
        "/etc/edgewise:/etc/edgewise:ro",
        ":/var/lib/edgewise",
        "restart: unless-stopped",
        "stop_grace_period: 10s",
    ):
        assert needle in text, needle


def test_dockerignore_keeps_outputs_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", "demo-out", ".pytest_cache", ".bench-*"):
        assert needed in patterns, needed
    assert patterns & {"__pycache__", "**/__pycache__"}
    assert patterns & {"*.onnx", "**/*.onnx"}
