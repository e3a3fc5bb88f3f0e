"""Certificate material: read, parse and validate the files a ``crypto`` config names.

Both backends start from the :class:`Material` this module returns, so the same
bad file gets the same refusal whichever library would have served it. Every
refusal is a :class:`TLSError` whose text names the ``crypto`` field, the file
and the cause, in that order, e.g. ``"ssl_certificate_key '/c/k.pem': wrong
passphrase (ssl_key_password) or corrupt key"``.

What is checked here is what can be known without a TLS library: the files
exist and parse, the key matches the leaf, each certificate of the chain is
issued (names and signature) by the next one, the leaf is inside its validity
period, and the key type is one TLS 1.2/1.3 can sign with. Whether the
configured protocol and ciphers can actually serve the key is proven later, by
the backend, with a loopback handshake.

The private key lives only in memory: it is decrypted here with the configured
passphrase (never a prompt: the password is always passed as bytes or None)
and kept as unencrypted PKCS8 PEM for the backend to load.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from .base import TLSError

__all__ = ["Material", "load_material", "cert_info_of"]

# ssl_min_version spellings we accept, mapped to the one name we keep.
# TLS 1.0 and 1.1 are refused (RFC 8996 deprecates them).
_MIN_VERSIONS = {
    "tlsv1.2": "TLSv1.2", "tls1.2": "TLSv1.2", "1.2": "TLSv1.2",
    "tlsv1.3": "TLSv1.3", "tls1.3": "TLSv1.3", "1.3": "TLSv1.3",
}
_VERIFY_MODES = ("none", "optional", "required")
_LIBRARIES = ("openssl", "mbedtls")

# Curves with a TLS 1.3 signature scheme (RFC 8446 section 4.2.3); a key on any
# other curve loads fine and then fails every handshake.
_TLS_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

# OpenSSL's default security level (2) refuses RSA keys under 2048 bits; saying
# so here gives a clearer message than the library's EE_KEY_TOO_SMALL.
_MIN_RSA_BITS = 2048

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.*?"
    rb"-----END \1-----\r?\n?",
    re.S,
)


@dataclass(frozen=True)
class Material:
    """Validated certificate material and normalized settings for one context.

    For a client without a certificate of its own, ``chain_pem`` and ``key_pem``
    are ``b""``, ``chain`` is empty and ``leaf`` and ``info`` are None.
    ``digest`` changes whenever the certificates or the key change; it does not
    cover ``settings`` or ``trusted_pem`` (compare those separately).
    ``key_pem`` is a secret: it never appears in ``repr()``.
    """

    chain_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate | None
    chain: tuple[x509.Certificate, ...]
    info: dict[str, Any] | None
    digest: str
    trusted_pem: bytes | None
    settings: dict[str, Any]

    def serves_same(self, other: Material) -> bool:
        """True when a context built from ``other`` would serve exactly like one
        built from this: same certificates and key, settings and trusted CAs."""
        return (self.digest == other.digest and self.settings == other.settings
                and self.trusted_pem == other.trusted_pem)

    def __repr__(self) -> str:
        subject = self.info["subject"] if self.info else None
        return f"Material(subject={subject!r}, digest={self.digest[:16]}...)"


def load_material(
    crypto: dict[str, Any], *, server: bool, allow_expired: bool = False
) -> Material:
    """Read and validate the files named by ``crypto``.

    ``allow_expired=True`` lets a leaf whose not_after is past load anyway: the
    initial ``ytls_init`` uses it so a service with an expired certificate still
    starts (and reports ``days_remaining <= 0`` for the expiry monitor to alert
    on), while ``reload`` passes False so that a renewal never swaps an expired
    certificate in over a serving one. A leaf that is not yet valid is always
    refused: it points at a wrong clock or a wrong file, not at a late renewal.

    Returns a :class:`Material`. Raises :class:`TLSError` (``field`` and
    ``path`` set) on the first problem found; nothing else is touched.
    """
    settings = _normalize_settings(crypto, server)
    cert_path = _path_of(crypto, "ssl_certificate")
    key_path = _path_of(crypto, "ssl_certificate_key")
    trusted_path = _path_of(crypto, "ssl_trusted_certificate")

    # A server must present a certificate; a client may or may not.
    if server:
        for field, value in (("ssl_certificate", cert_path),
                             ("ssl_certificate_key", key_path)):
            if not value:
                raise TLSError(f"{field}: required for a server, not set", field=field)
    elif bool(cert_path) != bool(key_path):
        have, lack = (("ssl_certificate", "ssl_certificate_key") if cert_path
                      else ("ssl_certificate_key", "ssl_certificate"))
        raise TLSError(f"{lack}: required when {have} is set, not set", field=lack)

    trusted_pem = None
    if trusted_path:
        trusted_pem = _load_trusted(trusted_path)
    _check_client_trust(settings, server, trusted_pem)
    _check_server_trust(settings, server, trusted_pem)

    if not cert_path:
        return Material(b"", b"", None, (), None, _digest(b"", b""), trusted_pem, settings)

    chain = _load_certs("ssl_certificate", cert_path)
    key = _load_key(key_path, crypto.get("ssl_key_password"))
    leaf = chain[0]
    # Order first: a file with the issuer on top would otherwise be reported
    # as a key mismatch, which sends the operator after the wrong file.
    _check_chain_links(chain, cert_path)
    _check_key_matches(leaf, key, cert_path, key_path)
    _check_key_usable(key, key_path, settings)
    _check_validity(leaf, cert_path, allow_expired)

    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub_der = _public_der(key.public_key())
    return Material(
        chain_pem=chain_pem,
        key_pem=key_pem,
        leaf=leaf,
        chain=tuple(chain),
        info=cert_info_of(leaf, chain),
        digest=_digest(chain_pem, pub_der),
        trusted_pem=trusted_pem,
        settings=settings,
    )


def serial_hex(serial: int) -> str:
    """Upper-case hex, two digits per byte, as ``openssl x509 -serial`` prints it
    (a leading zero is kept: 06AB..., not 6AB...), so operators can compare."""
    text = format(serial, "X")
    return text if len(text) % 2 == 0 else "0" + text


def cert_info_of(
    leaf: x509.Certificate, chain: tuple[x509.Certificate, ...] | list[x509.Certificate] | None = None
) -> dict[str, Any]:
    """The facts ``YTLS.cert_info()`` reports about ``leaf``.

    ``chain_length`` counts the certificates in the file (1 when ``chain`` is
    not given).
    """
    key_type, key_size = _key_kind(leaf.public_key())
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex().upper()
    return {
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "serial": serial_hex(leaf.serial_number),
        "not_before": int(leaf.not_valid_before_utc.timestamp()),
        "not_after": int(leaf.not_valid_after_utc.timestamp()),
        "fingerprint": ":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)),
        "sans": _sans_of(leaf),
        "key_type": key_type,
        "key_size": key_size,
        "chain_length": len(chain) if chain else 1,
    }


# Settings

def _normalize_settings(crypto: dict[str, Any], server: bool) -> dict[str, Any]:
    library = str(crypto.get("library") or "openssl").lower()
    if library not in _LIBRARIES:
        raise TLSError(
            f"library: {crypto.get('library')!r} is not a TLS library we have; "
            f"choices: {', '.join(_LIBRARIES)}", field="library")

    raw_min = str(crypto.get("ssl_min_version") or "TLSv1.2")
    min_version = _MIN_VERSIONS.get(raw_min.lower())
    if min_version is None:
        raise TLSError(
            f"ssl_min_version: {raw_min!r} is not supported; choices: TLSv1.2, TLSv1.3",
            field="ssl_min_version")

    # A server verifies clients only when asked to; a client verifies its server
    # unless told otherwise, because an unverified client talks to anybody.
    default_mode = "none" if server else "required"
    verify_mode = str(crypto.get("ssl_verify_mode") or default_mode).lower()
    if verify_mode not in _VERIFY_MODES:
        raise TLSError(
            f"ssl_verify_mode: {crypto.get('ssl_verify_mode')!r} is not a mode; "
            f"choices: {', '.join(_VERIFY_MODES)}", field="ssl_verify_mode")

    num_tickets = crypto.get("ssl_num_tickets")
    if num_tickets is not None:
        try:
            num_tickets = int(num_tickets)
        except (TypeError, ValueError):
            num_tickets = -1
        if num_tickets < 0:
            raise TLSError(
                f"ssl_num_tickets: {crypto.get('ssl_num_tickets')!r} is not a "
                f"count (an integer >= 0)", field="ssl_num_tickets")

    return {
        "library": library,
        "verify_mode": verify_mode,
        "ciphers": crypto.get("ssl_ciphers") or None,
        "min_version": min_version,
        "server_name": crypto.get("ssl_server_name") or None,
        "allow_insecure_client": bool(crypto.get("ssl_allow_insecure_client", False)),
        "num_tickets": num_tickets,
    }


def _check_client_trust(settings: dict[str, Any], server: bool, trusted: bytes | None) -> None:
    if server:
        return
    insecure = settings["allow_insecure_client"]
    if settings["verify_mode"] == "none" and not insecure:
        raise TLSError(
            "ssl_verify_mode: 'none' on a client accepts any server; set "
            "ssl_allow_insecure_client true to mean it", field="ssl_verify_mode")
    if trusted is None and settings["verify_mode"] != "none":
        if not insecure:
            raise TLSError(
                "ssl_trusted_certificate: a client needs the CA that signs its "
                "server; not set (or set ssl_allow_insecure_client true to skip "
                "verification)", field="ssl_trusted_certificate")
        settings["verify_mode"] = "none"


def _check_server_trust(settings: dict[str, Any], server: bool, trusted: bytes | None) -> None:
    if server and settings["verify_mode"] != "none" and trusted is None:
        raise TLSError(
            f"ssl_trusted_certificate: ssl_verify_mode {settings['verify_mode']!r} "
            f"needs the CA that signs client certificates; not set",
            field="ssl_trusted_certificate")


# Files

def _path_of(crypto: dict[str, Any], field: str) -> str:
    value = crypto.get(field)
    return os.fspath(value) if value else ""


def _read(field: str, path: str) -> bytes:
    """The bytes of ``path``, or a TLSError saying why they cannot be had."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TLSError(f"{field} '{path}': no such file", field=field, path=path) from None
    except PermissionError:
        raise TLSError(
            f"{field} '{path}': permission denied reading the file as uid {os.geteuid()}",
            field=field, path=path) from None
    except IsADirectoryError:
        raise TLSError(f"{field} '{path}': is a directory, not a file",
                       field=field, path=path) from None
    except OSError as exc:
        raise TLSError(f"{field} '{path}': cannot read the file: {exc.strerror}",
                       field=field, path=path) from None
    if not data.strip():
        raise TLSError(f"{field} '{path}': the file is empty", field=field, path=path)
    return data


def _check_pem_complete(field: str, path: str, data: bytes) -> None:
    """Refuse a PEM block that starts and never ends (a cut-off copy)."""
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1)
        if b"-----END " + label + b"-----" not in data[match.end():]:
            raise TLSError(
                f"{field} '{path}': truncated PEM: '{label.decode()}' block has no "
                f"END line (a partial copy?)", field=field, path=path)


def _load_certs(field: str, path: str) -> list[x509.Certificate]:
    data = _read(field, path)
    _check_pem_complete(field, path, data)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        what = ("a private key" if b"PRIVATE KEY-----" in data
                else "no PEM block" if b"-----BEGIN" not in data else "other PEM blocks")
        raise TLSError(
            f"{field} '{path}': no certificate in the file (it holds {what})",
            field=field, path=path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSError(f"{field} '{path}': unparseable certificate PEM: {exc}",
                       field=field, path=path) from None


def _load_trusted(path: str) -> bytes:
    certs = _load_certs("ssl_trusted_certificate", path)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _load_key(path: str, password: Any) -> Any:
    field = "ssl_certificate_key"
    data = _read(field, path)
    _check_pem_complete(field, path, data)
    block = _KEY_BLOCK.search(data)
    if block is None:
        what = "a certificate" if b"CERTIFICATE-----" in data else "no private key"
        raise TLSError(
            f"{field} '{path}': the file holds no private key (found {what})",
            field=field, path=path)

    # Always hand cryptography bytes or None: with a callback-free password
    # OpenSSL can never stop to prompt on a terminal.
    secret = password.encode() if isinstance(password, str) else (password or None)
    try:
        return _decrypt_key(block.group(0), secret)
    except TypeError:
        raise TLSError(
            f"{field} '{path}': the key is encrypted and ssl_key_password is not set",
            field=field, path=path) from None
    except ValueError:
        cause = ("wrong passphrase (ssl_key_password) or corrupt key" if secret
                 else "unparseable private key PEM")
        raise TLSError(f"{field} '{path}': {cause}", field=field, path=path) from None
    except UnsupportedAlgorithm as exc:
        raise TLSError(f"{field} '{path}': unsupported key algorithm: {exc}",
                       field=field, path=path) from None


def _decrypt_key(pem: bytes, secret: bytes | None) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=secret)
    except TypeError:
        # A passphrase configured for a key that is not encrypted is harmless
        # (a renewal may have dropped the encryption): load it without one.
        if secret is None:
            raise
        return serialization.load_pem_private_key(pem, password=None)


# Validation

def _check_key_matches(leaf: x509.Certificate, key: Any, cert_path: str, key_path: str) -> None:
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise TLSError(
            f"ssl_certificate_key '{key_path}': key does not match the certificate "
            f"'{cert_path}' (subject {leaf.subject.rfc4514_string()})",
            field="ssl_certificate_key", path=key_path)


def _check_key_usable(key: Any, key_path: str, settings: dict[str, Any]) -> None:
    """Refuse key types TLS 1.2/1.3 cannot sign with, and keys ssl_ciphers shuts out."""
    field = "ssl_certificate_key"
    kind, size = _key_kind(key.public_key())
    cause = ""
    if isinstance(key, dsa.DSAPrivateKey):
        cause = ("DSA keys cannot serve: TLS 1.3 has no DSA signature and the "
                 "TLS 1.2 DSS suites are disabled; use an EC P-256 or RSA-2048 key")
    elif isinstance(key, rsa.RSAPrivateKey) and size < _MIN_RSA_BITS:
        cause = f"RSA-{size} is below the {_MIN_RSA_BITS}-bit minimum"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _TLS_CURVES:
        cause = (f"EC curve {key.curve.name} has no TLS signature scheme; use "
                 f"{', '.join(_TLS_CURVES.values())}")
    elif kind not in ("RSA", "EC", "Ed25519", "Ed448"):
        cause = f"unsupported key type {kind}"
    if cause:
        raise TLSError(f"{field} '{key_path}': {cause}", field=field, path=key_path)
    _check_ciphers_cover(kind, key_path, settings)


def _check_ciphers_cover(kind: str, key_path: str, settings: dict[str, Any]) -> None:
    """With TLS 1.2 allowed, ssl_ciphers must hold a suite this key can authenticate.

    TLS 1.2 suites name their signature algorithm (ECDHE-ECDSA-..., ECDHE-RSA-...);
    TLS 1.3 suites do not, so a TLSv1.3 minimum needs no check. The cipher string
    is in OpenSSL's syntax, which the stdlib parses for us; other libraries take
    their own names, so they prove this by their loopback handshake instead.
    """
    ciphers = settings["ciphers"]
    if not ciphers or settings["min_version"] == "TLSv1.3" or settings["library"] != "openssl":
        return
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TLSError(f"ssl_ciphers: {ciphers!r} selects no cipher suite",
                       field="ssl_ciphers") from None
    wanted = "auth-rsa" if kind == "RSA" else "auth-ecdsa"
    auths = {c["auth"] for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"}
    if wanted not in auths:
        raise TLSError(
            f"ssl_ciphers: {ciphers!r} has no TLS 1.2 suite that can serve the {kind} "
            f"key '{key_path}' (it offers {', '.join(sorted(auths)) or 'none'}); add "
            f"suites for {wanted} or set ssl_min_version TLSv1.3",
            field="ssl_ciphers", path=key_path)


def _check_chain_links(chain: list[x509.Certificate], path: str) -> None:
    """Each certificate must be issued by the one after it (names and signature)."""
    field = "ssl_certificate"
    for i in range(len(chain) - 1):
        child, parent = chain[i], chain[i + 1]
        where = f"certificate #{i + 1} ({child.subject.rfc4514_string()})"
        if child.issuer != parent.subject:
            raise TLSError(
                f"{field} '{path}': chain out of order: {where} is issued by "
                f"{child.issuer.rfc4514_string()} but certificate #{i + 2} is "
                f"{parent.subject.rfc4514_string()}; the leaf must come first, then "
                f"each issuer in turn", field=field, path=path)
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise TLSError(
                f"{field} '{path}': chain does not link: the signature on {where} "
                f"does not verify with the key of certificate #{i + 2}"
                f"{': ' + str(exc) if str(exc) else ''}", field=field, path=path) from None


def _check_validity(leaf: x509.Certificate, path: str, allow_expired: bool) -> None:
    now = datetime.now(timezone.utc)
    field = "ssl_certificate"
    if leaf.not_valid_before_utc > now:
        raise TLSError(
            f"{field} '{path}': certificate not yet valid: valid from "
            f"{_iso(leaf.not_valid_before_utc)}", field=field, path=path)
    if leaf.not_valid_after_utc < now and not allow_expired:
        raise TLSError(
            f"{field} '{path}': certificate expired on "
            f"{_iso(leaf.not_valid_after_utc)}", field=field, path=path)


# Small helpers

def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _digest(chain_pem: bytes, pub_der: bytes) -> str:
    return hashlib.sha256(chain_pem + pub_der).hexdigest()


def _key_kind(public_key: Any) -> tuple[str, int]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC", public_key.key_size
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(public_key, dsa.DSAPublicKey):
        return "DSA", public_key.key_size
    return type(public_key).__name__, 0


def _sans_of(leaf: x509.Certificate) -> list[str]:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for name in ext.value:
        if isinstance(name, (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier)):
            names.append(name.value)
        elif isinstance(name, x509.IPAddress):
            names.append(str(name.value))
    return names
