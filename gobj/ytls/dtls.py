"""Datagram TLS (DTLS 1.2) for UDP servers and clients on OpenSSL or mbed TLS, sans I/O.

Theory of operation
-------------------
A :class:`YDTLS` is to a UDP listener what ``YTLS`` is to a TCP one: it owns the
current context (a counted :class:`~gobj.ytls.mbedtls_backend.Bundle`), swaps it
on ``reload`` and reports ``cert_info``. Sessions keep the bundle they were born
with until ``free()``, exactly as stream filters do.

The one thing UDP adds is spoofing. A ClientHello can come from a forged
address, and a server that answered it with its certificate chain would be an
amplifier, and one that kept state for it would be a memory sink. RFC 6347
section 4.2.1 answers with the cookie exchange: the first ClientHello gets a
small HelloVerifyRequest carrying a cookie bound to the source address; only a
ClientHello that echoes a valid cookie proves the peer can receive at that
address, and only then does the server create a session. :meth:`YDTLS.accept`
is that gate, and it keeps *no* per-peer state when it answers.

How each library implements the gate (one reusable "gate" object per bundle,
never per peer):

* OpenSSL: a single ``Connection`` on memory BIOs runs ``DTLSv1_listen``, which
  is stateless by design and may be called again and again on the same object.
  Cookies are HMAC-SHA256(peer address) under :data:`COOKIE_SECRET`, a
  per-process secret the caller rotates. When a cookie verifies, that very
  ``Connection`` already holds the ClientHello (OpenSSL keeps it for the
  handshake that follows), so it becomes the peer's session and a fresh gate
  is made for the next peer. We use DTLSv1_listen rather than writing our own
  HelloVerifyRequest because the record sequence and message_seq rules of
  RFC 6347 4.2.1/4.2.2 are then OpenSSL's to keep right; the cost is a
  dependency on OpenSSL >= 1.1.0 keeping the ClientHello after the listen,
  which the tests check on every run.
* mbed TLS: a single ``TLSWrappedBuffer`` with ``setcookieparam(peer)`` plays
  the same role. mbed TLS writes the HelloVerifyRequest and resets itself;
  on a good cookie the buffer becomes the session. Its cookie key is created
  by python-mbedtls inside each ``DTLSConfiguration`` and cannot be supplied
  from Python, so the mbed gate does not use COOKIE_SECRET: its key changes at
  every reload instead, and its cookies expire after 60 s
  (MBEDTLS_SSL_COOKIE_TIMEOUT).

Retransmission is the caller's: after every call it asks
``next_timeout()`` and calls ``handle_timeout()`` when that many seconds have
passed (RFC 6347 4.2.4). Nothing here reads a clock except to answer that.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import ipaddress
import os
import struct
import time
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mbedtls import tls as mbed_tls
from OpenSSL import SSL
from OpenSSL import crypto as ossl_crypto

from .base import TLSError, TLSSessionError
from .material import Material, load_material
from .mbedtls_backend import (
    Bundle,
    BundleHandle,
    MbedPipe,
    build_mbed_context,
    client_hostname,
    peer_facts,
    proof_context,
    prove_mbed_serves,
)

__all__ = [
    "COOKIE_SECRET", "DEFAULT_MTU", "CookieSecret", "DTLSServer", "DTLSSession",
    "YDTLS", "peer_id", "split_datagrams",
]

# 1400 bytes of ciphertext per datagram fits a 1500-byte Ethernet MTU after
# IPv6 (40) and UDP (8) headers with room left for a tunnel or two; both
# libraries fragment handshake messages to this size.
DEFAULT_MTU = 1400

# RFC 6347 4.1: a record header is 13 bytes; the length is its last two.
_RECORD_HEADER = 13
_CONTENT_HANDSHAKE = 22
_CLIENT_HELLO = 1

# Largest datagram a session accepts: one record of 2^14 plaintext plus the
# 2048 bytes of expansion RFC 6347 4.1 (via RFC 5246 6.2.3) allows, plus header.
_MAX_DATAGRAM = 16384 + 2048 + _RECORD_HEADER

# The most a DTLS 1.2 record can add to its payload: header 13, CBC IV 16,
# padding up to 16, HMAC-SHA384 48. Used to bound a datagram before the
# handshake has chosen the suite that makes the exact figure known.
_MAX_EXPANSION = 13 + 16 + 16 + 48

# OpenSSL's DTLS1_2_VERSION; pyOpenSSL exports no constant for it.
_DTLS1_2_VERSION = 0xFEFD

_OPENSSL_VERIFY = {
    "none": SSL.VERIFY_NONE,
    "optional": SSL.VERIFY_PEER,
    "required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


# Cookies

class CookieSecret:
    """The HMAC key DTLS cookies are minted under, with the previous key kept.

    A cookie minted just before ``rotate()`` must still verify when the client
    echoes it one round trip later, so ``check`` accepts the current and the
    previous key: a cookie lives between one and two rotation intervals.
    """

    def __init__(self, interval: float = 60.0) -> None:
        # 60 s: long enough for any real round trip and for the slowest client
        # retransmission schedule to echo the cookie, short enough that a
        # leaked cookie is soon worthless.
        self.interval = interval
        self._current = os.urandom(32)
        self._previous = self._current
        self._rotated_at = time.monotonic()

    def rotate(self) -> None:
        self._previous, self._current = self._current, os.urandom(32)
        self._rotated_at = time.monotonic()

    def tick(self, now: float | None = None) -> bool:
        """Rotate when ``interval`` has passed; the caller's timer calls this."""
        now = time.monotonic() if now is None else now
        if now - self._rotated_at < self.interval:
            return False
        self.rotate()
        return True

    def mint(self, peer: bytes) -> bytes:
        return _hmac(self._current, peer)

    def check(self, peer: bytes, cookie: bytes) -> bool:
        return any(hmac.compare_digest(cookie, _hmac(key, peer))
                   for key in (self._current, self._previous))


def _hmac(key: bytes, peer: bytes) -> bytes:
    return hmac.new(key, peer, hashlib.sha256).digest()


#: The per-process cookie secret every OpenSSL DTLS server shares.
COOKIE_SECRET = CookieSecret()


def peer_id(addr: Any) -> bytes:
    """The bytes a cookie is bound to: host and port (IPv6 flow info ignored)."""
    if isinstance(addr, (tuple, list)) and len(addr) >= 2:
        return f"{addr[0]}|{addr[1]}".encode()
    return str(addr).encode()


def _looks_like_client_hello(datagram: bytes) -> bool:
    # Refuse junk before any library sees it: a DTLS handshake record whose
    # first message is a ClientHello (RFC 6347 4.1 and 4.2.2 layouts).
    return (len(datagram) > _RECORD_HEADER + 12 and len(datagram) <= _MAX_DATAGRAM
            and datagram[0] == _CONTENT_HANDSHAKE and datagram[1] == 0xFE
            and datagram[_RECORD_HEADER] == _CLIENT_HELLO)


def split_datagrams(data: bytes, mtu: int) -> list[bytes]:
    """Cut a run of DTLS records into datagrams of whole records, each <= ``mtu``.

    Memory BIOs and mbed's ring glue records together; UDP must not. A record
    longer than ``mtu`` travels alone (the library was told the MTU, so this
    only happens to application data the caller made too big).
    """
    out: list[bytes] = []
    current = bytearray()
    pos = 0
    while pos < len(data):
        if len(data) - pos < _RECORD_HEADER:
            end = len(data)   # a torn header: ship it as is, the peer will drop it
        else:
            (length,) = struct.unpack_from("!H", data, pos + 11)
            end = min(len(data), pos + _RECORD_HEADER + length)
        if current and len(current) + (end - pos) > mtu:
            out.append(bytes(current))
            current.clear()
        current += data[pos:end]
        pos = end
    if current:
        out.append(bytes(current))
    return out


# Sessions

class DTLSSession(abc.ABC):
    """DTLS over datagrams for one peer (sans I/O).

    ``incoming`` takes one datagram as received and returns the cleartext of
    each application record it held (one item per datagram the peer sent).
    ``send`` queues one cleartext datagram; ``outgoing`` returns ciphertext
    datagrams to send to ``peer``. The caller's loop drives retransmission:
    when ``next_timeout()`` seconds have passed, call ``handle_timeout()``
    and send ``outgoing()``. A TLSSessionError means the session is dead:
    ``free()`` it.
    """

    handshake_done: bool = False
    peer_closed: bool = False

    def __init__(self, bundle: Bundle, peer: Any, mtu: int,
                 on_free: Callable[[DTLSSession], None]) -> None:
        bundle.incref()
        self.bundle: Bundle | None = bundle
        self.peer = peer
        self.mtu = mtu
        self._on_free = on_free
        self._pending: list[bytes] = []   # cleartext sent before the handshake ended

    @abc.abstractmethod
    def start(self) -> None:
        """Begin or continue the handshake (a client puts its ClientHello out)."""

    @abc.abstractmethod
    def incoming(self, datagram: bytes) -> list[bytes]:
        """Feed one datagram; return the cleartext datagrams it carried."""

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Queue one cleartext datagram (held until the handshake is done).

        Raises ValueError, leaving the session as it was, when ``data`` is
        longer than :meth:`max_datagram`; TLSSessionError when the session is
        dead.
        """

    @abc.abstractmethod
    def outgoing(self) -> list[bytes]:
        """Return (and drain) the ciphertext datagrams waiting for the network."""

    @abc.abstractmethod
    def max_datagram(self) -> int:
        """Largest cleartext one send() takes: what fits one ``mtu`` datagram.

        Before the handshake ends the suite is unknown and the bound assumes
        the costliest one, so it is a little lower than afterwards.
        """

    def _check_size(self, data: bytes) -> None:
        # Refused here, session unharmed: mbed TLS would fail the write and
        # reset the whole session, OpenSSL would send a datagram the network
        # must fragment.
        limit = self.max_datagram()
        if len(data) > limit:
            raise ValueError(f"datagram of {len(data)} bytes exceeds the {limit} bytes "
                             f"one DTLS record can carry at mtu {self.mtu}; split it")

    @abc.abstractmethod
    def next_timeout(self) -> float | None:
        """Seconds until handle_timeout() is due, or None when no timer runs."""

    @abc.abstractmethod
    def handle_timeout(self) -> None:
        """Retransmit the last flight if its timer has expired."""

    @abc.abstractmethod
    def close_notify(self) -> None:
        """Queue a close_notify alert in outgoing()."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Negotiated facts: version, cipher, peer certificate subject if any."""

    def free(self) -> None:
        """Release the session and its reference on the bundle. Idempotent."""
        bundle, self.bundle = self.bundle, None
        if bundle is None:
            return
        self._drop_engine()
        self._pending = []
        bundle.decref()
        self._on_free(self)

    @abc.abstractmethod
    def _drop_engine(self) -> None:
        """Let go of the library object."""

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for data in pending:
            self.send(data)


class _OpenSSLSession(DTLSSession):
    """A DTLS session on a pyOpenSSL ``Connection`` with memory BIOs."""

    def __init__(self, bundle: Bundle, conn: SSL.Connection, peer: Any, mtu: int,
                 on_free: Callable[[DTLSSession], None]) -> None:
        super().__init__(bundle, peer, mtu, on_free)
        self._conn: SSL.Connection | None = conn

    def start(self) -> None:
        if not self.handshake_done:
            self._advance()

    def _advance(self) -> bool:
        conn = self._live()
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise _session_error("DTLS handshake failed", exc) from None
        self.handshake_done = True
        self._flush_pending()
        return True

    def incoming(self, datagram: bytes) -> list[bytes]:
        conn = self._live()
        if len(datagram) > _MAX_DATAGRAM:
            return []
        conn.bio_write(datagram)
        if not self.handshake_done and not self._advance():
            return []
        return self._read_records(conn)

    def _read_records(self, conn: SSL.Connection) -> list[bytes]:
        records: list[bytes] = []
        while True:
            try:
                records.append(conn.recv(_MAX_DATAGRAM))
            except SSL.WantReadError:
                return records
            except SSL.ZeroReturnError:
                self.peer_closed = True
                return records
            except SSL.Error as exc:
                raise _session_error("DTLS record refused", exc) from None

    def send(self, data: bytes) -> None:
        conn = self._live()
        self._check_size(data)
        if not self.handshake_done:
            self._pending.append(bytes(data))
            return
        try:
            conn.send(bytes(data))
        except SSL.Error as exc:
            raise _session_error("DTLS write failed", exc) from None

    def outgoing(self) -> list[bytes]:
        conn = self._conn
        return split_datagrams(_bio_drain(conn), self.mtu) if conn is not None else []

    def max_datagram(self) -> int:
        conn = self._live()
        if not self.handshake_done:
            return self.mtu - _MAX_EXPANSION
        return conn.get_cleartext_mtu()

    def next_timeout(self) -> float | None:
        conn = self._conn
        return conn.DTLSv1_get_timeout() if conn is not None else None

    def handle_timeout(self) -> None:
        conn = self._live()
        try:
            conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            raise _session_error("DTLS retransmission failed", exc) from None

    def close_notify(self) -> None:
        conn = self._conn
        if conn is None or not self.handshake_done:
            return
        try:
            conn.shutdown()
        except SSL.Error:
            pass   # the alert is queued; the peer's answer is not needed

    def info(self) -> dict[str, Any]:
        conn, bundle = self._conn, self.bundle
        if conn is None or bundle is None:
            return {"freed": True}
        done = self.handshake_done
        peer = conn.get_peer_certificate(as_cryptography=True) if done else None
        own = bundle.material.info
        return {
            "library": "openssl",
            "handshake_done": done,
            "version": conn.get_protocol_version_name() if done else None,
            "cipher": conn.get_cipher_name() if done else None,
            **peer_facts(peer),
            "cert_fingerprint": own["fingerprint"] if own else None,
        }

    def _drop_engine(self) -> None:
        self._conn = None

    def _live(self) -> SSL.Connection:
        if self._conn is None:
            raise TLSSessionError("session already freed")
        return self._conn


class _MbedSession(DTLSSession):
    """A DTLS session on a python-mbedtls ``TLSWrappedBuffer``.

    python-mbedtls runs mbed TLS's retransmission timer on its own clock and
    does not let us read it, so ``next_timeout`` follows the same schedule
    (RFC 6347 4.2.4.1: start at ``_HS_MIN``, double up to ``_HS_MAX``) on a
    shadow clock. When the shadow fires a little before mbed's timer,
    ``handle_timeout`` finds nothing to resend and asks to be called again
    ``_POLL`` later.
    """

    _HS_MIN = 1.0
    _HS_MAX = 60.0
    _POLL = 0.02

    def __init__(self, bundle: Bundle, pipe: MbedPipe, peer: Any, mtu: int,
                 on_free: Callable[[DTLSSession], None]) -> None:
        super().__init__(bundle, peer, mtu, on_free)
        self._pipe: MbedPipe | None = pipe
        self._interval = self._HS_MIN
        self._deadline: float | None = None
        if pipe.pending():
            # Born from the gate with its first flight already written.
            self._deadline = time.monotonic() + self._interval

    def start(self) -> None:
        if not self.handshake_done:
            self._advance(retransmit=False)

    def _advance(self, *, retransmit: bool) -> bool:
        pipe = self._live()
        before = pipe.pending()
        try:
            done = pipe.handshake()
        except mbed_tls.HelloVerifyRequest:
            # A server session made by new_session() runs its own cookie
            # exchange; mbed TLS reset itself and forgot the peer's id.
            pipe.buf.setcookieparam(peer_id(self.peer))
            return False
        self._rearm(sent=pipe.pending() > before, retransmit=retransmit, done=done)
        if done and not self.handshake_done:
            self.handshake_done = True
            self._flush_pending()
        return done

    def _rearm(self, *, sent: bool, retransmit: bool, done: bool) -> None:
        now = time.monotonic()
        if done:
            self._deadline = None
        elif sent and retransmit:
            self._interval = min(self._interval * 2, self._HS_MAX)
            self._deadline = now + self._interval
        elif sent:
            self._interval = self._HS_MIN
            self._deadline = now + self._interval
        elif retransmit:
            self._deadline = now + self._POLL

    def incoming(self, datagram: bytes) -> list[bytes]:
        pipe = self._live()
        if len(datagram) > _MAX_DATAGRAM:
            return []
        pipe.feed(datagram)
        if not self.handshake_done and not self._advance(retransmit=False):
            return []
        records, closed = pipe.read_records()
        self.peer_closed = self.peer_closed or closed
        return records

    def send(self, data: bytes) -> None:
        pipe = self._live()
        self._check_size(data)
        if not self.handshake_done:
            self._pending.append(bytes(data))
            return
        # One write, one record, one datagram: no slicing for DTLS.
        pipe.write(bytes(data), slice_size=max(len(data), 1))

    def max_datagram(self) -> int:
        pipe = self._live()
        if not self.handshake_done:
            return self.mtu - _MAX_EXPANSION
        return self.mtu - pipe.record_expansion()

    def outgoing(self) -> list[bytes]:
        pipe = self._pipe
        return split_datagrams(pipe.take(), self.mtu) if pipe is not None else []

    def next_timeout(self) -> float | None:
        if self._deadline is None or self.handshake_done:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def handle_timeout(self) -> None:
        if self._deadline is None or self.handshake_done:
            return
        if time.monotonic() >= self._deadline:
            self._advance(retransmit=True)

    def close_notify(self) -> None:
        pipe = self._pipe
        if pipe is not None and self.handshake_done:
            pipe.close_notify()

    def info(self) -> dict[str, Any]:
        pipe, bundle = self._pipe, self.bundle
        if pipe is None or bundle is None:
            return {"freed": True}
        done = self.handshake_done
        own = bundle.material.info
        return {
            "library": "mbedtls",
            "handshake_done": done,
            "version": pipe.version() if done else None,
            "cipher": pipe.buf.cipher() if done else None,
            **peer_facts(pipe.peer_cert() if done else None),
            "cert_fingerprint": own["fingerprint"] if own else None,
        }

    def _drop_engine(self) -> None:
        self._pipe = None

    def _live(self) -> MbedPipe:
        if self._pipe is None:
            raise TLSSessionError("session already freed")
        return self._pipe


# The stateless gates (one per bundle, reused for every unknown peer)

class _OpenSSLGate:
    """Answers ClientHellos with DTLSv1_listen on one reusable Connection."""

    def __init__(self, context: SSL.Context, mtu: int) -> None:
        self._context = context
        self._mtu = mtu
        self._conn: SSL.Connection | None = None

    def offer(self, peer: bytes,
              datagram: bytes) -> tuple[SSL.Connection | None, list[bytes]]:
        conn = self._conn or self._fresh()
        conn.set_app_data(_ConnData(peer, None))
        conn.bio_write(datagram)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            # HelloVerifyRequest written (or the datagram ignored); no state kept.
            return None, split_datagrams(_bio_drain(conn), self._mtu)
        except SSL.Error:
            self._conn = None   # not a ClientHello OpenSSL accepts; start clean
            return None, []
        self._conn = None      # the cookie verified: this Connection is the peer's now
        return conn, []

    def _fresh(self) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_accept_state()
        conn.set_ciphertext_mtu(self._mtu)
        self._conn = conn
        return conn


class _MbedGate:
    """Answers ClientHellos with mbed TLS's own cookie code on one reusable buffer."""

    def __init__(self, context: Any, mtu: int) -> None:
        self._context = context
        self._mtu = mtu
        self._buf: Any = None

    def offer(self, peer: bytes,
              datagram: bytes) -> tuple[MbedPipe | None, list[bytes]]:
        buf = self._buf or self._fresh()
        buf.setcookieparam(peer)
        pipe = MbedPipe(buf)
        pipe.feed(datagram)
        try:
            pipe.handshake()
        except mbed_tls.HelloVerifyRequest:
            # python-mbedtls has already reset the buffer for the next peer.
            return None, split_datagrams(pipe.take(), self._mtu)
        except TLSSessionError:
            self._buf = None
            return None, []
        if buf._handshake_state in _MBED_NOT_STARTED:
            return None, []   # mbed dropped the datagram without answering
        self._buf = None
        return pipe, []

    def _fresh(self) -> Any:
        buf = self._context.wrap_buffers()
        buf.setmtu(self._mtu)
        self._buf = buf
        return buf


_MBED_NOT_STARTED = (mbed_tls.HandshakeStep.HELLO_REQUEST,
                     mbed_tls.HandshakeStep.CLIENT_HELLO)


# The handle

class YDTLS(BundleHandle):
    """One DTLS configuration (server or client) with a swappable, counted context.

    Same contract as ``YTLS`` for ``reload``, ``cert_info``, ``live_contexts``
    and ``cleanup``. A server admits peers through :meth:`accept` (stateless
    cookie gate); a client starts its session with :meth:`new_session`.
    """

    def __init__(self, crypto: dict[str, Any], *, server: bool, mtu: int = DEFAULT_MTU,
                 cookies: CookieSecret | None = None) -> None:
        """Build the first context; raises TLSError when the material cannot serve."""
        self.server = server
        self.mtu = mtu
        self.library = str(crypto.get("library") or "openssl").lower()
        self.cookies = cookies or COOKIE_SECRET
        self._live: set[Bundle] = set()
        self._sessions: set[DTLSSession] = set()
        material = load_material(crypto, server=server, allow_expired=True)
        self._bundle: Bundle | None = self._build(material, crypto)

    # reload, cert_info, live_contexts, cleanup and bundle come from
    # BundleHandle: the same validate-then-swap as the stream handles.

    def live_sessions(self) -> int:
        """Sessions created and not yet freed (the gate itself holds none)."""
        return len(self._sessions)

    # Sessions

    def accept(self, peer: Any,
               datagram: bytes) -> tuple[DTLSSession | None, list[bytes]]:
        """Admit ``peer`` if ``datagram`` is a ClientHello with a valid cookie.

        Returns (session, replies). Without a valid cookie the session is None
        and replies holds the HelloVerifyRequest to send back (or nothing, for
        a datagram that is no ClientHello); nothing about the peer is kept.
        With a valid cookie the new session has already answered: send its
        ``outgoing()``.
        """
        if not self.server:
            raise TLSError("accept() is for a server; a client calls new_session()")
        if not _looks_like_client_hello(datagram):
            return None, []
        bundle = self.bundle
        engine, replies = bundle.extra["gate"].offer(peer_id(peer), datagram)
        if engine is None:
            return None, replies
        session = self._wrap(bundle, engine, peer)
        session.start()
        return session, []

    def new_session(self, peer: Any, server_hostname: str | None = None) -> DTLSSession:
        """A session with ``peer`` bound to the current context.

        A client's session has its ClientHello waiting in ``outgoing()``. On a
        server this skips the stateless gate (the session runs the cookie
        exchange itself, with state): use it only for a peer already trusted
        to be at its address; :meth:`accept` is the front door.
        """
        bundle = self.bundle
        if self.library == "openssl":
            engine: Any = self._openssl_conn(bundle, peer, server_hostname)
        else:
            engine = self._mbed_pipe(bundle, peer, server_hostname)
        session = self._wrap(bundle, engine, peer)
        session.start()
        return session

    def _wrap(self, bundle: Bundle, engine: Any, peer: Any) -> DTLSSession:
        if isinstance(engine, SSL.Connection):
            session: DTLSSession = _OpenSSLSession(
                bundle, engine, peer, self.mtu, self._sessions.discard)
        else:
            session = _MbedSession(
                bundle, engine, peer, self.mtu, self._sessions.discard)
        self._sessions.add(session)
        return session

    def _openssl_conn(self, bundle: Bundle, peer: Any,
                      hostname: str | None) -> SSL.Connection:
        conn = SSL.Connection(bundle.context, None)
        conn.set_ciphertext_mtu(self.mtu)
        if self.server:
            conn.set_app_data(_ConnData(peer_id(peer), None))
            conn.set_accept_state()
            return conn
        name = client_hostname(bundle.material, hostname)
        conn.set_app_data(_ConnData(peer_id(peer), name))
        if name and not _is_ip(name):
            conn.set_tlsext_host_name(name.encode("idna"))
        conn.set_connect_state()
        return conn

    def _mbed_pipe(self, bundle: Bundle, peer: Any, hostname: str | None) -> MbedPipe:
        if self.server:
            buf = bundle.context.wrap_buffers()
            buf.setcookieparam(peer_id(peer))
        else:
            name = client_hostname(bundle.material, hostname)
            buf = bundle.context.wrap_buffers(name)
        buf.setmtu(self.mtu)
        return MbedPipe(buf)

    # Build and validate

    def _build(self, material: Material, crypto: dict[str, Any]) -> Bundle:
        if self.library == "openssl":
            context: Any = _openssl_context(material, crypto, server=self.server,
                                            cookies=self.cookies)
            if self.server:
                _prove_openssl_serves(proof_context(
                    context, material, crypto, _openssl_context, cookies=self.cookies),
                    material, self.mtu)
            gate: Any = _OpenSSLGate(context, self.mtu)
        else:
            context = build_mbed_context(material, crypto, server=self.server,
                                         datagram=True)
            if self.server:
                prove_mbed_serves(proof_context(
                    context, material, crypto, build_mbed_context, datagram=True),
                    material, datagram=True, crypto=crypto)
            gate = _MbedGate(context, self.mtu)
        bundle = Bundle(context, material, self._live.discard)
        if self.server:
            bundle.extra["gate"] = gate
        bundle.incref()
        self._live.add(bundle)
        return bundle


#: The name the runtime's UDP listener uses for the server role.
DTLSServer = YDTLS


class _ConnData:
    """What the OpenSSL callbacks need to know about a Connection."""

    __slots__ = ("peer", "hostname")

    def __init__(self, peer: bytes, hostname: str | None) -> None:
        self.peer = peer
        self.hostname = hostname


# OpenSSL (pyOpenSSL) contexts

def _openssl_context(material: Material, crypto: dict[str, Any], *, server: bool,
                     cookies: CookieSecret) -> SSL.Context:
    settings = material.settings
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD if server else SSL.DTLS_CLIENT_METHOD)
    ctx.set_min_proto_version(_DTLS1_2_VERSION)
    # Memory BIOs cannot be asked for the path MTU; we set it per connection.
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)
    if settings["ciphers"]:
        _openssl_call(ctx.set_cipher_list, "ssl_ciphers", crypto,
                      settings["ciphers"].encode())
    if material.chain:
        _openssl_load_chain(ctx, material, crypto)
    if material.trusted_pem is not None:
        store = ctx.get_cert_store()
        for cert in x509.load_pem_x509_certificates(material.trusted_pem):
            store.add_cert(ossl_crypto.X509.from_cryptography(cert))
    if server:
        ctx.set_options(SSL.OP_COOKIE_EXCHANGE)
        ctx.set_cookie_generate_callback(
            lambda conn: cookies.mint(conn.get_app_data().peer))
        ctx.set_cookie_verify_callback(
            lambda conn, cookie: cookies.check(conn.get_app_data().peer, bytes(cookie)))
        ctx.set_verify(_OPENSSL_VERIFY[settings["verify_mode"]], _accept_preverified)
    elif settings["verify_mode"] == "none":
        ctx.set_verify(SSL.VERIFY_NONE, _accept_preverified)
    else:
        ctx.set_verify(SSL.VERIFY_PEER, _verify_with_hostname)
    return ctx


def _openssl_load_chain(ctx: SSL.Context, material: Material,
                        crypto: dict[str, Any]) -> None:
    key = serialization.load_pem_private_key(material.key_pem, password=None)
    assert material.leaf is not None
    _openssl_call(ctx.use_certificate, "ssl_certificate", crypto, material.leaf)
    for cert in material.chain[1:]:
        _openssl_call(ctx.add_extra_chain_cert, "ssl_certificate", crypto, cert)
    _openssl_call(ctx.use_privatekey, "ssl_certificate_key", crypto, key)
    _openssl_call(ctx.check_privatekey, "ssl_certificate_key", crypto)


def _openssl_call(fn: Callable[..., Any], field: str, crypto: dict[str, Any],
                  *args: Any) -> Any:
    try:
        return fn(*args)
    except (SSL.Error, ValueError, TypeError) as exc:
        path = str(crypto.get(field) or "")
        where = f"{field} '{path}'" if path else field
        raise TLSError(f"{where}: OpenSSL (DTLS) refused it: {_openssl_reason(exc)}",
                       field=field, path=path) from None


def _accept_preverified(conn: SSL.Connection, cert: Any, errno: int, depth: int,
                        ok: int) -> bool:
    return bool(ok)


def _verify_with_hostname(conn: SSL.Connection, cert: Any, errno: int, depth: int,
                          ok: int) -> bool:
    # pyOpenSSL exposes no SSL_set1_host, so the name is checked here, on the
    # leaf (depth 0), after OpenSSL has verified the chain up to the trust store.
    if not ok or depth != 0:
        return bool(ok)
    hostname = conn.get_app_data().hostname
    return hostname is None or _name_matches(cert.to_cryptography(), hostname)


def _name_matches(leaf: x509.Certificate, hostname: str) -> bool:
    """RFC 6125 in brief: an IP matches an IP SAN; a name matches a DNS SAN,
    where a leading ``*.`` stands for exactly one label."""
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    sans = ext.value
    if _is_ip(hostname):
        wanted = ipaddress.ip_address(hostname)
        return any(ip == wanted for ip in sans.get_values_for_type(x509.IPAddress))
    host = hostname.lower().rstrip(".")
    parent = host.split(".", 1)[1] if "." in host else None
    for name in sans.get_values_for_type(x509.DNSName):
        pattern = name.lower().rstrip(".")
        if pattern == host or (pattern.startswith("*.") and pattern[2:] == parent):
            return True
    return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _prove_openssl_serves(ctx: SSL.Context, material: Material, mtu: int) -> None:
    """An in-memory DTLS handshake against ``ctx``; TLSError if it cannot finish."""
    probe = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    probe.set_options(SSL.OP_NO_QUERY_MTU)
    client = SSL.Connection(probe, None)
    server = SSL.Connection(ctx, None)
    client.set_connect_state()
    server.set_accept_state()
    for conn in (client, server):
        conn.set_ciphertext_mtu(mtu)
    server.set_app_data(_ConnData(b"loopback-proof", None))
    try:
        _openssl_loopback(client, server)
    except (SSL.Error, TLSSessionError) as exc:
        info = material.info or {}
        raise TLSError(
            f"ssl_ciphers: OpenSSL (DTLS) refused to serve the {info.get('key_type')}-"
            f"{info.get('key_size')} key with ssl_ciphers "
            f"{material.settings['ciphers'] or 'default'!r}: a loopback handshake "
            f"failed: {_openssl_reason(exc)}", field="ssl_ciphers") from None


def _openssl_loopback(client: SSL.Connection, server: SSL.Connection) -> None:
    # Cookie exchange plus two flights each way; the bound stops a spinning bug.
    done = [False, False]
    for _ in range(10):
        for i, (conn, peer) in enumerate(((client, server), (server, client))):
            if not done[i]:
                try:
                    conn.do_handshake()
                    done[i] = True
                except SSL.WantReadError:
                    pass
            for datagram in split_datagrams(_bio_drain(conn), 65535):
                peer.bio_write(datagram)
        if all(done):
            return
    raise TLSSessionError("loopback handshake did not finish")


def _bio_drain(conn: SSL.Connection | None) -> bytes:
    if conn is None:
        return b""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _session_error(what: str, exc: BaseException) -> TLSSessionError:
    return TLSSessionError(f"{what}: {_openssl_reason(exc)}")


def _openssl_reason(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        parts = [str(err[2]) for err in exc.args[0] if len(err) == 3]
        if parts:
            return "; ".join(parts)
    return str(exc) or type(exc).__name__
