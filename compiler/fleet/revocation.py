"""The CA's record of what it signed (``index.json``) and its certificate revocation list
(``crl.pem``), which the shipped Mosquitto config loads with ``crlfile``.

Mosquitto checks the CRL at each TLS handshake against the list it loaded when it made the
listener's SSL context: at start, and again on SIGHUP (``systemctl reload mosquitto``). A CRL past
its next-update makes OpenSSL refuse every client certificate ("CRL has expired"), so the list is
re-signed on every revoke and renewal, and ``edgewise certs --crl`` re-signs it before it runs out.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import InputError

INDEX = "index.json"
CRL = "crl.pem"
CRL_DAYS = 180  # long: an expired CRL locks the whole fleet out; every revoke re-signs it anyway
REASONS = {
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}


class RevocationError(InputError):
    """An index or CRL that cannot be read; the message names the file."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Issued:
    """One certificate the CA signed: serial as hex, its CN, expiry, and revocation if any."""

    serial: str
    cn: str
    not_after: str
    revoked: str | None = None
    reason: str | None = None

    @property
    def expired(self) -> bool:
        return dt.datetime.fromisoformat(self.not_after) <= now()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


class CertIndex:
    """``index.json`` beside the CA: every certificate it signed and the CRL's sequence number."""

    def __init__(self, folder: Path):
        self.path = folder / INDEX
        self.crl_number = 0
        self.entries: list[Issued] = []
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.crl_number = int(data["crl_number"])
                self.entries = [Issued(**entry) for entry in data["certificates"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RevocationError(
                    f"{self.path}: unreadable ({exc}); restore it from a backup of the CA folder"
                ) from exc

    def save(self) -> None:
        data = {"crl_number": self.crl_number, "certificates": [asdict(e) for e in self.entries]}
        self.path.write_text(json.dumps(data, indent=2) + "\n")

    def add(self, cert: x509.Certificate) -> None:
        serial = format(cert.serial_number, "x")
        if any(e.serial == serial for e in self.entries):
            return
        not_after = cert.not_valid_after_utc.isoformat()
        self.entries.append(Issued(serial, common_name(cert), not_after))

    def valid(self, cn: str) -> list[Issued]:
        """The certificates of ``cn`` that still work: not revoked, not expired."""
        return [e for e in self.entries if e.cn == cn and not e.revoked and not e.expired]

    def revoke(self, entries: list[Issued], reason: str) -> None:
        when = now().isoformat()
        for entry in entries:
            entry.revoked, entry.reason = when, reason


def sign_crl(
    folder: Path,
    index: CertIndex,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int = CRL_DAYS,
) -> dt.datetime:
    """Write ``crl.pem`` listing every revoked certificate not yet expired (an expired one is
    refused anyway); returns its next-update. The CRL number grows by one each time."""
    index.crl_number += 1
    signed = now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(signed - dt.timedelta(minutes=5))  # a broker's clock may lag a little
        .next_update(signed + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(index.crl_number), critical=False)
    )
    # Which of two CAs with the same name signed this list (a CA from before they had names of
    # their own, during a rotation).
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    for entry in index.entries:
        if entry.revoked and not entry.expired:
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry.serial, 16))
                .revocation_date(dt.datetime.fromisoformat(entry.revoked))
                .add_extension(x509.CRLReason(REASONS[entry.reason or "key-compromise"]), False)
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(ca_key, hashes.SHA256())
    (folder / CRL).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    index.save()
    return signed + dt.timedelta(days=days)


def crl_next_update(folder: Path) -> dt.datetime | None:
    path = folder / CRL
    if not path.exists():
        return None
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise RevocationError(f"{path}: not a PEM CRL ({exc}); re-sign it with --crl") from exc
    return crl.next_update_utc
