"""Config errors name the file and the key; check-config exits 78 (EX_CONFIG)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import BIN

from agent.config import load_config
from agent.errors import ConfigError

GOOD = """
[device]
id = "cam-1"
state_dir = "state"

[trust]
public_keys = ["keys/a.pub"]

[source]
kind = "video"
uri = "clip.avi"
"""


def test_valid_config_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.device.state_dir == tmp_path / "state"
    assert config.trust.public_keys == (tmp_path / "keys/a.pub",)
    assert config.source.uri == str(tmp_path / "clip.avi")
    assert config.mqtt.port == 1883


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD + '\n[mqtt]\nport = "high"\n', "mqtt.port"),
        (GOOD + "\n[mqtt]\nprot = 1\n", "mqtt.prot"),
        (GOOD.replace('id = "cam-1"', 'id = "cam/1"'), "device.id"),
        (GOOD.replace('kind = "video"', 'kind = "webcam"'), "source.kind"),
        (GOOD.replace('[trust]\npublic_keys = ["keys/a.pub"]', ""), "trust"),
    ],
)
def test_error_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[device\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)
    ok = subprocess.run(
        [BIN / "edgewise-agent", "check-config", "--config", path], capture_output=True
    )
    assert ok.returncode == 0, ok.stderr
    path.write_text(GOOD + "\n[runtime]\nintra_op_threads = -1\n")
    bad = subprocess.run(
        [BIN / "edgewise-agent", "check-config", "--config", path], capture_output=True, text=True
    )
    assert bad.returncode == 78
    assert "runtime.intra_op_threads" in bad.stderr


def test_run_with_unreadable_trusted_key_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)  # keys/a.pub does not exist
    proc = subprocess.run(
        [BIN / "edgewise-agent", "run", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 78
    assert "trust.public_keys" in proc.stderr and "a.pub" in proc.stderr
