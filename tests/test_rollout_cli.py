"""``edgewise rollout`` as a user runs it, the console script as a subprocess: create, list,
status, pause, resume and abort on SQLite and on a real PostgreSQL; every bad input one line
on stderr with exit 2 (1 when the database cannot be reached), never a traceback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import BIN

from compiler.compile.pipeline import CompileResult
from compiler.rollout.plan import DeviceRecord, judge
from compiler.rollout.store import open_store


def rollout(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise"), "rollout", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def ok(*args: str, cwd: Path | None = None) -> str:
    done = rollout(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "rollouts.db")
    return str(request.getfixturevalue("pg"))


@pytest.fixture
def package(compiled: CompileResult) -> Path:
    return compiled.package.root


def test_create_list_status_pause_resume_abort(db: str, package: Path) -> None:
    out = ok(
        "create", str(package), "--to", "group:cams", "--waves", "1,10%,50%",
        "--agreement", "0.9", "--min-frames", "200", "--abort-if", "failed_pct>0",
        "--abort-if", "p99_ms>=50:min=3", "--answer-s", "90", "--id", "cams-1", "--db", db,
    )  # fmt: skip
    assert out.startswith("rollout cams-1: digits-cnn 1.0.0 to group:cams in waves 1, 10%, 50%")
    listing = ok("list", "--db", db).splitlines()
    assert listing[0].split() == ["ID", "STATE", "WAVE", "PACKAGE", "TARGET", "CREATED"]
    assert listing[1].split()[:6] == [
        "cams-1",
        "running",
        "1/4",
        "digits-cnn",
        "1.0.0",
        "group:cams",
    ]

    status = ok("status", "cams-1", "--db", db)
    assert "rollout cams-1: digits-cnn 1.0.0 to group:cams, running, wave 1 of 4" in status
    assert "shadow agreement ≥ 0.9 over ≥ 200 frames; answer within 90 s" in status
    assert "failed_pct > 0 (min 1 devices); p99_ms >= 50 (min 3 devices)" in status
    doc = json.loads(ok("status", "cams-1", "--db", db, "--json"))
    assert (doc["state"], doc["wave"], doc["waves"], doc["package"]) == (
        "running", 1, 4, str(package.resolve())
    )  # fmt: skip
    assert doc["criteria"] == {"agreement": 0.9, "min_frames": 200}
    assert doc["rules"][1] == {"metric": "p99_ms", "op": ">=", "threshold": 50.0, "min_devices": 3}

    assert "running -> paused" in ok("pause", "cams-1", "--db", db)
    assert json.loads(ok("status", "cams-1", "--db", db, "--json"))["state"] == "paused"
    assert "paused already" in ok("pause", "cams-1", "--db", db)
    assert "paused -> running" in ok("resume", "cams-1", "--db", db)
    assert "running -> aborted" in ok("abort", "cams-1", "--reason", "wrong on site B", "--db", db)
    doc = json.loads(ok("status", "cams-1", "--db", db, "--json"))
    assert (doc["state"], doc["reason"]) == ("aborted", "wrong on site B")
    assert doc["evidence"] == {"by": "edgewise rollout abort", "wave": 1}
    assert "aborted: wrong on site B" in ok("status", "cams-1", "--db", db)
    line = one_line_error(rollout("resume", "cams-1", "--db", db), 2)
    assert line == "edgewise: rollout cams-1 is aborted: only a paused rollout can resume"


def test_default_id_and_an_absolute_package_path(package: Path, tmp_path: Path) -> None:
    db = tmp_path / "here.db"
    out = ok(
        "create", package.name, "--to", "all", "--exponential", "1,2", "--db", str(db),
        cwd=package.parent,
    )  # fmt: skip
    made = re.match(r"^rollout (digits-cnn-1_0_0-[0-9a-f]{4}): ", out)
    assert made, out
    doc = json.loads(ok("status", made[1], "--db", str(db), "--json"))
    assert doc["package"] == str(package.resolve())
    assert doc["waves"] == 18  # 1, 2, 4 ... 65536, then everyone
    assert doc["rules"] == [{"metric": "failed_pct", "op": ">", "threshold": 0.0, "min_devices": 1}]
    assert "… 16 more waves, up to 100%" in ok("status", made[1], "--db", str(db))


def test_the_default_db_is_in_the_current_folder(package: Path, tmp_path: Path) -> None:
    assert "does not exist" in ok("list", cwd=tmp_path)
    assert not (tmp_path / "edgewise-rollouts.db").exists()  # reading created nothing
    ok("create", str(package), "--to", "device:cam-1", "--waves", "1", "--id", "one", cwd=tmp_path)
    assert (tmp_path / "edgewise-rollouts.db").is_file()
    assert "one" in ok("list", cwd=tmp_path)


def test_status_shows_devices_per_wave_and_the_abort_evidence(
    package: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "rollouts.db")
    ok("create", str(package), "--to", "group:cams", "--waves", "1,50%", "--id", "r1", "--db", db)
    records = [
        DeviceRecord(device="cam-1", wave=0, state="succeeded", figures={"p99_ms": 12.0}),
        DeviceRecord(device="cam-2", wave=1, state="failed", reason="golden check failed"),
        DeviceRecord(device="cam-3", wave=1, state="succeeded", figures={"p99_ms": 14.5}),
        DeviceRecord(device="cam-4", wave=1, state="offline"),
        DeviceRecord(device="cam-5", wave=1, state="sent"),
    ]
    with open_store(db) as store:
        for record in records:
            store.put_device("r1", record)
        store.set_wave("r1", 1)
        rollout_spec = store.get("r1")
        assert rollout_spec is not None
        verdict = judge(rollout_spec.spec.rules, records[1:])
        assert verdict is not None
        store.set_state("r1", "aborted", verdict.reason, verdict.evidence)
    status = ok("status", "r1", "--db", db).splitlines()
    header = status.index(
        next(line for line in status if line.split()[:3] == ["wave", "size", "devices"])
    )
    assert status[header + 1].split() == ["1", "1", "1", "0", "0", "0", "1", "0", "0", "0", "0"]
    assert status[header + 2].split() == ["*2", "50%", "4", "0", "1", "0", "1", "1", "0", "1", "0"]
    text = "\n".join(status)
    assert "aborted: failed_pct 50 > 0 over 2 devices" in text
    assert "rule: failed_pct > 0 (min 1 devices)" in text
    assert "cam-2 failed (golden check failed)" in text
    assert "cam-3 succeeded: p99_ms 14.5" in text
    doc = json.loads(ok("status", "r1", "--db", db, "--json"))
    assert doc["per_wave"][1]["states"] == {"sent": 1, "succeeded": 1, "failed": 1, "offline": 1}
    assert doc["evidence"]["figures"]["failed_pct"] == 50.0
    assert [d["device"] for d in doc["devices"]] == ["cam-1", "cam-2", "cam-3", "cam-4", "cam-5"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bad_inputs_are_one_line_with_the_right_exit_code(package: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "rollouts.db")
    pkg = str(package)
    ok("create", pkg, "--to", "all", "--waves", "1", "--id", "taken", "--db", db)
    cases: list[tuple[list[str], int, str]] = [
        (["status", "ghost", "--db", db], 2, "no rollout 'ghost'.*`edgewise rollout list`"),
        (["pause", "ghost", "--db", db], 2, "`edgewise rollout list`"),
        (["abort", "ghost", "--db", str(tmp_path / "none.db")], 2, "`edgewise rollout list`"),
        (["status", "bad id!", "--db", db], 2, "is not a rollout id"),
        (["create", pkg, "--to", "all", "--waves", "1", "--id", "taken", "--db", db], 2,
         "exists already"),
        (["create", pkg, "--to", "all", "--waves", "1", "--abort-if", "speed>3"], 2,
         "unknown metric 'speed'"),
        (["create", pkg, "--to", "all", "--waves", "1", "--abort-if", "p99_ms=3"], 2,
         "is not a rule: write metric op threshold"),
        (["create", pkg, "--to", "all", "--waves", "1", "--abort-if", "p99_ms>fast"], 2,
         "'fast' is not a number"),
        (["create", pkg, "--to", "all", "--waves", "1", "--abort-if", "p99_ms>3:min=0"], 2,
         "not a whole number ≥ 1"),
        (["create", pkg, "--to", "all", "--waves", "1,x"], 2, "is not a count or a percentage"),
        (["create", pkg, "--to", "all", "--waves", "50%,10%"], 2, "larger than the one before"),
        (["create", pkg, "--to", "all", "--waves", "0"], 2, "a wave is 1 device or more"),
        (["create", pkg, "--to", "all", "--exponential", "1,1"], 2, "factor over 1"),
        (["create", pkg, "--to", "all"], 2, "--waves --exponential is required"),
        (["create", pkg, "--to", "all", "--waves", "1", "--exponential", "1,2"], 2,
         "not allowed with"),
        (["create", pkg, "--to", "all", "--waves", "1", "--min-frames", "5"], 2,
         "--min-frames goes with --agreement"),
        (["create", pkg, "--to", "all", "--waves", "1", "--agreement", "1.5"], 2,
         "not a fraction"),
        (["create", pkg, "--to", "nowhere:x", "--waves", "1"], 2, "argument --to"),
        (["create", str(tmp_path / "nope"), "--to", "all", "--waves", "1"], 2, "does not exist"),
        (["create", pkg, "--to", "all", "--waves", "1", "--db", str(tmp_path / "no" / "x.db")],
         1, "cannot open rollout database"),
        (["list", "--db", f"postgresql://postgres@127.0.0.1:{_free_port()}/x"], 1,
         "cannot connect to PostgreSQL at 127.0.0.1"),
        (["list", "--db", "postgresql://[broken"], 2, "not a PostgreSQL connection string"),
    ]  # fmt: skip
    for args, code, expected in cases:
        line = one_line_error(rollout(*args), code)
        assert line.startswith("edgewise"), line
        assert re.search(expected, line), (args, line)
    assert not (tmp_path / "none.db").exists()
