"""The mbed TLS backend: python-mbedtls contexts and sans-I/O ``TLSWrappedBuffer``.

Theory of operation
-------------------
mbed TLS has no reference count on its configuration: an ``mbedtls_ssl_config``
must outlive every ``mbedtls_ssl_context`` set up on it, and the C code of the
runtime we model keeps that promise with an explicit counted bundle. We do the
same with :class:`Bundle`: the configuration, the certificate chain, the key and
the ``ServerContext``/``ClientContext`` built on them travel together, and

* the :class:`MbedTLS` handle holds one reference to its current bundle;
* each filter takes one reference when it is created and drops it in ``free()``;
* ``reload`` builds and proves a whole new bundle, swaps the handle's reference
  (one assignment) and only then drops the old one.

When the count reaches zero the bundle marks itself released and lets go of
every library object, so the old configuration dies exactly when the last
session born with it ends. Python would keep the objects alive anyway while
someone points at them; the explicit count is what lets ``live_contexts()`` and
the tests say *when* that happens, and catch a filter that forgets ``free()``.

Everything below works on bytes; nothing here touches a socket.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from mbedtls import exceptions as mbed_exc
from mbedtls import pk as mbed_pk
from mbedtls import tls as mbed_tls
from mbedtls import x509 as mbed_x509

from .base import SecureFilter, TLSError, TLSSessionError, YTLS
from .material import Material, load_material

__all__ = ["MbedTLS", "Bundle", "MbedPipe", "peer_facts"]

# python-mbedtls gives each buffer 32 KiB rings for ciphertext in and out. A
# write of more cleartext than fits would fail half-way with WantWriteError and
# no count of what was taken, so cleartext goes in slices this size (one full
# record) and the out ring is drained after each slice.
_SLICE = 16384

# Largest chunk moved into the input ring at once; the ring holds 32 KiB and a
# partial record may already sit in it.
_FEED = 16384

# mbed TLS reports "peer sent close_notify" as an error code from ssl_read.
_PEER_CLOSE_NOTIFY = 0x7880

_VERSION_NAMES = {
    mbed_tls.TLSVersion.TLSv1_2: "TLSv1.2",
    mbed_tls.TLSVersion.TLSv1_3: "TLSv1.3",
    mbed_tls.DTLSVersion.DTLSv1_2: "DTLSv1.2",
}

_OVER = mbed_tls.HandshakeStep.HANDSHAKE_OVER
_DTLS_VERSIONS = (mbed_tls.DTLSVersion.DTLSv1_0, mbed_tls.DTLSVersion.DTLSv1_2)


class Bundle:
    """A library context and the material it serves, with an explicit refcount.

    ``context`` is whatever the backend needs to start a session (an mbed TLS
    ``ServerContext``/``ClientContext``, or a pyOpenSSL ``Context`` for DTLS).
    ``refcount`` counts the handle plus every live session; ``released`` turns
    True, and ``context`` None, when it reaches zero. ``extra`` holds per-bundle
    helpers that must die with the context (the DTLS cookie gate).
    """

    __slots__ = ("context", "material", "refcount", "released", "extra", "_on_release")

    def __init__(self, context: Any, material: Material,
                 on_release: Callable[[Bundle], None]) -> None:
        self.context: Any = context
        self.material = material
        self.refcount = 0
        self.released = False
        self.extra: dict[str, Any] = {}
        self._on_release = on_release

    def incref(self) -> None:
        if self.released:
            raise RuntimeError("bundle already released: no session may start on it")
        self.refcount += 1

    def decref(self) -> None:
        if self.refcount <= 0:
            raise RuntimeError("bundle refcount would go below zero (double free?)")
        self.refcount -= 1
        if self.refcount == 0:
            self._release()

    def _release(self) -> None:
        # Drop the library objects; the material stays for post-mortem info.
        self.released = True
        self.context = None
        self.extra.clear()
        self._on_release(self)


class BundleHandle:
    """What a handle over counted bundles shares (MbedTLS here, YDTLS for DTLS):
    reload, cert_info, live_contexts, cleanup and the current bundle. A subclass
    sets ``server``, ``library``, ``_live``, ``_bundle`` and defines ``_build``."""

    server: bool
    library: str
    _live: set[Bundle]
    _bundle: Bundle | None

    def _build(self, material: Material, crypto: dict[str, Any]) -> Bundle:
        raise NotImplementedError

    # Reload: the delicate part. Nothing the handle serves changes until the
    # new bundle is complete and proven; the swap is one assignment; the old
    # bundle loses only the handle's reference, never a session's.

    def reload(self, crypto: dict[str, Any]) -> dict[str, Any]:
        current = self.bundle
        check_same_library(crypto, self.library)
        material = load_material(crypto, server=self.server, allow_expired=False)
        old = current.material
        if same_material(material, old):
            return {"changed": False, "old": old.info, "new": old.info}

        fresh = self._build(material, crypto)
        self._bundle = fresh
        current.decref()
        return {"changed": True, "old": old.info, "new": material.info}

    def cert_info(self) -> dict[str, Any] | None:
        info = self.bundle.material.info
        return dict(info) if info is not None else None

    def live_contexts(self) -> int:
        return len(self._live)

    def cleanup(self) -> None:
        bundle, self._bundle = self._bundle, None
        if bundle is not None:
            bundle.decref()

    @property
    def bundle(self) -> Bundle:
        """The bundle new sessions are born with (for tests and introspection)."""
        if self._bundle is None:
            raise TLSError("this TLS handle was cleaned up; create a new one")
        return self._bundle


class MbedTLS(BundleHandle, YTLS):
    """A server or client TLS configuration on mbed TLS (python-mbedtls)."""

    library = "mbedtls"

    def __init__(self, crypto: dict[str, Any], *, server: bool) -> None:
        """Build the first bundle; an expired leaf loads (see ``load_material``).

        Raises TLSError when the material is refused or cannot serve.
        """
        self.server = server
        self._live: set[Bundle] = set()
        material = load_material(crypto, server=server, allow_expired=True)
        self._bundle: Bundle | None = self._build(material, crypto)

    def new_secure_filter(self, server_hostname: str | None = None) -> SecureFilter:
        bundle = self.bundle
        if self.server:
            return _MbedFilter(bundle, None)
        return _MbedFilter(bundle, client_hostname(bundle.material, server_hostname))

    # Build and validate

    def _build(self, material: Material, crypto: dict[str, Any]) -> Bundle:
        """A proven bundle holding the handle's one reference; TLSError if not."""
        server = self.server
        context = build_mbed_context(material, crypto, server=server, datagram=False)
        if server:
            probe = proof_context(context, material, crypto, build_mbed_context,
                                  datagram=False)
            prove_mbed_serves(probe, material, datagram=False, crypto=crypto)
        bundle = Bundle(context, material, self._live.discard)
        bundle.incref()
        self._live.add(bundle)
        return bundle


# Helpers shared with gobj.ytls.dtls, whose handle follows the same rules.

def check_same_library(crypto: dict[str, Any], library: str) -> None:
    asked = str(crypto.get("library") or "openssl").lower()
    if asked != library:
        raise TLSError(
            f"library: a reload cannot switch from {library!r} to "
            f"{crypto.get('library')!r}; recreate the listener", field="library")


def same_material(new: Material, old: Material) -> bool:
    return (new.digest == old.digest and new.settings == old.settings
            and new.trusted_pem == old.trusted_pem)


def client_hostname(material: Material, given: str | None) -> str | None:
    hostname = given or material.settings["server_name"]
    if material.settings["verify_mode"] != "none" and not hostname:
        raise TLSError(
            "ssl_server_name: a verifying client needs the server's name; not "
            "set and no server_hostname given", field="ssl_server_name")
    return hostname


# Building an mbed TLS context from validated material. material.py already
# refused what any library would; what is left here is what mbed TLS alone
# cannot do, and each refusal says it was mbed TLS that refused.

def build_mbed_context(material: Material, crypto: dict[str, Any], *,
                       server: bool, datagram: bool) -> Any:
    """A ``ServerContext`` or ``ClientContext`` for ``material``.

    Raises TLSError naming the field (and file) when mbed TLS refuses it.
    """
    settings = material.settings
    kwargs: dict[str, Any] = {
        "validate_certificates": _validates(settings, server),
        "ciphers": _mbed_ciphers(settings["ciphers"]),
    }
    if material.chain:
        # The key first: for a key type mbed TLS lacks (Ed25519), it would
        # otherwise refuse the certificate and blame the wrong file.
        key = _mbed_key(material, crypto)
        kwargs["certificate_chain"] = (_mbed_chain(material, crypto), key)
    if material.trusted_pem is not None:
        kwargs["trust_store"] = _mbed_trust_store(material.trusted_pem, crypto)
    if datagram:
        kwargs["lowest_supported_version"] = mbed_tls.DTLSVersion.DTLSv1_2
        configuration = _mbed_call(mbed_tls.DTLSConfiguration, "ssl_certificate",
                                   crypto, **kwargs)
    else:
        kwargs["lowest_supported_version"] = _mbed_min_version(settings["min_version"])
        configuration = _mbed_call(mbed_tls.TLSConfiguration, "ssl_certificate",
                                   crypto, **kwargs)
    if server:
        return mbed_tls.ServerContext(configuration)
    return mbed_tls.ClientContext(configuration)


def _validates(settings: dict[str, Any], server: bool) -> bool:
    mode = settings["verify_mode"]
    if server and mode == "optional":
        # python-mbedtls maps validate_certificates to VERIFY_REQUIRED or
        # VERIFY_NONE only; MBEDTLS_SSL_VERIFY_OPTIONAL is not reachable.
        raise TLSError(
            "ssl_verify_mode: mbed TLS (python-mbedtls) refused 'optional': it can "
            "only require client certificates or ignore them; use 'required' or "
            "'none', or library openssl", field="ssl_verify_mode")
    return mode != "none"


def _mbed_min_version(min_version: str) -> Any:
    if min_version == "TLSv1.3":
        raise TLSError(
            f"ssl_min_version: mbed TLS {_mbed_release()} refused TLSv1.3: this "
            f"build has no TLS 1.3; use TLSv1.2 or library openssl",
            field="ssl_min_version")
    return mbed_tls.TLSVersion.TLSv1_2


def _mbed_ciphers(ciphers: str | None) -> tuple[str, ...] | None:
    """Suites by mbed TLS name (``TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256``),
    separated by ':' or ','."""
    if not ciphers:
        return None
    names = tuple(n.strip() for n in ciphers.replace(",", ":").split(":") if n.strip())
    known = set(mbed_tls.ciphers_available())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise TLSError(
            f"ssl_ciphers: mbed TLS refused {ciphers!r}: unknown suite names "
            f"{', '.join(unknown) or '(none given)'}; mbed TLS takes its own names, "
            f"e.g. TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", field="ssl_ciphers")
    return names


def _mbed_chain(material: Material, crypto: dict[str, Any]) -> tuple[Any, ...]:
    ders = [c.public_bytes(serialization.Encoding.DER) for c in material.chain]
    return tuple(_mbed_call(mbed_x509.CRT.from_DER, "ssl_certificate", crypto, der)
                 for der in ders)


def _mbed_key(material: Material, crypto: dict[str, Any]) -> Any:
    info = material.info or {}
    kind = info.get("key_type")
    loader = {"RSA": mbed_pk.RSA, "EC": mbed_pk.ECC}.get(str(kind))
    if loader is None:
        path = str(crypto.get("ssl_certificate_key") or "")
        raise TLSError(
            f"ssl_certificate_key '{path}': mbed TLS {_mbed_release()} refused the "
            f"{kind} key: it signs TLS handshakes with RSA or EC keys only",
            field="ssl_certificate_key", path=path)
    return _mbed_call(loader.from_buffer, "ssl_certificate_key", crypto,
                      material.key_pem)


def _mbed_trust_store(trusted_pem: bytes, crypto: dict[str, Any]) -> Any:
    store = mbed_tls.TrustStore()
    for cert in x509.load_pem_x509_certificates(trusted_pem):
        der = cert.public_bytes(serialization.Encoding.DER)
        store.add(_mbed_call(mbed_x509.CRT.from_DER, "ssl_trusted_certificate",
                             crypto, der))
    return store


def _mbed_call(fn: Callable[..., Any], field: str, crypto: dict[str, Any],
               *args: Any, **kwargs: Any) -> Any:
    """Call into python-mbedtls; a refusal becomes a TLSError naming field and file."""
    try:
        return fn(*args, **kwargs)
    except (mbed_exc.TLSError, ValueError, TypeError) as exc:
        path = str(crypto.get(field) or "")
        where = f"{field} '{path}'" if path else field
        raise TLSError(f"{where}: mbed TLS refused it: {_mbed_reason(exc)}",
                       field=field, path=path) from None


def _mbed_reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _is_close_notify(exc: BaseException) -> bool:
    # mbed TLS reports the peer's close_notify as an error code from ssl_read;
    # python-mbedtls maps a zero-length read to RaggedEOF.
    return (isinstance(exc, mbed_tls.RaggedEOF)
            or getattr(exc, "err", 0) == _PEER_CLOSE_NOTIFY)


def _mbed_release() -> str:
    from mbedtls import version
    return str(version.version).replace("Mbed TLS ", "")


# Loopback proof: a new server context must complete a handshake before it
# replaces the one serving. The probe client accepts any certificate and
# offers every suite, so a failure is the server's (its key, suites, versions).

def proof_context(context: Any, material: Material, crypto: dict[str, Any],
                  build: Callable[..., Any], **kwargs: Any) -> Any:
    """The context a loopback proof may use: ``context`` itself, unless it
    requires client certificates the anonymous probe cannot show; then a twin
    built from the same material without that requirement (the key, chain,
    suites and versions under proof are the same)."""
    if material.settings["verify_mode"] == "none":
        return context
    settings = {**material.settings, "verify_mode": "none"}
    twin = dataclasses.replace(material, settings=settings)
    return build(twin, crypto, server=True, **kwargs)


def prove_mbed_serves(context: Any, material: Material, *, datagram: bool,
                      crypto: dict[str, Any] | None = None) -> None:
    """Handshake with ``context`` in memory; TLSError naming the cause if it fails."""
    kind = mbed_tls.DTLSConfiguration if datagram else mbed_tls.TLSConfiguration
    probe_conf = kind(validate_certificates=False)
    client = MbedPipe(mbed_tls.ClientContext(probe_conf).wrap_buffers(None))
    server = MbedPipe(context.wrap_buffers())
    if datagram:
        server.buf.setcookieparam(b"loopback-proof")
    try:
        _run_loopback(client, server)
    except TLSSessionError as exc:
        info = material.info or {}
        settings = material.settings
        raise TLSError(
            f"ssl_ciphers: mbed TLS refused to serve the {info.get('key_type')}-"
            f"{info.get('key_size')} key '{(crypto or {}).get('ssl_certificate_key', '')}' "
            f"(certificate '{(crypto or {}).get('ssl_certificate', '')}') with ssl_ciphers "
            f"{settings['ciphers'] or 'default'!r}: a loopback handshake failed: {exc}",
            field="ssl_ciphers") from None


def _run_loopback(client: MbedPipe, server: MbedPipe) -> None:
    # A full handshake is two flights each way, plus one for a DTLS cookie
    # exchange; the bound only stops a bug from spinning forever.
    for _ in range(10):
        client.handshake()
        server.feed(client.take())
        try:
            server.handshake()
        except mbed_tls.HelloVerifyRequest:
            server.buf.setcookieparam(b"loopback-proof")
        client.feed(server.take())
        if client.done and server.done:
            return
    raise TLSSessionError("loopback handshake did not finish")


class MbedPipe:
    """One ``TLSWrappedBuffer`` driven without I/O; shared by TLS and DTLS sessions.

    ``handshake()`` advances as far as the bytes fed allow; ciphertext to send
    collects in an internal buffer that ``take()`` empties. mbed TLS errors
    become TLSSessionError, except HelloVerifyRequest, which the DTLS server
    side handles itself.

    python-mbedtls resets the mbed context after any fatal error, after a
    close_notify either way, and inside ``shutdown()``. A reset server context
    would take the next bytes as a brand-new ClientHello, so the pipe records
    why it stopped (``broken``) or that it is ``closed`` and refuses to touch
    the library again: a broken session can only be freed.
    """

    __slots__ = ("buf", "done", "closed", "broken", "_out")

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.done = False
        self.closed = False
        self.broken = ""
        self._out = bytearray()

    def feed(self, data: bytes) -> None:
        self._check_usable()
        if data and not self.closed:
            self.buf.receive_from_network(data)

    def take(self) -> bytes:
        if not self.broken:
            self._drain()
        out = bytes(self._out)
        self._out.clear()
        return out

    def pending(self) -> int:
        """Bytes of ciphertext waiting to be taken."""
        self._drain()
        return len(self._out)

    def _drain(self) -> None:
        buf = self.buf
        while chunk := buf.peek_outgoing(_SLICE):
            buf.consume_outgoing(len(chunk))
            self._out += chunk

    def _check_usable(self) -> None:
        if self.broken:
            raise TLSSessionError(
                f"session unusable after an earlier error: {self.broken}")

    def _fail(self, what: str, exc: BaseException) -> TLSSessionError:
        # Whatever the alert mbed queued before resetting still goes out.
        self._drain()
        self.broken = f"{what}: {_mbed_reason(exc)}"
        return TLSSessionError(self.broken)

    def handshake(self) -> bool:
        """Advance the handshake; True once it is over. Raises TLSSessionError."""
        self._check_usable()
        buf = self.buf
        while not self.done:
            try:
                buf.do_handshake()
            except mbed_tls.WantWriteError:
                # python-mbedtls says "write" whenever output is waiting.
                self._drain()
                continue
            except mbed_tls.WantReadError:
                self._drain()
                return False
            except mbed_tls.HelloVerifyRequest:
                self._drain()
                raise
            except mbed_exc.TLSError as exc:
                raise self._fail("TLS handshake failed", exc) from None
            # The handshake state is only exposed under this underscore name
            # (python-mbedtls' own socket wrapper reads it the same way).
            self.done = buf._handshake_state is _OVER
        self._drain()
        return True

    def read_records(self, size: int = _SLICE + 2048) -> tuple[list[bytes], bool]:
        """Cleartext of every complete record waiting, one item per record.

        Returns (records, peer_closed). ``readinto`` is used rather than
        ``read`` because ``read`` glues records together, and DTLS must keep
        each datagram whole.
        """
        self._check_usable()
        records: list[bytes] = []
        if self.closed:
            return records, True
        scratch = bytearray(size)
        while True:
            try:
                n = self.buf.readinto(scratch, size)
            except (mbed_tls.WantReadError, mbed_tls.WantWriteError):
                self._drain()
                return records, False
            except mbed_exc.TLSError as exc:
                if _is_close_notify(exc):
                    self.closed = True
                    return records, True
                raise self._fail("TLS record refused", exc) from None
            records.append(bytes(scratch[:n]))

    def write(self, data: bytes, slice_size: int = _SLICE) -> None:
        self._check_usable()
        if self.closed:
            raise TLSSessionError(
                "session closed: close_notify already sent or received")
        view = memoryview(data)
        try:
            for start in range(0, len(view), slice_size):
                self.buf.write(view[start:start + slice_size])
                self._drain()
        except mbed_exc.TLSError as exc:
            raise self._fail("TLS write failed", exc) from None

    def close_notify(self) -> None:
        if self.broken or self.closed:
            return
        # shutdown() queues the alert and then resets the mbed context.
        self.buf.shutdown()
        self._drain()
        self.closed = True

    def version(self) -> str | None:
        return _VERSION_NAMES.get(self.buf.negotiated_tls_version())

    def record_expansion(self) -> int:
        """Bytes one record adds to its payload under the negotiated suite.

        mbed TLS computes this exactly (mbedtls_ssl_get_record_expansion) but
        python-mbedtls does not expose it, so it is derived from the suite
        name: header, explicit nonce, tag, or for CBC IV, padding and MAC.
        """
        name = str(self.buf.cipher() or "")
        header = 13 if self.buf.negotiated_tls_version() in _DTLS_VERSIONS else 5
        if "CHACHA20" in name:
            return header + 16
        if "CCM-8" in name:
            return header + 8 + 8
        if "GCM" in name or "CCM" in name:
            return header + 8 + 16
        mac = 48 if name.endswith("SHA384") else 32 if name.endswith("SHA256") else 20
        return header + 16 + 16 + mac      # CBC: IV, up to a block of padding, MAC

    def peer_cert(self) -> x509.Certificate | None:
        der = self.buf.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None


def peer_facts(cert: x509.Certificate | None) -> dict[str, str | None]:
    """Subject and SHA-256 fingerprint (spelled as in cert_info) of a peer cert."""
    if cert is None:
        return {"peer_subject": None, "peer_fingerprint": None}
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return {
        "peer_subject": cert.subject.rfc4514_string(),
        "peer_fingerprint": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
    }


# The per-connection stream filter.

class _MbedFilter(SecureFilter):
    __slots__ = ("bundle", "_pipe", "_pending", "_server", "peer_closed",
                 "handshake_done")

    def __init__(self, bundle: Bundle, hostname: str | None) -> None:
        bundle.incref()
        self.bundle: Bundle | None = bundle
        context = bundle.context
        self._server = isinstance(context, mbed_tls.ServerContext)
        buf = context.wrap_buffers() if self._server else context.wrap_buffers(hostname)
        self._pipe: MbedPipe | None = MbedPipe(buf)
        self._pending: list[bytes] = []   # cleartext sent before the handshake ended
        self.peer_closed = False
        self.handshake_done = False

    # Handshake

    def start(self) -> None:
        if not self.handshake_done and not self._server:
            self._advance()

    def _advance(self) -> bool:
        pipe = self._live()
        if not pipe.handshake():
            return False
        self.handshake_done = True
        pending, self._pending = self._pending, []
        for data in pending:
            pipe.write(data)
        return True

    # Incoming: ciphertext in, cleartext out

    def incoming(self, data: bytes) -> bytes:
        pipe = self._live()
        view = memoryview(data)
        chunks: list[bytes] = []
        # Feed at most one ring's worth at a time, consuming between feeds.
        for start in range(0, max(len(view), 1), _FEED):
            pipe.feed(view[start:start + _FEED])
            if not self.handshake_done and not self._advance():
                continue
            records, closed = pipe.read_records()
            chunks.extend(records)
            self.peer_closed = self.peer_closed or closed
        return b"".join(chunks)

    # Outgoing: cleartext in, ciphertext out

    def send(self, data: bytes) -> None:
        pipe = self._live()
        if self.handshake_done:
            pipe.write(bytes(data))
        else:
            self._pending.append(bytes(data))

    def outgoing(self) -> bytes:
        pipe = self._pipe
        return pipe.take() if pipe is not None else b""

    # Closing

    def close_notify(self) -> None:
        pipe = self._pipe
        if pipe is not None and self.handshake_done:
            pipe.close_notify()

    def free(self) -> None:
        bundle, self.bundle = self.bundle, None
        self._pipe = None
        self._pending = []
        if bundle is not None:
            bundle.decref()

    def info(self) -> dict[str, Any]:
        pipe, bundle = self._pipe, self.bundle
        if pipe is None or bundle is None:
            return {"freed": True}
        own = bundle.material.info
        done = self.handshake_done
        return {
            "library": "mbedtls",
            "handshake_done": done,
            "version": pipe.version() if done else None,
            "cipher": pipe.buf.cipher() if done else None,
            "bits": None,   # python-mbedtls does not report the key length
            **peer_facts(pipe.peer_cert() if done else None),
            "cert_fingerprint": own["fingerprint"] if own else None,
        }

    def _live(self) -> MbedPipe:
        pipe = self._pipe
        if pipe is None:
            raise TLSSessionError("session already freed")
        return pipe
