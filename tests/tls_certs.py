"""Throwaway certificates for tests: a CA (root or intermediate) and leaves it issues.

Typical use (``from tests.tls_certs import make_ca, issue``)::

    root = make_ca(tmp_path, "root")
    inter = make_ca(tmp_path, "inter", parent=root)
    files = issue(inter, tmp_path, "a", cn="localhost", days=1, key_type="rsa")
    crypto = {"ssl_certificate": str(files.fullchain),
              "ssl_certificate_key": str(files.key)}
    client_ca = root.cert_path        # what a client trusts

Everything is written under the directory given; private keys are 0600.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "CertFiles", "make_ca", "issue", "self_signed", "new_key", "pem"]


@dataclass(frozen=True)
class CA:
    """A certificate authority: its key, its certificate and the path of the latter.

    ``chain`` is this CA followed by its parents up to, not including, the root:
    what a server appends after a leaf this CA issued (empty for a root).
    """

    name: str
    key: Any
    cert: x509.Certificate
    cert_path: Path
    chain: tuple[x509.Certificate, ...] = field(default=())


@dataclass(frozen=True)
class CertFiles:
    """One issued certificate on disk.

    cert: the leaf alone; key: its private key (encrypted when a password was
    given); chain: the issuing CA chain without the leaf (maybe empty);
    fullchain: leaf then chain, what ``ssl_certificate`` names.
    """

    cert: Path
    key: Path
    chain: Path
    fullchain: Path
    leaf: x509.Certificate
    private_key: Any
    password: bytes | None = None

    def crypto(self, **extra: Any) -> dict[str, Any]:
        """A server ``crypto`` dict for these files, plus ``extra`` keys."""
        out: dict[str, Any] = {
            "ssl_certificate": str(self.fullchain),
            "ssl_certificate_key": str(self.key),
        }
        if self.password is not None:
            out["ssl_key_password"] = self.password.decode()
        out.update(extra)
        return out


def new_key(key_type: str = "ec", key_size: int = 2048) -> Any:
    """A private key: 'ec' (P-256), 'rsa' (key_size bits), 'dsa', 'ed25519',
    or 'secp256k1' (an EC curve TLS cannot sign with)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    if key_type == "dsa":
        return dsa.generate_private_key(key_size=key_size)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "secp256k1":
        return ec.generate_private_key(ec.SECP256K1())
    raise ValueError(f"key_type {key_type!r}: expected ec, rsa, dsa, ed25519 or secp256k1")


def pem(*certs: x509.Certificate) -> bytes:
    """The PEM text of ``certs`` in the order given."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_ca(
    directory: Path, name: str, *, parent: CA | None = None,
    key_type: str = "ec", days: int = 3650,
) -> CA:
    """A root CA, or an intermediate signed by ``parent``; its cert at ``<name>-ca.pem``."""
    key = new_key(key_type)
    subject = _name(f"{name} CA")
    now = datetime.now(timezone.utc)
    issuer_name = parent.cert.subject if parent else subject
    signer = parent.key if parent else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if parent:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
            critical=False)
    cert = builder.sign(signer, _hash_for(signer))
    path = Path(directory) / f"{name}-ca.pem"
    path.write_bytes(pem(cert))
    chain = ((cert,) + parent.chain) if parent else ()
    return CA(name=name, key=key, cert=cert, cert_path=path, chain=chain)


def issue(
    ca: CA | None, directory: Path, name: str, *,
    cn: str = "localhost", sans: list[str] | None = None, days: float = 365,
    key_type: str = "ec", key_size: int = 2048,
    not_before: datetime | None = None, password: bytes | None = None,
    serial: int | None = None,
) -> CertFiles:
    """A leaf for ``cn`` issued by ``ca`` (``ca=None``: self-signed).

    Valid from ``not_before`` (default: one minute ago) for ``days`` days (may
    be fractional, or make the certificate already expired when combined with
    a past ``not_before``). ``sans`` defaults to ``[cn, "127.0.0.1", "::1"]``;
    entries that parse as IP addresses become IP SANs.
    Files: ``<name>.crt``, ``<name>.key``, ``<name>.chain``, ``<name>.fullchain``.
    """
    key = new_key(key_type, key_size)
    start = not_before or (datetime.now(timezone.utc) - timedelta(minutes=1))
    subject = _name(cn)
    issuer_name = ca.cert.subject if ca else subject
    signer = ca.key if ca else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_sans(sans or [cn, "127.0.0.1", "::1"])),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False)
    leaf = builder.sign(signer, _hash_for(signer))
    chain = ca.chain if ca else ()
    return _write_files(Path(directory), name, leaf, key, chain, password)


def self_signed(directory: Path, name: str, **kw: Any) -> CertFiles:
    """A self-signed leaf (subject == issuer); same options as :func:`issue`."""
    return issue(None, directory, name, **kw)


def _write_files(
    directory: Path, name: str, leaf: x509.Certificate, key: Any,
    chain: tuple[x509.Certificate, ...], password: bytes | None,
) -> CertFiles:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    paths = {ext: directory / f"{name}.{ext}" for ext in ("crt", "key", "chain", "fullchain")}
    paths["crt"].write_bytes(pem(leaf))
    paths["chain"].write_bytes(pem(*chain))
    paths["fullchain"].write_bytes(pem(leaf, *chain))
    paths["key"].touch(mode=0o600)
    paths["key"].chmod(0o600)
    paths["key"].write_bytes(key_pem)
    return CertFiles(cert=paths["crt"], key=paths["key"], chain=paths["chain"],
                     fullchain=paths["fullchain"], leaf=leaf, private_key=key,
                     password=password)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yuneta-Py tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _sans(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True,
        crl_sign=True, encipher_only=False, decipher_only=False)


def _hash_for(signer: Any) -> hashes.HashAlgorithm | None:
    # Ed25519 signs without a separate digest; cryptography wants None for it.
    return None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
