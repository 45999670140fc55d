"""The package as pip installs it: a wheel built from this tree, installed with no extra, answers
``--version`` and names the extra to install instead of crashing; with only the ``agent``
extra (torch and onnx made unimportable) ``edgewise --help`` works and the compiler's commands
name the ``compiler`` extra; ``python -m agent`` and ``python -m compiler`` run the commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent import __version__
from agent.extras import EX_UNAVAILABLE

REPO = Path(__file__).resolve().parents[1]
COMPILER_ONLY = ("torch", "onnx", "onnxscript", "torch_pruning")

# Runs the `edgewise` launcher with some modules unimportable, as where an extra is missing.
BLOCKING = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
from compiler.launch import main
code = main(sys.argv[2:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
sys.exit(code if not loaded else 3)
"""


def run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``argv`` without this run's PYTHONPATH: the bare venv must see only what it installed (a
    source tree on the path would also make pip think edgewise is installed already)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel and nothing else: ``pip install edgewise`` without an extra."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for package in ("agent", "compiler"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(root / "dist"), str(source)])  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = (root / "dist").glob("edgewise-*.whl")
    assert wheel.name.startswith(f"edgewise-{__version__}-")
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    installed = run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


def test_the_wheel_carries_one_version_and_the_launchers(bare: Path) -> None:
    [wheel] = (bare.parents[1] / "dist").glob("edgewise-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry).decode()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "edgewise = compiler.launch:main" in scripts
    assert "edgewise-agent = agent.launch:main" in scripts
    assert f"Version: {__version__}" in metadata and "Classifier: " in metadata
    assert "Project-URL: Source, https://" in metadata, metadata[:2000]
    pyproject = (REPO / "pyproject.toml").read_text()
    project = pyproject.split("[project]")[1].split("\n[")[0]
    assert 'dynamic = ["version"]' in project and "\nversion =" not in project


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (["edgewise", "--version"], 0, f"edgewise {__version__}"),
        (["edgewise-agent", "--version"], 0, f"edgewise-agent {__version__}"),
        (["python", "-m", "agent", "--version"], 0, f"edgewise-agent {__version__}"),
        (["python", "-m", "compiler", "--version"], 0, f"edgewise {__version__}"),
        (["edgewise", "--help"], EX_UNAVAILABLE, "pip install 'edgewise[compiler]'"),
        (["edgewise", "compile", "m.onnx"], EX_UNAVAILABLE, "pip install 'edgewise[compiler]'"),
        (["edgewise-agent", "run"], EX_UNAVAILABLE, "pip install 'edgewise[agent]'"),
        (["python", "-m", "agent", "--help"], EX_UNAVAILABLE, "pip install 'edgewise[agent]'"),
    ],
)
def test_a_bare_install_answers_in_one_line(
    bare: Path, tmp_path: Path, argv: list[str], code: int, line: str
) -> None:
    done = run([str(bare / argv[0]), *argv[1:]], cwd=tmp_path)  # not the source tree
    said = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == code and len(said) == 1, said
    assert line in said[0]
    if code:
        assert '"agent" extra' in said[0] and "Traceback" not in done.stderr


def blocked(modules: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", BLOCKING, ",".join(modules), *argv])


def test_with_only_the_agent_extra_help_lists_every_command() -> None:
    done = blocked(COMPILER_ONLY, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("compile", "push", "fleet", "serve", "rollout", "completion"):
        assert command in done.stdout
    assert blocked(COMPILER_ONLY, "compile", "--help").returncode == 0


COMPILER_COMMANDS = [
    ["compile", "m.onnx", "--name", "m", "--version", "1.0.0", "--key", "pyproject.toml"],
    ["vad", "--key", "pyproject.toml", "--out", "x"],
    ["train", "--out", "m.pt"],
]


@pytest.mark.parametrize("command", COMPILER_COMMANDS)
def test_compiler_commands_name_the_compiler_extra(command: list[str]) -> None:
    done = blocked(COMPILER_ONLY, *command)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EX_UNAVAILABLE and len(lines) == 1, done.stderr
    assert lines[0].startswith(f'edgewise: `edgewise {command[0]}` needs the "compiler" extra')
    assert "pip install 'edgewise[compiler]'" in lines[0]


def test_the_console_names_its_extra() -> None:
    done = blocked(("aiohttp",), "serve", "--console", "0", "--port", "1")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EX_UNAVAILABLE and len(lines) == 1, done.stderr
    assert '"console" extra' in lines[0] and "pip install 'edgewise[console]'" in lines[0]
