"""The OpenSSL backend: stdlib ``ssl`` contexts and ``SSLObject`` over memory BIOs.

Theory of operation
-------------------
:class:`OpenSSLTLS` keeps one reference, ``_current``, to a :class:`_Served`
pair (an ``ssl.SSLContext`` and the :class:`Material` it was built from).
``reload`` builds a complete new pair off to the side, proves it can serve with
an in-memory handshake, and only then rebinds ``_current``: one assignment, so
a filter made at any instant sees either the whole old context or the whole new
one. Each :class:`_Filter` keeps the pair it was born with; the old context is
freed when the last such filter is freed (``live_contexts`` watches this through
weak references to the contexts themselves).
"""

from __future__ import annotations

import os
import ssl
import tempfile
import weakref
from typing import Any

from .base import SecureFilter, TLSError, TLSSessionError, YTLS
from .material import Material, load_material

__all__ = ["OpenSSLTLS"]

_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_SERVER_VERIFY = {
    "none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED,
}

# One read drains at most this much cleartext; a TLS record holds 16 KiB, so a
# few records fit in one call and larger bursts take another loop turn.
_READ_SIZE = 65536

# The memfd route needs both the syscall and /proc to name the descriptor.
_HAVE_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class _Served:
    """A built context and the material it serves; shared by the filters born with it."""

    __slots__ = ("ctx", "material", "server")

    def __init__(self, ctx: ssl.SSLContext, material: Material, server: bool) -> None:
        self.ctx = ctx
        self.material = material
        self.server = server


class OpenSSLTLS(YTLS):
    """A server or client TLS configuration on the stdlib ``ssl`` module."""

    library = "openssl"

    def __init__(self, crypto: dict[str, Any], *, server: bool) -> None:
        """Build the first context; an expired leaf loads (see ``load_material``).

        Raises TLSError when the material is refused or cannot serve.
        """
        self.server = server
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        material = load_material(crypto, server=server, allow_expired=True)
        self._current: _Served | None = self._build(material, _cert_path(crypto))

    # Reload (the delicate part: the swap is one assignment, after all checks)

    def reload(self, crypto: dict[str, Any]) -> dict[str, Any]:
        current = self._served()
        library = str(crypto.get("library") or "openssl").lower()
        if library != self.library:
            raise TLSError(
                f"library: a reload cannot switch from {self.library!r} to "
                f"{crypto.get('library')!r}; recreate the listener", field="library")

        material = load_material(crypto, server=self.server, allow_expired=False)
        old = current.material
        if material.serves_same(old):
            return {"changed": False, "old": old.info, "new": old.info}

        served = self._build(material, _cert_path(crypto))
        self._current = served
        return {"changed": True, "old": old.info, "new": material.info}

    def cert_info(self) -> dict[str, Any] | None:
        info = self._served().material.info
        return dict(info) if info is not None else None

    def new_secure_filter(self, server_hostname: str | None = None) -> SecureFilter:
        served = self._served()
        if self.server:
            return _Filter(served, None)
        hostname = server_hostname or served.material.settings["server_name"]
        if served.ctx.check_hostname and not hostname:
            raise TLSError(
                "ssl_server_name: a verifying client needs the server's name; not "
                "set and no server_hostname given", field="ssl_server_name")
        return _Filter(served, hostname)

    def live_contexts(self) -> int:
        return len(self._contexts)

    def cleanup(self) -> None:
        self._current = None

    def _served(self) -> _Served:
        if self._current is None:
            raise TLSError("this TLS handle was cleaned up; create a new one")
        return self._current

    # Build and validate

    def _build(self, material: Material, cert_path: str) -> _Served:
        ctx = _new_context(material, self.server, cert_path)
        if self.server:
            # The probe client has no certificate, so the proof runs before
            # the context starts asking clients for one.
            _prove_serves(ctx, material, cert_path)
            ctx.verify_mode = _SERVER_VERIFY[material.settings["verify_mode"]]
        self._contexts.add(ctx)
        return _Served(ctx, material, self.server)


def _cert_path(crypto: dict[str, Any]) -> str:
    return str(crypto.get("ssl_certificate") or "")


def _key_name(material: Material) -> str:
    info = material.info or {}
    return f"{info.get('key_type')}-{info.get('key_size')}"


def _new_context(material: Material, server: bool, cert_path: str) -> ssl.SSLContext:
    settings = material.settings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _TLS_VERSIONS[settings["min_version"]]
    # Renegotiation is a TLS 1.2 feature with a history of attacks and no use
    # for us (RFC 8446 removed it); refuse it from either side.
    ctx.options |= ssl.OP_NO_RENEGOTIATION

    if settings["ciphers"]:
        try:
            ctx.set_ciphers(settings["ciphers"])
        except ssl.SSLError:
            raise TLSError(f"ssl_ciphers: {settings['ciphers']!r} selects no cipher suite",
                           field="ssl_ciphers") from None
    if server and settings["num_tickets"] is not None:
        ctx.num_tickets = settings["num_tickets"]

    if material.chain_pem:
        _load_chain_from_memory(ctx, material, cert_path)
    if material.trusted_pem is not None:
        try:
            ctx.load_verify_locations(cadata=material.trusted_pem.decode("ascii"))
        except ssl.SSLError as exc:
            raise TLSError(
                f"ssl_trusted_certificate: OpenSSL refused the CA certificates: "
                f"{_reason(exc)}", field="ssl_trusted_certificate") from None

    # A server's verify_mode is set by OpenSSLTLS._build, after the loopback
    # proof. A client cannot half-trust its server: 'optional' verifies like
    # 'required'; 'none' is only reachable with ssl_allow_insecure_client.
    if not server:
        verify = settings["verify_mode"] != "none"
        ctx.check_hostname = verify
        ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return ctx


def _load_chain_from_memory(ctx: ssl.SSLContext, material: Material, cert_path: str) -> None:
    """Give OpenSSL the chain and the decrypted key without a file on disk.

    ``load_cert_chain`` only takes paths. A memfd is anonymous memory: it has no
    name in any filesystem, vanishes with its last descriptor, and only this
    process (or one allowed to ptrace it) can open it through /proc/self/fd.
    Where memfd is missing the fallback is a file created 0600 inside a fresh
    0700 directory, removed as soon as OpenSSL has read it.
    The empty password makes OpenSSL fail instead of prompting on a terminal
    should the key ever arrive encrypted.
    """
    path_of = _memfd_path if _HAVE_MEMFD else _private_file_path
    try:
        with path_of(material.chain_pem, material.key_pem) as path:
            ctx.load_cert_chain(path, password=b"")
    except ssl.SSLError as exc:
        raise TLSError(
            f"ssl_certificate '{cert_path}': OpenSSL refused the certificate or its "
            f"{_key_name(material)} key: {_reason(exc)}",
            field="ssl_certificate", path=cert_path) from None


class _memfd_path:
    """Context manager: a /proc/self/fd path to a memfd holding ``parts``."""

    def __init__(self, *parts: bytes) -> None:
        self._fd = os.memfd_create("ytls-material", os.MFD_CLOEXEC)
        try:
            for part in parts:
                _write_all(self._fd, part)
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> str:
        return f"/proc/self/fd/{self._fd}"

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


class _private_file_path:
    """Context manager: a 0600 file in a 0700 temp dir, both removed on exit."""

    def __init__(self, *parts: bytes) -> None:
        self._dir = tempfile.mkdtemp(prefix="ytls-")
        self._path = os.path.join(self._dir, "material.pem")
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for part in parts:
                _write_all(fd, part)
        finally:
            os.close(fd)

    def __enter__(self) -> str:
        return self._path

    def __exit__(self, *exc: object) -> None:
        os.unlink(self._path)
        os.rmdir(self._dir)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# Loopback proof: a freshly built server context must complete a handshake.

_probe_clients: dict[ssl.TLSVersion, ssl.SSLContext] = {}


def _probe_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client pinned to one TLS version that accepts any certificate and suite.

    It offers every suite OpenSSL knows, so a failed probe means the *server*
    side (its key, suites or minimum version) cannot serve, not the probe.
    """
    ctx = _probe_clients.get(version)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        ctx.set_ciphers("ALL")
        _probe_clients[version] = ctx
    return ctx


def _prove_serves(ctx: ssl.SSLContext, material: Material, cert_path: str) -> None:
    """Handshake with ``ctx`` in memory at every allowed version; TLSError if any fails.

    TLS 1.2 is where ssl_ciphers decides which key types can serve; TLS 1.3 is
    where the signature schemes do. Both are tried when both are allowed.
    """
    settings = material.settings
    versions = [ssl.TLSVersion.TLSv1_3]
    if settings["min_version"] == "TLSv1.2":
        versions.append(ssl.TLSVersion.TLSv1_2)
    for version in versions:
        try:
            _handshake_in_memory(ctx, _probe_client(version))
        except ssl.SSLError as exc:
            field = "ssl_ciphers" if settings["ciphers"] else "ssl_min_version"
            raise TLSError(
                f"{field}: ssl_ciphers {settings['ciphers'] or 'default'!r} with "
                f"ssl_min_version {settings['min_version']} cannot serve the "
                f"{_key_name(material)} key of '{cert_path}': a loopback "
                f"{version.name.replace('_', '.')} handshake failed: {_reason(exc)}",
                field=field, path=cert_path) from None


def _handshake_in_memory(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server_done = client_done = False
    # A full handshake is two flights each way; the bound only stops a bug
    # from spinning forever.
    for _ in range(8):
        if not client_done:
            client_done = _step(client)
        s_in.write(c_out.read())
        if not server_done:
            server_done = _step(server)
        c_in.write(s_out.read())
        if client_done and server_done:
            return
    raise ssl.SSLError("loopback handshake did not finish")


def _step(obj: ssl.SSLObject) -> bool:
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def _reason(exc: ssl.SSLError) -> str:
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    return exc.reason or exc.strerror or str(exc)


# The per-connection filter: the hot path. Kept to attribute loads and the
# BIO calls themselves; no per-call buffers or lists in the common case.

class _Filter(SecureFilter):
    __slots__ = ("_served", "_in", "_out", "_ssl", "_pending", "handshake_done", "peer_closed")

    def __init__(self, served: _Served, hostname: str | None) -> None:
        self._served: _Served | None = served
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = served.ctx.wrap_bio(
            self._in, self._out, server_side=served.server, server_hostname=hostname)
        self._pending: list[bytes] = []   # cleartext sent before the handshake ended
        self.handshake_done = False
        self.peer_closed = False

    # Handshake

    def start(self) -> None:
        if not self.handshake_done:
            self._do_handshake()

    def _do_handshake(self) -> bool:
        sslobj = self._live()
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TLSSessionError(f"TLS handshake failed: {_reason(exc)}") from None
        self.handshake_done = True
        pending, self._pending = self._pending, []
        for data in pending:
            self._write(data)
        return True

    # Incoming: ciphertext in, cleartext out

    def incoming(self, data: bytes) -> bytes:
        if data:
            self._in.write(data)
        if not self.handshake_done and not self._do_handshake():
            return b""
        sslobj = self._ssl
        if sslobj is None:
            raise TLSSessionError("session already freed")
        try:
            chunk = sslobj.read(_READ_SIZE)
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLZeroReturnError:
            self.peer_closed = True  # close_notify: no more cleartext will come
            return b""
        except ssl.SSLError as exc:
            raise TLSSessionError(f"TLS record refused: {_reason(exc)}") from None
        if not chunk:
            # CPython's read() gives b"" (not SSLZeroReturnError) once OpenSSL
            # has received close_notify: the peer is done sending.
            self.peer_closed = True
            return chunk
        # Common case: one read drained every record; skip the read that would
        # only raise SSLWantReadError.
        if not self._in.pending and not sslobj.pending():
            return chunk
        return self._read_more(sslobj, chunk)

    def _read_more(self, sslobj: ssl.SSLObject, first: bytes) -> bytes:
        chunks = [first]
        try:
            while chunk := sslobj.read(_READ_SIZE):
                chunks.append(chunk)
            self.peer_closed = True  # b"": close_notify received (see incoming)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.peer_closed = True
        except ssl.SSLError as exc:
            raise TLSSessionError(f"TLS record refused: {_reason(exc)}") from None
        return b"".join(chunks)

    # Outgoing: cleartext in, ciphertext out

    def send(self, data: bytes) -> None:
        if self.handshake_done:
            self._write(data)
        else:
            self._live()
            self._pending.append(bytes(data))

    def _write(self, data: bytes) -> None:
        sslobj = self._ssl
        if sslobj is None:
            raise TLSSessionError("session already freed")
        try:
            # A memory BIO never pushes back, so OpenSSL takes the whole buffer
            # in one call unless it is bigger than SSL_write's int length.
            done = sslobj.write(data)
            if done != len(data):
                view = memoryview(data)[done:]
                while view:
                    view = view[sslobj.write(view):]
        except ssl.SSLError as exc:
            raise TLSSessionError(f"TLS write failed: {_reason(exc)}") from None

    def outgoing(self) -> bytes:
        return self._out.read()

    # Closing

    def close_notify(self) -> None:
        sslobj = self._ssl
        if sslobj is None or not self.handshake_done:
            return
        try:
            sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is queued; the peer's answer is not needed
        except ssl.SSLError as exc:
            raise TLSSessionError(f"TLS close failed: {_reason(exc)}") from None

    def free(self) -> None:
        self._ssl = None
        self._served = None
        self._pending = []

    def info(self) -> dict[str, Any]:
        sslobj = self._ssl
        served = self._served
        if sslobj is None or served is None:
            return {"freed": True}
        cipher = sslobj.cipher() if self.handshake_done else None
        peer = sslobj.getpeercert() if self.handshake_done else None
        own = served.material.info
        return {
            "library": "openssl",
            "handshake_done": self.handshake_done,
            "version": sslobj.version(),
            "cipher": cipher[0] if cipher else None,
            "bits": cipher[2] if cipher else None,
            "peer_subject": _subject_of(peer) if peer else None,
            "cert_fingerprint": own["fingerprint"] if own else None,
        }

    def _live(self) -> ssl.SSLObject:
        sslobj = self._ssl
        if sslobj is None:
            raise TLSSessionError("session already freed")
        return sslobj


def _subject_of(peer: dict[str, Any]) -> str:
    # getpeercert() gives ((('commonName', 'x'),), ...); keep it readable.
    return ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
