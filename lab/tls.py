"""The lab's certificate authorities and certificates, made once into the state directory;
the keys (mode 0600) never leave it.

- The edge's: ``ca.crt`` (clients trust it) and ``edge.crt``; the CA's key is not kept.
- The HA cluster's: ``cluster-ca.crt`` and, per database host, ``hosts/<name>.crt`` (its
  etcd member, etcd client and PostgreSQL server certificate: its name and address, server
  and client use). The cluster CA's key is kept, so hosts added later get theirs.
"""

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
CLUSTER_CA_CERT = "cluster-ca.crt"
CLUSTER_CA_KEY = "cluster-ca.key"
HOSTS_DIR = "hosts"
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
    ca_key, ca = _new_ca("dialogs lab CA")
    edge_key, edge = _signed(ca_key, ca, names[0], wanted, [ExtendedKeyUsageOID.SERVER_AUTH])
    _write(directory / EDGE_KEY, _private(edge_key))
    _write(directory / EDGE_CERT, edge.public_bytes(_PEM))
    # The CA's key is not kept: nothing else is ever signed with it.
    _write(directory / CA_CERT, ca.public_bytes(_PEM))
    return True


def ensure_hosts(directory: Path, hosts: dict[str, str]) -> list[str]:
    """Makes the cluster CA once, and a certificate for each host of ``hosts`` (name ->
    address) that has none covering its name and address; returns the hosts it made."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_cert, ca_key_path = directory / CLUSTER_CA_CERT, directory / CLUSTER_CA_KEY
    if ca_cert.exists() and ca_key_path.exists():
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key, ca = _new_ca("dialogs lab cluster CA")
        _write(ca_key_path, _private(ca_key))
        _write(ca_cert, ca.public_bytes(_PEM))
    (directory / HOSTS_DIR).mkdir(mode=0o700, exist_ok=True)
    uses = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    made = []
    for name, address in hosts.items():
        cert, key = host_files(directory, name)
        wanted = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(address))]
        if cert.exists() and key.exists() and set(wanted) <= set(_covered(cert)):
            continue
        host_key, host = _signed(ca_key, ca, name, wanted, uses)
        _write(key, _private(host_key))
        _write(cert, host.public_bytes(_PEM))
        made.append(name)
    return made


def host_files(directory: Path, name: str) -> tuple[Path, Path]:
    """The certificate and the key of cluster host ``name``."""
    return directory / HOSTS_DIR / f"{name}.crt", directory / HOSTS_DIR / f"{name}.key"


_PEM = serialization.Encoding.PEM


def _new_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signs_certificates = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        _builder(name, name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(signs_certificates, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, ca


def _signed(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    common_name: str,
    alternative: list[x509.GeneralName],
    uses: list[x509.ObjectIdentifier],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        _builder(subject, ca.subject, key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(uses), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


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
