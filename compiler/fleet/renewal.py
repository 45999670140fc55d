"""``edgewise certs --renew / --revoke / --revoke-old / --crl``: a certificate's life after issue.

Renewal keeps the identity (the same subject, so the same CN, ACL lines and SANs) with a new key,
a new serial and a new validity. The superseded certificate keeps working until it expires, so a
device stays connected until its new files are installed; ``--revoke-old`` (at renewal or later)
revokes it once they are. Revocation lists the serials in ``crl.pem``, removes a device from
``fleet.json`` and the ACL, deletes the CA's copy of its key and files its certificate under
``revoked/``: issuing ``--device`` with the same id later enrols it afresh.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.contract import Topics

from .certs import (
    CERT_DAYS,
    CLOUD_IDENTITY,
    CertificateError,
    Identity,
    cert_builder,
    index_and_crl,
    load_identity,
    read_inventory,
    save_signed,
    write_access,
)
from .revocation import CRL_DAYS, CertIndex, Issued, crl_next_update, now, sign_crl

KEY_IDS = (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier)


def _ca(out: Path) -> Identity:
    ca = Identity(out / "ca.crt", out / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        raise CertificateError(f"{out}: no fleet CA here (ca.crt, ca.key); check --out")
    index_and_crl(ca)  # a CA from before the index: record what is on disk first
    return ca


def identity_of(out: Path, name: str) -> Identity:
    """Where ``name``'s current certificate lives: ``devices/`` for a device, ``out`` for the
    broker and the cloud identity."""
    for folder in (out / "devices", out):
        identity = Identity(folder / f"{name}.crt", folder / f"{name}.key")
        if name != "ca" and identity.cert.exists():
            return identity
    raise CertificateError(
        f"{name}: no certificate for it in {out} (devices/{name}.crt); "
        f"issue one with --device {name}"
    )


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def renew(out: Path, name: str, days: int = CERT_DAYS) -> str:
    """A new key and certificate for ``name`` with its old one's subject and extensions; the old
    certificate is filed under ``superseded/`` (the CA's copy of the old key is deleted)."""
    ca = _ca(out)
    identity = identity_of(out, name)
    ca_cert, ca_key = load_identity(ca)
    old, _ = load_identity(identity)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = cert_builder(old.subject, ca_cert, key, days)
    for extension in old.extensions:
        if not isinstance(extension.value, KEY_IDS):  # the builder sets them for the new key
            builder = builder.add_extension(extension.value, extension.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    archive = identity.cert.parent / "superseded"
    archive.mkdir(exist_ok=True)
    identity.cert.rename(archive / f"{name}-{_serial(old)}.crt")
    identity.key.unlink()
    save_signed(ca, identity, cert, key)
    until = cert.not_valid_after_utc.date()
    done = f"{identity.cert}: renewed (serial {_serial(cert)}, valid until {until})"
    if name == "broker":
        return f"{done}; install broker.crt and broker.key on the broker and reload it"
    return (
        f"{done}; the superseded serial {_serial(old)} works until it expires unless you "
        f"--revoke-old {name}"
    )


def revoke(out: Path, name: str, topics: Topics, *, old_only: bool = False) -> list[Issued]:
    """Mark ``name``'s certificates revoked in the index (only the superseded ones with
    ``old_only``); a fully revoked device leaves ``fleet.json`` and the ACL. The CRL is re-signed
    by the caller, once for every revocation of the run."""
    _ca(out)
    if name in ("broker", "ca"):
        raise CertificateError(
            f"{name}: the broker checks client certificates against the CRL, not its own; "
            f"renew it with --renew {name} instead"
        )
    index = CertIndex(out)
    entries = index.valid(name)
    if old_only:
        current, _ = load_identity(identity_of(out, name))
        entries = [e for e in entries if e.serial != _serial(current)]
    if not any(e.cn == name for e in index.entries):
        raise CertificateError(
            f"{name}: no certificate was issued to that name ({index.path} lists none); "
            "check the device id"
        )
    if not entries:
        what = "superseded" if old_only else "valid"
        raise CertificateError(
            f"{name}: no {what} certificate left to revoke (all revoked or expired)"
        )
    index.revoke(entries, "superseded" if old_only else "key-compromise")
    index.save()
    if not old_only:
        _retire(out, name, topics)
    return entries


def _retire(out: Path, name: str, topics: Topics) -> None:
    identity = identity_of(out, name)
    cert, _ = load_identity(identity)
    archive = identity.cert.parent / "revoked"
    archive.mkdir(exist_ok=True)
    identity.cert.rename(archive / f"{name}-{_serial(cert)}.crt")
    identity.key.unlink()
    inventory = read_inventory(out)
    inventory.pop(name, None)
    write_access(out, inventory, topics, CLOUD_IDENTITY)


def resign_crl(out: Path, days: int = CRL_DAYS) -> dt.datetime:
    """Sign ``crl.pem`` again (after revocations, or before its next-update)."""
    ca_cert, ca_key = load_identity(_ca(out))
    return sign_crl(out, CertIndex(out), ca_cert, ca_key, days)


def revoke_all(
    out: Path,
    names: list[str],
    old_names: list[str],
    topics: Topics,
    *,
    resign: bool = False,
    crl_days: int = CRL_DAYS,
) -> list[str]:
    """``--revoke`` and ``--revoke-old`` for each name, then one CRL signature for them all (also
    when a later name fails: what is marked revoked in the index is in the CRL). Returns the lines
    to print."""
    lines: list[str] = []
    revoked = False
    try:
        plan = [
            *((n, False) for n in dict.fromkeys(names)),
            *((n, True) for n in dict.fromkeys(old_names)),
        ]
        for name, old_only in plan:
            for entry in revoke(out, name, topics, old_only=old_only):
                revoked = True
                lines.append(f"{entry.cn}: serial {entry.serial} revoked ({entry.reason})")
    finally:
        if revoked or resign:
            until = resign_crl(out, crl_days)
            what = "crl.pem and edgewise.acl" if revoked else "crl.pem"
            lines.append(
                f"{out / 'crl.pem'}: re-signed, valid until {until:%Y-%m-%d %H:%M} UTC; copy "
                f"{what} to the broker and reload it (systemctl reload mosquitto)"
            )
            if sys.exc_info()[0] is not None:
                print("\n".join(lines))  # the error that follows must not hide what was done
    return lines


def crl_warning(out: Path) -> str | None:
    """A line when ``crl.pem`` runs out within 30 days: the broker then refuses everyone."""
    until = crl_next_update(out)
    if until is None or until - now() > dt.timedelta(days=30):
        return None
    return (
        f"{out / 'crl.pem'} expires {until:%Y-%m-%d %H:%M} UTC and the broker then refuses every "
        "client: re-sign it with --crl and reload the broker"
    )
