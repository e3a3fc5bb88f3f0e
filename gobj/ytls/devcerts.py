"""A local CA and a server certificate for the embedded defaults and demos.

``ensure_dev_certs(directory)`` creates, only where they are missing, ``ca.crt``
and ``private/ca.key``, and ``server.crt`` (full chain: leaf then CA) and
``private/server.key`` for ``localhost``/``127.0.0.1``/``::1``, ECDSA P-256.
Existing files are never overwritten, so an operator's own certificates put
there stay. Private keys are written 0600 in a 0700 directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gobj.fsutil import atomic_write

__all__ = ["ensure_dev_certs", "issue_server_cert"]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yuneta-Py local"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = os.path.join(directory, "ca.crt"), os.path.join(directory, "private", "ca.key")
    if os.path.exists(crt) and os.path.exists(key):
        with open(crt, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key, "rb") as f:
            pkey = serialization.load_pem_private_key(f.read(), None)
        assert isinstance(pkey, ec.EllipticCurvePrivateKey)
        return cert, pkey
    pkey = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("Yuneta-Py local CA"))
            .issuer_name(_name("Yuneta-Py local CA")).public_key(pkey.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(pkey, hashes.SHA256()))
    atomic_write(key, _key_pem(pkey), 0o600)
    atomic_write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, pkey


def issue_server_cert(directory: str, name: str = "server", days: int = 90,
                      hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> str:
    """(Re)issue ``<name>.crt`` + ``private/<name>.key`` from the local CA; returns the crt path.

    Writes the key first, then the certificate, each atomically, so a reader
    that sees the new certificate also finds its key.
    """
    os.makedirs(os.path.join(directory, "private"), mode=0o700, exist_ok=True)
    ca_cert, ca_key = _ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + \
        ca_cert.public_bytes(serialization.Encoding.PEM)
    crt_path = os.path.join(directory, f"{name}.crt")
    atomic_write(os.path.join(directory, "private", f"{name}.key"), _key_pem(key), 0o600)
    atomic_write(crt_path, chain, 0o644)
    return crt_path


def ensure_dev_certs(directory: str, name: str = "server") -> bool:
    """Create the CA and the server pair where missing; True when something was made."""
    os.makedirs(os.path.join(directory, "private"), mode=0o700, exist_ok=True)
    os.chmod(os.path.join(directory, "private"), 0o700)
    if os.path.exists(os.path.join(directory, f"{name}.crt")) and \
            os.path.exists(os.path.join(directory, "private", f"{name}.key")):
        return False
    issue_server_cert(directory, name)
    return True
