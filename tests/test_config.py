"""Config errors name the file and the key, and the agent exits 78 (EX_CONFIG); environment
variables and systemd credentials override the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN
from helpers import GOOD_CONFIG as GOOD

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from agent.config import changed_keys, load_config, reloadable, source_config
from agent.contract import generate_keypair
from agent.errors import ConfigError
from compiler.fleet.certs import create_ca, issue


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A config folder with a real trusted key and a TLS identity beside the config."""
    (tmp_path / "keys").mkdir()
    generate_keypair(tmp_path / "keys" / "a.key", tmp_path / "keys" / "a.pub")
    ca = create_ca(tmp_path / "tls")
    issue(ca, "cam-1", tmp_path / "tls")
    (tmp_path / "clip.avi").write_bytes(b"")  # check-config looks for the source file
    return tmp_path


COMMAND = GOOD.replace(
    'kind = "video"\nuri = "clip.avi"',
    'kind = "command"\ncommand = "ffmpeg -i in.mp4"\nwidth = 64\nheight = 48',
)

TLS = """
[mqtt.tls]
ca_file = "tls/ca.crt"
cert_file = "tls/cam-1.crt"
key_file = "tls/cam-1.key"
"""


def write(folder: Path, text: str) -> Path:
    path = folder / "agent.toml"
    path.write_text(text)
    return path


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise-agent"), "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_valid_config_resolves_relative_paths(folder: Path) -> None:
    config = load_config(write(folder, GOOD + TLS), environ={})
    assert config.device.state_dir == folder / "state"
    assert config.trust.public_keys == (folder / "keys/a.pub",)
    assert config.source.uri == str(folder / "clip.avi")
    assert config.mqtt.tls is not None and config.mqtt.tls.key_file == folder / "tls/cam-1.key"
    assert config.mqtt.endpoint == ("127.0.0.1", 1883)


def test_the_shipped_example_is_valid_apart_from_its_paths() -> None:
    """deploy/agent.example.toml parses and validates; only files absent here are reported."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "agent.example.toml"
    with pytest.raises(ConfigError) as info:
        load_config(example, environ={})
    problems = str(info.value).split(": ", 1)[1].split("; ")
    assert all(
        p.startswith(("trust.public_keys.0", "mqtt.tls.", "device.state_dir")) for p in problems
    ), problems


def recipes(text: str) -> list[dict[str, object]]:
    """Each ``kind = ...`` and the keys after it, from TOML lines (comments dropped)."""
    chunks: list[list[str]] = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("kind ="):
            chunks.append([])
        if chunks and line and not line.startswith("#"):
            chunks[-1].append(line)
    return [tomllib.loads("\n".join(chunk)) for chunk in chunks]


def test_camera_recipes_in_the_readme_and_the_example_are_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("**Cameras**")[1].split("```toml")[1].split("```")[0]
    example = (root / "deploy" / "agent.example.toml").read_text()
    commented = "\n".join(
        line.removeprefix("#   ") for line in example.split("[source]")[1].split("[runtime]")[0]
        .splitlines() if line.startswith("#   ")
    )  # fmt: skip
    for text, count in ((block, 5), (commented, 5)):
        found = recipes(text)
        assert len(found) == count, found
        for recipe in found:
            source = source_config(**recipe)
            if source.kind == "command":
                assert source.command[-1] in ("-", "fdsink"), source.command  # frames on stdout


BROKEN = [
    ("missing key", GOOD.replace('uri = "clip.avi"', ""), "source.uri"),
    ("missing section", GOOD.replace('[trust]\npublic_keys = ["keys/a.pub"]', ""), "trust"),
    ("wrong type", GOOD + '\n[mqtt]\nport = "high"\n', "mqtt.port"),
    ("out of range", GOOD + "\n[mqtt]\nport = 70000\n", "mqtt.port"),
    ("unknown key", GOOD + "\n[mqtt]\nprot = 1\n", "mqtt.prot"),
    ("unknown section", GOOD + "\n[camera]\nfps = 1\n", "camera"),
    ("bad device id", GOOD.replace('id = "cam-1"', 'id = "cam/1"'), "device.id"),
    (
        "dotted device id",
        GOOD.replace('id = "cam-1"', 'id = "cam.1"'),
        "device.id: 'cam.1' contains '.', which RabbitMQ and NATS cannot carry",
    ),
    (
        "dotted group",
        GOOD.replace('id = "cam-1"', 'id = "cam-1"\ngroups = ["a", "b.c"]'),
        "device.groups.1: 'b.c' contains '.'",
    ),
    ("dotted topic root", GOOD + '\n[mqtt]\ntopic_root = "acme.io"\n', "mqtt.topic_root"),
    ("bad enum", GOOD.replace('kind = "video"', 'kind = "webcam"'), "source.kind"),
    ("url and urls", GOOD + '\n[mqtt]\nurl = "mqtt://a"\nurls = ["mqtt://b"]\n', "not both"),
    ("mixed schemes", GOOD + '\n[mqtt]\nurls = ["mqtt://a", "mqtts://b"]\n', "mix mqtt://"),
    ("bad url in urls", GOOD + '\n[mqtt]\nurls = ["mqtt://a", "http://b"]\n', "mqtt.urls.1"),
    ("bad broker URL", GOOD + '\n[mqtt]\nurl = "http://broker:1883"\n', "mqtt.url"),
    ("URL without host", GOOD + '\n[mqtt]\nurl = "mqtt://"\n', "mqtt.url"),
    ("mqtts without TLS", GOOD + '\n[mqtt]\nurl = "mqtts://broker"\n', "mqtt"),
    ("missing trusted key", GOOD.replace("keys/a.pub", "keys/none.pub"), "trust.public_keys.0"),
    ("not a key", GOOD.replace("keys/a.pub", "tls/ca.crt"), "trust.public_keys.0"),
    (
        "unreadable TLS key",
        GOOD + TLS.replace("tls/cam-1.key", "tls/gone.key"),
        "mqtt.tls.key_file",
    ),
    ("key of another cert", GOOD + TLS.replace("tls/cam-1.key", "tls/ca.key"), "mqtt.tls"),
    ("negative threads", GOOD + "\n[runtime]\nintra_op_threads = -1\n", "runtime.intra_op_threads"),
    ("state dir is a file", GOOD.replace('"state"', '"clip.avi/state"'), "device.state_dir"),
    ("command without size", COMMAND.replace("width = 64\n", ""), "needs width and height"),
    ("command empty", COMMAND.replace('"ffmpeg -i in.mp4"', "[]"), "needs command"),
    (
        "command unbalanced quote",
        COMMAND.replace('"ffmpeg -i in.mp4"', '"ffmpeg -i \'a"'),
        "cannot split",
    ),
    (
        "odd size for 4:2:0",
        COMMAND.replace("height = 48", 'height = 47\npixel_format = "nv12"'),
        "even width and height",
    ),
    (
        "unknown pixel format",
        COMMAND.replace("height = 48", 'height = 48\npixel_format = "yuyv"'),
        "source.pixel_format",
    ),
    (
        "command for a video",
        GOOD.replace('uri = "clip.avi"', 'uri = "clip.avi"\ncommand = ["x"]'),
        "applies to kind = 'command' or 'audio' only",
    ),
    (
        "picamera by name",
        GOOD.replace('kind = "video"\nuri = "clip.avi"', 'kind = "picamera"\nuri = "front"'),
        "camera number",
    ),
    ("bad TOML", "[device\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_config_exits_78_naming_the_key(folder: Path, text: str, key: str) -> None:
    path = write(folder, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value) and key in str(info.value)
    cli = check_config(path)
    assert cli.returncode == 78 and key in cli.stderr and str(path) in cli.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_exit_codes(folder: Path, command: str) -> None:
    ok = check_config(write(folder, GOOD))
    assert ok.returncode == 0, ok.stderr
    path = write(folder, GOOD.replace("keys/a.pub", "keys/none.pub"))
    bad = subprocess.run(
        [str(BIN / "edgewise-agent"), command, "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 78
    assert "trust.public_keys.0" in bad.stderr and "none.pub" in bad.stderr
    missing = check_config(folder / "nowhere.toml")
    assert missing.returncode == 78 and "cannot read config" in missing.stderr


def test_command_source_as_argv_or_string(folder: Path) -> None:
    listed = GOOD.replace(
        'kind = "video"\nuri = "clip.avi"',
        'kind = "command"\ncommand = ["./capture.sh", "--size", "64x48"]\nwidth = 64\n'
        'height = 48\npixel_format = "yuv420"',
    )
    config = load_config(write(folder, listed), environ={})
    # A program path relative to the config resolves against its folder; arguments stay.
    assert config.source.command == (str(folder / "capture.sh"), "--size", "64x48")
    assert config.source.uri == "command:capture.sh"  # the label results carry, no arguments
    text = COMMAND.replace('"ffmpeg -i in.mp4"', """'ffmpeg -i "rtsp://u:p@cam/a b"'""")
    config = load_config(write(folder, text + 'uri = "lobby"\n'), environ={})
    assert config.source.command == ("ffmpeg", "-i", "rtsp://u:p@cam/a b")
    assert config.source.uri == "lobby"
    assert load_config(write(folder, COMMAND), environ={}).source.pixel_format == "bgr24"


def test_environment_overrides_the_file(folder: Path) -> None:
    path = write(folder, GOOD + '\n[mqtt]\nhost = "file-broker"\n')
    env = {
        "EDGEWISE_MQTT__HOST": "env-broker",
        "EDGEWISE_MQTT__PORT": "8884",
        "EDGEWISE_DEVICE__GROUPS": '["lobby", "north"]',
        "EDGEWISE_UNRELATED": "ignored: no section separator",
    }
    config = load_config(path, environ=env)
    assert (config.mqtt.host, config.mqtt.port) == ("env-broker", 8884)
    assert config.device.groups == ("lobby", "north")
    with pytest.raises(ConfigError, match=r"mqtt\.port: .* \(from \$EDGEWISE_MQTT__PORT\)"):
        load_config(path, environ={"EDGEWISE_MQTT__PORT": "high"})
    with pytest.raises(ConfigError, match=r"mqtt\.port: .* \(from \$EDGEWISE_MQTT__PORT__X\)"):
        load_config(path, environ={"EDGEWISE_MQTT__PORT__X": "1"})  # not a table: named, not lost
    bad = check_config(path, env={"EDGEWISE_MQTT__PROT": "1", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 78 and "$EDGEWISE_MQTT__PROT" in bad.stderr


def test_secrets_come_from_systemd_credentials(folder: Path) -> None:
    credentials = folder / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("s3cret\n")
    (credentials / "mqtt-tls-key").write_bytes((folder / "tls" / "cam-1.key").read_bytes())
    path = write(folder, GOOD + TLS.replace("tls/cam-1.key", "not/here.key"))
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.mqtt.password == "s3cret"
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.key_file == credentials / "mqtt-tls-key"
    result = check_config(path, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr and "PRIVATE" not in result.stdout


def test_reload_tells_what_applies_now_and_what_needs_a_restart(folder: Path) -> None:
    old = load_config(write(folder, GOOD), environ={})
    new = load_config(
        write(folder, GOOD + '\n[results]\nmode = "on_change"\n[mqtt]\nkeepalive = 5\n'),
        environ={},
    )
    changed = changed_keys(old, new)
    assert changed == ["mqtt.keepalive", "results.mode"]
    assert [reloadable(k) for k in changed] == [False, True]


def test_urls_name_every_node_in_order(folder: Path) -> None:
    path = write(folder, GOOD + '\n[mqtt]\nurls = ["mqtt://a:1884", "mqtt://b"]\n')
    assert load_config(path, environ={}).mqtt.endpoints == (("a", 1884), ("b", 1883))
