"""The TLS layer's interface: one context object per listener or client, one
secure filter per connection, and the errors both backends raise.

Theory of operation
-------------------
A :class:`YTLS` holds the *current* backend context (an ``ssl.SSLContext`` or an
mbed TLS configuration bundle). ``reload(crypto)`` builds a whole new context
from the files named in ``crypto``, validates it, and only then replaces the one
reference the handle keeps. A :class:`SecureFilter` takes its own reference to
the context that was current when it was made, so sessions alive at a reload
keep the context they were born with until they are freed; the old context is
released when the last of them closes.

Both backends read and validate certificate material through the same code
(``gobj.ytls.material``), so the same bad input gets the same refusal message
whichever library serves it.
"""

from __future__ import annotations

import abc
from typing import Any


class TLSError(Exception):
    """A TLS configuration could not be built.

    ``str(exc)`` is one sentence an operator can act on: it names the file (when
    one is involved) and the cause, e.g. ``"ssl_certificate_key
    '/x/k.pem': key does not match the certificate '/x/c.pem'"``.
    ``exc.field`` names the ``crypto`` key at fault and ``exc.path`` the file.
    """

    def __init__(self, message: str, *, field: str = "", path: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.path = path


class TLSSessionError(Exception):
    """A live session failed (handshake refused, bad record, peer alert).

    The connection that raised it must be closed; the context is unaffected.
    """


class SecureFilter(abc.ABC):
    """TLS over memory buffers for one stream connection (sans I/O).

    Ciphertext from the network goes in through :meth:`incoming`; cleartext for
    the peer goes in through :meth:`send`; ciphertext for the network comes out
    of :meth:`outgoing`. Nothing here touches a socket.
    """

    handshake_done: bool = False
    peer_closed: bool = False  # the peer sent close_notify; answer it and close

    @abc.abstractmethod
    def start(self) -> None:
        """Begin the handshake (a client puts its ClientHello in outgoing())."""

    @abc.abstractmethod
    def incoming(self, data: bytes) -> bytes:
        """Feed ciphertext; advance the handshake; return the cleartext produced.

        Raises TLSSessionError on a fatal protocol error.
        """

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Queue cleartext; it is encrypted once the handshake is done."""

    @abc.abstractmethod
    def outgoing(self) -> bytes:
        """Return (and drain) the ciphertext waiting for the network."""

    @abc.abstractmethod
    def close_notify(self) -> None:
        """Queue a TLS close_notify alert in outgoing()."""

    @abc.abstractmethod
    def free(self) -> None:
        """Release this session and its reference on the context. Idempotent."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Negotiated facts: version, cipher, peer certificate subject if any."""


class YTLS(abc.ABC):
    """One TLS configuration (server or client) with an atomically swappable context."""

    library: str = ""
    server: bool = True

    @abc.abstractmethod
    def reload(self, crypto: dict[str, Any]) -> dict[str, Any]:
        """Build, validate and swap in a new context from ``crypto``.

        Returns ``{"changed": bool, "old": cert_info|None, "new": cert_info}``;
        ``changed`` is False when the files hold the certificate already served
        (a cheap no-op: the context is not rebuilt).
        Raises TLSError and leaves the current context serving on any failure.
        """

    @abc.abstractmethod
    def cert_info(self) -> dict[str, Any] | None:
        """Facts of the certificate served now, or None for a client without one.

        Keys: subject, issuer, serial (upper-case hex), not_before, not_after
        (Unix seconds, UTC), fingerprint (SHA-256, upper-case hex with colons),
        sans (list of str), key_type ("RSA", "EC", "Ed25519", ...), key_size.
        """

    @abc.abstractmethod
    def new_secure_filter(self, server_hostname: str | None = None) -> SecureFilter:
        """A filter bound to the context current at this moment."""

    @abc.abstractmethod
    def live_contexts(self) -> int:
        """How many contexts are still alive (current + ones held by live sessions)."""

    def cleanup(self) -> None:
        """Drop the handle's reference to its context."""
