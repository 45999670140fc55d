"""``edgewise certs --renew / --revoke / --revoke-old / --crl`` against a real Mosquitto started
from the shipped config (with its ``crlfile``): what an operator does after each, and what the
broker then lets in. Mosquitto re-reads the CRL and the ACL on SIGHUP (``systemctl reload
mosquitto``)."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from helpers import BIN
from test_broker_security import TOPICS, Listener, shipped_config

from compiler.errors import BrokerUnavailable
from compiler.fleet import revocation
from compiler.fleet.broker import MosquittoBroker, free_port
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.revocation import CertIndex


def certs(pki: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise"), "certs", "--out", str(pki), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def make_pki() -> tempfile.TemporaryDirectory[str]:
    # Not under pytest's 0700 tmp root: mosquitto, started as root, reads these as its own user.
    folder = tempfile.TemporaryDirectory(prefix="edgewise-pki-")
    pki = Path(folder.name)
    pki.chmod(0o755)
    devices = ("--device", "cam-a", "--device", "cam-r", "--device", "cam-o")
    run = certs(pki, "--broker-name", "127.0.0.1", *devices)
    assert run.returncode == 0, run.stderr
    return folder


class Broker:
    """The shipped config on a free port, pointed at ``pki``; ``reload()`` is SIGHUP."""

    def __init__(self, pki: Path, cafile: Path | None = None, crlfile: Path | None = None):
        """``cafile`` and ``crlfile`` replace the CA's own (a CA rotation trusts two)."""
        if os.geteuid() == 0:  # mosquitto reads its key after dropping to its own user
            os.chown(pki / "broker.key", pwd.getpwnam("mosquitto").pw_uid, -1)
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="store-", dir=pki))
        workdir.chmod(0o1777)
        config = shipped_config(pki, port, workdir)
        assert f"crlfile {pki / 'crl.pem'}" in config
        config = config.replace(f"cafile {pki / 'ca.crt'}", f"cafile {cafile or pki / 'ca.crt'}")
        config = config.replace(
            f"crlfile {pki / 'crl.pem'}", f"crlfile {crlfile or pki / 'crl.pem'}"
        )
        self.pki, self.mosquitto = pki, MosquittoBroker(port=port, config=config)
        # SIGHUP re-reads the config as the mosquitto user: it must reach the file.
        self.mosquitto.config_path.parent.chmod(0o755)
        self.mosquitto.start()

    def address(self, cert: Path, key: Path) -> BrokerAddress:
        m = self.mosquitto
        return BrokerAddress(m.host, m.port, ca=self.pki / "ca.crt", cert=cert, key=key)

    def device(self, name: str) -> BrokerAddress:
        folder = self.pki if name == "edgewise-cloud" else self.pki / "devices"
        return self.address(folder / f"{name}.crt", folder / f"{name}.key")

    def reload(self) -> None:
        assert self.mosquitto._proc is not None
        self.mosquitto._proc.send_signal(signal.SIGHUP)

    def close(self) -> None:
        self.mosquitto.close()


@pytest.fixture(scope="module")
def pki() -> Iterator[Path]:
    folder = make_pki()
    yield Path(folder.name)
    folder.cleanup()


@pytest.fixture(scope="module")
def broker(pki: Path) -> Iterator[Broker]:
    running = Broker(pki)
    yield running
    running.close()


def accepted(address: BrokerAddress) -> bool:
    try:
        client = connect(address, timeout=5)
    except BrokerUnavailable:
        return False
    disconnect(client)
    return True


def until_refused(address: BrokerAddress, timeout: float = 10) -> bool:
    """After SIGHUP, until the broker has re-read its CRL: a handshake is the only thing to ask."""
    deadline = time.monotonic() + timeout
    while accepted(address):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # between handshakes; the handshake is the check
    return True


def kept(broker: Broker, name: str, where: Path) -> BrokerAddress:
    """A copy of a device's files as the device holds them (the CA side may delete the key)."""
    for suffix in (".crt", ".key"):
        shutil.copy(broker.pki / "devices" / f"{name}{suffix}", where / f"{name}{suffix}")
    return broker.address(where / f"{name}.crt", where / f"{name}.key")


def test_a_revoked_device_is_refused_once_the_broker_reloads(
    broker: Broker, pki: Path, tmp_path: Path
) -> None:
    thief = kept(broker, "cam-r", tmp_path)
    held = Listener(thief, [])  # the thief is connected when the revocation happens
    cloud = Listener(broker.device("edgewise-cloud"), [TOPICS.all_devices("#")])
    run = certs(pki, "--revoke", "cam-r")
    assert run.returncode == 0, run.stderr
    assert "cam-r: serial" in run.stdout and "reload" in run.stdout
    assert not (pki / "devices" / "cam-r.key").exists()
    assert "user cam-r\ntopic deny #" in (pki / "edgewise.acl").read_text()
    # Until the broker reloads, it still holds the old CRL: the README says to reload.
    assert accepted(thief)
    broker.reload()
    assert until_refused(thief), "SIGHUP did not make mosquitto re-read the CRL"
    # The open connection survives the reload, but the re-read ACL denies it everything.
    cam_a = Listener(broker.device("cam-a"), [])
    held.publish(TOPICS.results("cam-r"), b"from the thief")
    cam_a.publish(TOPICS.results("cam-a"), b"mine")
    assert cloud.until(TOPICS.results("cam-a"), b"mine") == [(TOPICS.results("cam-a"), b"mine")]
    assert accepted(broker.device("cam-a"))  # everyone else still gets in
    # Re-enrolling the recovered device issues a new certificate the broker accepts.
    again = certs(pki, "--device", "cam-r")
    assert again.returncode == 0, again.stderr
    assert "user cam-r\ntopic deny #" not in (pki / "edgewise.acl").read_text()
    broker.reload()
    assert accepted(broker.device("cam-r")) and not accepted(thief)
    for client in (held, cam_a, cloud):
        client.close()


def test_a_renewed_device_connects_and_revoke_old_cuts_the_old_key(
    broker: Broker, pki: Path, tmp_path: Path
) -> None:
    old = kept(broker, "cam-o", tmp_path)
    assert old.cert is not None
    before = x509.load_pem_x509_certificate(old.cert.read_bytes())
    run = certs(pki, "--renew", "cam-o", "--days", "30")
    assert run.returncode == 0, run.stderr
    assert "--revoke-old cam-o" in run.stdout
    after = x509.load_pem_x509_certificate((pki / "devices" / "cam-o.crt").read_bytes())
    assert after.subject == before.subject and after.serial_number != before.serial_number
    assert after.public_key() != before.public_key()
    life = after.not_valid_after_utc - after.not_valid_before_utc
    assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, minutes=5)
    renewed = Listener(broker.device("cam-o"), [])
    cloud = Listener(broker.device("edgewise-cloud"), [TOPICS.all_devices("results")])
    renewed.publish(TOPICS.results("cam-o"), b"renewed")  # the same identity in the ACL
    assert cloud.until(TOPICS.results("cam-o"), b"renewed")
    assert accepted(old)  # superseded, not revoked
    cut = certs(pki, "--revoke-old", "cam-o")
    assert cut.returncode == 0, cut.stderr
    assert f"serial {before.serial_number:x} revoked (superseded)" in cut.stdout
    broker.reload()
    assert until_refused(old)
    assert accepted(broker.device("cam-o"))
    renewed.close()
    cloud.close()


def test_revoking_what_is_not_there_is_one_line(pki: Path, tmp_path: Path) -> None:
    for args, words in [
        (["--revoke", "cam-zz"], "cam-zz: no certificate was issued to that name"),
        (["--revoke", "broker"], "renew it with --renew broker"),
        (["--revoke-old", "cam-a"], "cam-a: no superseded certificate left to revoke"),
        (["--device", "cam-a", "--revoke", "cam-a"], "cam-a: named in --device and in"),
    ]:
        run = certs(pki, *args)
        assert run.returncode == 2 and words in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    empty = certs(tmp_path / "nothing", "--revoke", "cam-a")
    assert empty.returncode == 2 and "no fleet CA here" in empty.stderr, empty.stderr


def test_an_expired_crl_refuses_everyone_until_crl_re_signs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = make_pki()
    pki = Path(folder.name)
    late = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    monkeypatch.setattr(revocation, "now", lambda: late)
    assert revocation.crl_next_update(pki) is not None
    from compiler.fleet.renewal import resign_crl

    assert resign_crl(pki, days=1) < dt.datetime.now(dt.timezone.utc)
    monkeypatch.undo()
    warned = certs(pki)  # an ordinary run says so
    assert warned.returncode == 0 and "broker then refuses every client" in warned.stderr
    broker = Broker(pki)
    try:
        assert not accepted(broker.device("cam-a"))  # every client: OpenSSL "CRL has expired"
        run = certs(pki, "--crl", "--crl-days", "30")
        assert run.returncode == 0 and "re-signed, valid until" in run.stdout, run.stderr
        broker.reload()
        assert accepted(broker.device("cam-a"))
    finally:
        broker.close()
        folder.cleanup()


def test_a_ca_from_before_the_index_gets_one_and_a_crl(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert certs(pki, "--broker-name", "b.example", "--device", "cam-1").returncode == 0
    (pki / "index.json").unlink()
    (pki / "crl.pem").unlink()
    run = certs(pki)
    assert run.returncode == 0, run.stderr
    index = CertIndex(pki)
    assert sorted(e.cn for e in index.entries) == ["broker", "cam-1", "edgewise-cloud"]
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert len(crl) == 0 and crl.next_update_utc > dt.datetime.now(dt.timezone.utc)
    device = x509.load_pem_x509_certificate((pki / "devices" / "cam-1.crt").read_bytes())
    life = device.not_valid_after_utc - device.not_valid_before_utc
    assert dt.timedelta(days=365) <= life <= dt.timedelta(days=365, minutes=5)  # the default


def test_a_failing_name_still_leaves_the_crl_matching_the_index(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    issued = certs(pki, "--broker-name", "b.example", "--device", "cam-1", "--device", "cam-2")
    assert issued.returncode == 0 and ", expires " in issued.stdout, issued.stderr
    run = certs(pki, "--revoke", "cam-1", "--revoke", "cam-1", "--revoke", "cam-9")
    assert run.returncode == 2 and "cam-9: no certificate was issued" in run.stderr, run.stderr
    assert "cam-1: serial" in run.stdout and "crl.pem: re-signed" in run.stdout
    revoked = {e.serial for e in CertIndex(pki).entries if e.revoked}
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert {format(r.serial_number, "x") for r in crl} == revoked and len(revoked) == 1
    assert "cam-1" not in (pki / "fleet.json").read_text()


def test_two_cas_side_by_side_while_the_ca_key_rotates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's CA rotation: the broker trusts both CAs (one cafile, one crlfile holding both
    CRLs: with CRL checking, a CA without a CRL there has every client refused)."""
    old_folder, new_folder = make_pki(), make_pki()
    old, new = Path(old_folder.name), Path(new_folder.name)
    bundle, crls = old / "ca-bundle.crt", old / "crl-bundle.pem"

    def combine() -> None:
        bundle.write_bytes((old / "ca.crt").read_bytes() + (new / "ca.crt").read_bytes())
        crls.write_bytes((old / "crl.pem").read_bytes() + (new / "crl.pem").read_bytes())

    combine()
    broker = Broker(old, cafile=bundle, crlfile=crls)
    try:
        # A device on its new certificate trusts the old broker certificate through the bundle.
        moved = broker.address(new / "devices" / "cam-a.crt", new / "devices" / "cam-a.key")
        moved = BrokerAddress(moved.host, moved.port, ca=bundle, cert=moved.cert, key=moved.key)
        assert accepted(broker.device("cam-a")) and accepted(moved)
        assert certs(old, "--revoke", "cam-r").returncode == 0
        combine()
        broker.reload()
        assert until_refused(broker.device("cam-r"))
        assert accepted(moved) and accepted(broker.device("cam-a"))
        crls.write_bytes((old / "crl.pem").read_bytes())  # the new CA's CRL forgotten
        broker.reload()
        assert until_refused(moved)
    finally:
        broker.close()
        old_folder.cleanup()
        new_folder.cleanup()
