"""A private certificate authority for a cluster, made with ``cryptography``.

``make_ca`` creates the CA; ``issue_server_cert`` signs a server certificate
whose subject alternative names cover the hosts clients dial. Keys are EC
P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _load(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def make_ca(directory: Path, name: str = "ppml cluster CA") -> TlsFiles:
    """Create a self-signed CA certificate and key in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    files = TlsFiles(directory / "ca.pem", directory / "ca.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.key)
    return files


def _general_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _sign_leaf(
    ca: TlsFiles, name: str, public_key: ec.EllipticCurvePublicKey, hosts: list[str]
) -> x509.Certificate:
    """A leaf certificate (CN ``name``, SANs ``hosts``) for ``public_key``, signed by ``ca``."""
    ca_cert, ca_key = _load(ca)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def issue_server_cert(ca: TlsFiles, directory: Path, name: str, hosts: list[str]) -> TlsFiles:
    """Sign a server certificate for ``hosts`` (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_leaf(ca, name, key.public_key(), hosts)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / f"{name}.pem", directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.key)
    return files


def make_csr(directory: Path, name: str, hosts: list[str]) -> TlsFiles:
    """A fresh key (``NAME.key``, 0600, never leaves) and a signing request ``NAME.csr``.

    For an organisation that keeps its own key: it sends only the CSR to the
    CA operator (:func:`sign_csr`) and gets its certificate back.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / f"{name}.csr", directory / f"{name}.key")
    files.cert.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.key)
    return files


@dataclass(frozen=True)
class CsrInfo:
    name: str
    hosts: list[str]


def read_csr(data: bytes) -> tuple[x509.CertificateSigningRequest, CsrInfo]:
    """Parse and check a CSR: valid self-signature, EC P-256 key, one CN, SANs listed."""
    csr = x509.load_pem_x509_csr(data)
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the CSR's key must be EC P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not str(names[0].value):
        raise ValueError("the CSR must name exactly one commonName (the process name)")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise ValueError("the CSR lists no subject alternative names (host names or IPs)") from exc
    hosts = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    hosts += list(san.get_values_for_type(x509.DNSName))
    return csr, CsrInfo(str(names[0].value), hosts)


def sign_csr(ca: TlsFiles, csr_pem: bytes, out: Path, expect_name: str | None = None) -> CsrInfo:
    """Sign a CSR with the cluster CA (the CA operator never sees the requester's key).

    The certificate carries the CSR's commonName and SANs; with ``expect_name``,
    a CSR for any other name is refused.
    """
    csr, info = read_csr(csr_pem)
    if expect_name is not None and info.name != expect_name:
        raise ValueError(f"the CSR is for {info.name!r}, expected {expect_name!r}")
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    cert = _sign_leaf(ca, info.name, key, info.hosts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return info
