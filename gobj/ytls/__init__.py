"""The TLS layer: one :class:`YTLS` per listener or client, one
:class:`SecureFilter` per connection, on OpenSSL or mbed TLS.

``ytls_init(crypto, server)`` picks the backend named by ``crypto["library"]``.
"""

from __future__ import annotations

from typing import Any

from .base import YTLS, SecureFilter, TLSError, TLSSessionError
from .material import load_material

__all__ = [
    "TLSError", "TLSSessionError", "YTLS", "SecureFilter", "load_material", "ytls_init",
]

_LIBRARIES = ("openssl", "mbedtls")


def ytls_init(crypto: dict[str, Any], server: bool) -> YTLS:
    """Build the first context for ``crypto`` with the library it names.

    An expired certificate still loads here (the service starts and the expiry
    monitor reports it); a not-yet-valid or otherwise bad one raises TLSError.
    """
    library = str(crypto.get("library") or "openssl").lower()
    # Backends are imported on first use: a yuno that never asks for mbed TLS
    # does not need its binding installed.
    if library == "openssl":
        from .openssl_backend import OpenSSLTLS
        return OpenSSLTLS(crypto, server=server)
    if library == "mbedtls":
        from .mbedtls_backend import MbedTLS
        return MbedTLS(crypto, server=server)
    raise TLSError(
        f"library: {crypto.get('library')!r} is not a TLS library we have; "
        f"choices: {', '.join(_LIBRARIES)}", field="library")
