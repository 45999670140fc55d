"""``edgewise certs``: a fleet CA, the broker's certificate, one client certificate per device and
one for the cloud, plus the Mosquitto ACL that binds each identity to its own topics. Every
certificate signed is recorded in the CA's ``index.json``, and ``crl.pem`` lists the revoked ones
(:mod:`.revocation`; renewing and revoking: :mod:`.renewal`).

The broker runs with ``use_identity_as_username``: a client's username is its certificate's CN,
so the ACL's ``%u`` patterns key on something the client cannot choose (unlike its client id).
Keys are EC P-256 (fast on a Pi's TLS handshake, supported everywhere), written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.contract import DEVICE_ID_PATTERN, Topics, dot_problem, write_private

from ..errors import InputError
from .revocation import CertIndex, crl_next_update, sign_crl

CLOUD_IDENTITY = "edgewise-cloud"
CERT_DAYS = 365  # a stolen key works at most this long even if nobody revokes it
DEVICE_WRITES = ("status", "telemetry", "results", "events")  # its own subtree only


class CertificateError(InputError):
    """A CA or certificate that cannot be created or read; the message names the file."""


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edgewise"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def cert_builder(
    subject: x509.Name,
    issuer: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey,
    days: int,
) -> x509.CertificateBuilder:
    """``issuer`` None: a self-signed CA. Key identifiers let OpenSSL tell two CAs apart (and
    their CRLs) while a CA rotation has a broker trust both."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # a board's clock may lag a little
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        builder = builder.add_extension(aki(issuer), critical=False)
    return builder


def aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    public = ca_cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)


def load_identity(identity: Identity) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
        key = serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read {identity.cert} / {identity.key}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{identity.key}: not an EC private key")
    return cert, key


def create_ca(out: Path, days: int = 3650) -> Identity:
    """``ca.crt`` and ``ca.key`` in ``out``; an existing CA is kept (re-running never orphans the
    certificates it signed)."""
    out.mkdir(parents=True, exist_ok=True)
    ca = Identity(out / "ca.crt", out / "ca.key")
    if ca.cert.exists() and ca.key.exists():
        load_identity(ca)
        return ca
    key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own per CA: OpenSSL finds an issuer and its CRL by name first, and a CA
    # rotation has the broker trust the old and the new CA side by side.
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()[:8]
    name = _name(f"Edgewise fleet CA {key_id}")
    cert = (
        cert_builder(name, None, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(ca.key, _key_pem(key))
    ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def save_signed(ca: Identity, identity: Identity, cert: x509.Certificate, key: object) -> None:
    """Write a freshly signed pair (the key 0600) and record the certificate in the CA's index."""
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    write_private(identity.key, _key_pem(key))
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    index = CertIndex(ca.cert.parent)
    index.add(cert)
    index.save()


def issue(
    ca: Identity,
    common_name: str,
    out: Path,
    *,
    server_names: list[str] | None = None,
    days: int = CERT_DAYS,
) -> Identity:
    """A certificate for ``common_name`` signed by ``ca``: a server certificate (with
    ``server_names`` as DNS names or IP addresses) when given, else a client one. An existing
    pair in ``out`` is kept."""
    out.mkdir(parents=True, exist_ok=True)
    identity = Identity(out / f"{common_name}.crt", out / f"{common_name}.key")
    if identity.cert.exists() and identity.key.exists():
        return identity
    ca_cert, ca_key = load_identity(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        cert_builder(_name(common_name), ca_cert, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    save_signed(ca, identity, builder.sign(ca_key, hashes.SHA256()), key)
    return identity


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def acl(
    devices: dict[str, list[str]],
    topics: Topics,
    cloud: str = CLOUD_IDENTITY,
    revoked: list[str] | None = None,
) -> str:
    """The Mosquitto ACL file: every device reads its own, its groups' and the fleet-wide deploy
    and command topics, the model chunks and its own chunk inbox, and writes only its own
    status, telemetry, results, events and chunk requests (wants); the cloud identity reads and
    writes everything under the topic root.

    Fleet-wide topics are granted per known device rather than to everyone: a certificate the
    ACL does not list reaches nothing beyond its own subtree until the file is regenerated.

    A ``revoked`` identity is denied everything: the CRL stops its next handshake, and this stops
    a connection it already holds from publishing or receiving once the broker reloads (SIGHUP
    re-reads the ACL; an open TLS session is never checked against the CRL again)."""
    me = "%u"  # Mosquitto puts the identity's CN here
    lines = [
        "# Written by `edgewise certs`. Usernames are certificate CNs (use_identity_as_username).",
        "# Pattern lines apply to every identity, with %u replaced by its CN.",
        f"pattern read {topics.deploy_device(me)}",
        f"pattern read {topics.commands_device(me)}",
        *(f"pattern write {topics.device(me, leaf)}" for leaf in DEVICE_WRITES),
        # delivery "request": a device asks on its own wants, `edgewise serve` answers on its inbox
        f"pattern write {topics.wants(me)}",
        f"pattern read {topics.device(me, 'inbox')}/#",
        "",
        f"user {cloud}",
        f"topic readwrite {topics.root}/#",
    ]
    for device, groups in sorted(devices.items()):
        lines += [
            "",
            f"user {device}",
            f"topic read {topics.deploy_all()}",
            f"topic read {topics.commands_all()}",
            f"topic read {topics.all_blobs()}",
        ]
        for group in groups:
            lines.append(f"topic read {topics.deploy_group(group)}")
            lines.append(f"topic read {topics.commands_group(group)}")
    for name in sorted(revoked or []):
        lines += ["", f"# revoked: {name}", f"user {name}", "topic deny #"]
    return "\n".join(lines) + "\n"


def read_inventory(out: Path) -> dict[str, list[str]]:
    """``fleet.json``: the devices issued so far and their groups."""
    path = out / "fleet.json"
    if not path.exists():
        return {}
    try:
        inventory = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: unreadable ({exc}); fix or remove it") from exc
    if not isinstance(inventory, dict) or not all(
        isinstance(groups, list) for groups in inventory.values()
    ):
        raise CertificateError(f"{path}: not a map of device id to groups; fix or remove it")
    return inventory


def write_access(
    out: Path, inventory: dict[str, list[str]], topics: Topics, cloud: str = CLOUD_IDENTITY
) -> None:
    """``fleet.json`` and the ACL generated from it, denying every identity whose certificates
    are all revoked."""
    index = CertIndex(out)
    revoked = {e.cn for e in index.entries if e.revoked and not e.expired}
    revoked -= {e.cn for e in index.entries if not e.revoked and not e.expired}
    (out / "edgewise.acl").write_text(acl(inventory, topics, cloud, sorted(revoked)))
    (out / "fleet.json").write_text(json.dumps(inventory, indent=2, sort_keys=True) + "\n")


def _check_names(names: list[str]) -> None:
    for name in names:
        problem = dot_problem(name, "device or group")
        if problem:
            raise CertificateError(problem)
        if not re.fullmatch(DEVICE_ID_PATTERN, name):
            raise CertificateError(
                f"{name!r} cannot be a device id or group (letters, digits, '_', '-')"
            )


def index_and_crl(ca: Identity) -> None:
    """A CA made before ``index.json`` and ``crl.pem`` existed gets both: the certificates already
    on disk are recorded (so they can be revoked), and an empty CRL is signed, since the shipped
    broker config names one and Mosquitto does not start without it."""
    out = ca.cert.parent
    index = CertIndex(out)
    if not index.path.exists():
        for path in sorted([*out.glob("*.crt"), *(out / "devices").glob("*.crt")]):
            if path != ca.cert:
                index.add(x509.load_pem_x509_certificate(path.read_bytes()))
        index.save()
    if crl_next_update(out) is None:
        ca_cert, ca_key = load_identity(ca)
        sign_crl(out, index, ca_cert, ca_key)


def build_fleet(
    out: Path,
    devices: dict[str, list[str]],
    broker_names: list[str],
    topics: Topics,
    cloud: str = CLOUD_IDENTITY,
    days: int = CERT_DAYS,
) -> list[Path]:
    """Create what is missing under ``out`` — ``ca.*``, ``broker.*``, ``{cloud}.*``,
    ``devices/{id}.*``, ``index.json``, ``crl.pem`` — and rewrite ``edgewise.acl`` for every
    device issued so far (``fleet.json`` remembers them and their groups). New certificates are
    valid ``days``. Returns the certificates written or kept."""
    _check_names([*devices, *(group for groups in devices.values() for group in groups)])
    inventory = read_inventory(out)
    for device, groups in devices.items():
        inventory[device] = sorted(set(inventory.get(device, [])) | set(groups))
    ca = create_ca(out)
    index_and_crl(ca)
    if not (out / "broker.crt").exists() and not broker_names:
        raise CertificateError("the broker certificate needs --broker-name (its DNS name or IP)")
    issued = [ca.cert, issue(ca, "broker", out, server_names=broker_names, days=days).cert]
    issued.append(issue(ca, cloud, out, days=days).cert)
    issued += [issue(ca, d, out / "devices", days=days).cert for d in sorted(inventory)]
    write_access(out, inventory, topics, cloud)
    return issued
