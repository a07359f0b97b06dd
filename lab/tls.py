"""The lab's certificate authority and the edge's certificate, made once into the state
directory: the keys (mode 0600) never leave it, clients trust ``ca.crt``."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
EDGE_CERT = "edge.crt"
EDGE_KEY = "edge.key"
_VALID_DAYS = 365


def ensure(directory: Path, names: tuple[str, ...], addresses: tuple[str, ...] = ()) -> bool:
    """Makes the CA and a certificate for ``names`` and ``addresses`` (and 127.0.0.1) in
    ``directory`` unless they are there and cover them; True when it made them."""
    wanted = _alternative_names(names, addresses)
    if all((directory / name).exists() for name in (CA_CERT, EDGE_CERT, EDGE_KEY)) and set(
        wanted
    ) <= set(_covered(directory / EDGE_CERT)):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dialogs lab CA")])
    signs_certificates = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(signs_certificates, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    edge_key = ec.generate_private_key(ec.SECP256R1())
    edge_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    edge = (
        _builder(edge_name, ca_name, edge_key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(directory / EDGE_KEY, _private(edge_key))
    _write(directory / EDGE_CERT, edge.public_bytes(pem))
    # The CA's key is not kept: nothing else is ever signed with it.
    _write(directory / CA_CERT, ca.public_bytes(pem))
    return True


def _alternative_names(
    names: tuple[str, ...], addresses: tuple[str, ...]
) -> list[x509.GeneralName]:
    alternative: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    for address in ("127.0.0.1", *addresses):
        alternative.append(x509.IPAddress(ipaddress.ip_address(address)))
    return alternative


def _covered(certificate: Path) -> list[x509.GeneralName]:
    """The subject alternative names of ``certificate`` (an older lab's may lack some)."""
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    return list(loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    temporary.replace(path)
