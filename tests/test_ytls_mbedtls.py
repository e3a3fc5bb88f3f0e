"""The mbed TLS backend of gobj.ytls: reload, the counted bundle, live sessions.

Filters are pumped against each other in memory; the mixed tests put the
stdlib ``ssl`` module (OpenSSL) on the other end of a real TCP socket on
127.0.0.1, in both directions.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from gobj.ytls import SecureFilter, TLSError, TLSSessionError, load_material, ytls_init
from gobj.ytls.mbedtls_backend import MbedTLS

sys.path.insert(0, str(Path(__file__).parent))
from tls_certs import CA, CertFiles, issue, make_ca  # noqa: E402

LOOPBACK = "127.0.0.1"


# Fixtures and helpers

@pytest.fixture
def root(tmp_path: Path) -> CA:
    return make_ca(tmp_path, "root")


@pytest.fixture
def inter(tmp_path: Path, root: CA) -> CA:
    return make_ca(tmp_path, "inter", parent=root)


@pytest.fixture
def cert_a(tmp_path: Path, inter: CA) -> CertFiles:
    return issue(inter, tmp_path, "a", cn="localhost")


@pytest.fixture
def cert_b(tmp_path: Path, inter: CA) -> CertFiles:
    return issue(inter, tmp_path, "b", cn="localhost")


@pytest.fixture
def server_a(cert_a: CertFiles) -> MbedTLS:
    tls = ytls_init(cert_a.crypto(library="mbedtls"), True)
    assert isinstance(tls, MbedTLS)
    return tls


def client_for(root: CA, **extra: Any) -> MbedTLS:
    crypto = {"library": "mbedtls", "ssl_trusted_certificate": str(root.cert_path),
              "ssl_server_name": "localhost", **extra}
    return MbedTLS(crypto, server=False)


def pump(c: SecureFilter, s: SecureFilter) -> tuple[bytes, bytes]:
    """Move ciphertext both ways until quiet; return (cleartext at c, at s)."""
    at_c, at_s = b"", b""
    for _ in range(10):
        to_s, to_c = c.outgoing(), b""
        at_s += s.incoming(to_s)
        to_c = s.outgoing()
        at_c += c.incoming(to_c)
        if not to_s and not to_c and c.handshake_done and s.handshake_done:
            break
    return at_c, at_s


def connect(client: MbedTLS, server: MbedTLS) -> tuple[SecureFilter, SecureFilter]:
    c, s = client.new_secure_filter(), server.new_secure_filter()
    c.start()
    pump(c, s)
    assert c.handshake_done and s.handshake_done
    return c, s


def echo(c: SecureFilter, s: SecureFilter, msg: bytes) -> None:
    c.send(msg)
    assert pump(c, s)[1] == msg
    s.send(msg[::-1])
    assert pump(c, s)[0] == msg[::-1]


# Reload and cert_info

def test_reload_a_to_b_then_failed_reload_keeps_b(
        server_a: MbedTLS, cert_a: CertFiles, cert_b: CertFiles, root: CA) -> None:
    fp_a = server_a.cert_info()["fingerprint"]
    out = server_a.reload(cert_b.crypto(library="mbedtls"))
    fp_b = server_a.cert_info()["fingerprint"]
    assert out["changed"] and out["old"]["fingerprint"] == fp_a
    assert out["new"]["fingerprint"] == fp_b != fp_a

    # B's certificate with A's key: refused, and B keeps serving.
    bad = cert_b.crypto(library="mbedtls", ssl_certificate_key=str(cert_a.key))
    with pytest.raises(TLSError) as err:
        server_a.reload(bad)
    assert "does not match" in str(err.value) and str(cert_a.key) in str(err.value)
    assert server_a.cert_info()["fingerprint"] == fp_b
    c, _ = connect(client_for(root), server_a)
    assert c.info()["peer_fingerprint"] == fp_b
    # A had no session left, so the reload released it at once.
    assert server_a.live_contexts() == 1
    c.free()


def test_reload_same_files_is_a_noop(server_a: MbedTLS, cert_a: CertFiles) -> None:
    bundle = server_a.bundle
    out = server_a.reload(cert_a.crypto(library="mbedtls"))
    assert out == {"changed": False, "old": out["old"], "new": out["old"]}
    assert server_a.bundle is bundle and bundle.refcount == 1


def test_cert_info_equals_what_material_reports(server_a: MbedTLS, cert_a: CertFiles) -> None:
    info = server_a.cert_info()
    expected = load_material(cert_a.crypto(library="mbedtls"), server=True).info
    assert info == expected
    for key in ("subject", "issuer", "serial", "not_before", "not_after",
                "fingerprint", "sans", "key_type", "key_size"):
        assert key in info
    assert info["serial"] == info["serial"].upper()
    assert info["key_type"] == "EC" and info["key_size"] == 256


def test_cert_info_same_as_openssl_backend(cert_a: CertFiles) -> None:
    mbed = ytls_init(cert_a.crypto(library="mbedtls"), True)
    openssl = ytls_init(cert_a.crypto(library="openssl"), True)
    assert mbed.cert_info() == openssl.cert_info()


def test_cert_info_client_without_cert_is_none(root: CA) -> None:
    assert client_for(root).cert_info() is None


def test_rsa_key_serves(tmp_path: Path, root: CA) -> None:
    files = issue(root, tmp_path, "rsa", key_type="rsa")
    server = MbedTLS(files.crypto(library="mbedtls"), server=True)
    c, s = connect(client_for(root), server)
    echo(c, s, b"rsa")
    assert server.cert_info()["key_type"] == "RSA"


# The counted bundle

def test_bundle_released_exactly_when_last_session_frees(
        server_a: MbedTLS, cert_b: CertFiles, root: CA) -> None:
    client = client_for(root)
    old = server_a.bundle
    assert old.refcount == 1                       # the handle
    c1, s1 = connect(client, server_a)
    assert old.refcount == 2
    c2, s2 = connect(client, server_a)
    assert old.refcount == 3

    server_a.reload(cert_b.crypto(library="mbedtls"))
    new = server_a.bundle
    assert (old.refcount, new.refcount) == (2, 1)  # handle moved to the new one
    assert server_a.live_contexts() == 2

    s1.free()
    assert old.refcount == 1 and not old.released
    echo(c2, s2, b"still on the old bundle")
    s2.free()
    assert old.refcount == 0 and old.released and old.context is None
    assert server_a.live_contexts() == 1

    s2.free()                                      # idempotent: no double decref
    assert new.refcount == 1
    with pytest.raises(TLSSessionError):
        s2.send(b"after free")
    c1.free(), c2.free()


def test_cleanup_drops_the_handle_reference(server_a: MbedTLS, root: CA) -> None:
    bundle = server_a.bundle
    c, s = connect(client_for(root), server_a)
    server_a.cleanup()
    assert bundle.refcount == 1 and not bundle.released
    echo(c, s, b"the session outlives its handle")
    s.free()
    assert bundle.released and server_a.live_contexts() == 0
    with pytest.raises(TLSError):
        server_a.new_secure_filter()


def test_live_session_survives_a_reload(
        server_a: MbedTLS, cert_a: CertFiles, cert_b: CertFiles, root: CA) -> None:
    client = client_for(root)
    fp_a = server_a.cert_info()["fingerprint"]
    c_old, s_old = connect(client, server_a)
    server_a.reload(cert_b.crypto(library="mbedtls"))
    echo(c_old, s_old, b"born before the reload")
    assert c_old.info()["peer_fingerprint"] == fp_a
    c_new, s_new = connect(client, server_a)
    assert c_new.info()["peer_fingerprint"] == server_a.cert_info()["fingerprint"]
    assert c_old.info()["peer_fingerprint"] != c_new.info()["peer_fingerprint"]
    echo(c_new, s_new, b"born after")
    for f in (c_old, s_old, c_new, s_new):
        f.free()
    assert server_a.live_contexts() == 1


def test_50_reloads_with_one_live_session(
        server_a: MbedTLS, cert_a: CertFiles, cert_b: CertFiles, root: CA) -> None:
    c, s = connect(client_for(root), server_a)
    born_with = s.bundle
    for i in range(50):
        files = cert_b if i % 2 == 0 else cert_a
        assert server_a.reload(files.crypto(library="mbedtls"))["changed"]
        echo(c, s, f"message {i}".encode())
        # Only two bundles ever live: the session's and the current one.
        assert server_a.live_contexts() == 2
    assert born_with.refcount == 1
    s.free(), c.free()
    assert born_with.released and server_a.live_contexts() == 1


def test_1000_reloads_leave_no_growth(server_a: MbedTLS, cert_a: CertFiles,
                                      cert_b: CertFiles) -> None:
    cryptos = [cert_b.crypto(library="mbedtls"), cert_a.crypto(library="mbedtls")]
    for i in range(20):                      # warm caches before measuring
        server_a.reload(cryptos[i % 2])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            server_a.reload(cryptos[i % 2])
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, f"grew {after - before} bytes over 1000 reloads"
    assert server_a.live_contexts() == 1 and server_a.bundle.refcount == 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_1000_reloads_leave_no_native_growth(server_a: MbedTLS, cert_a: CertFiles,
                                             cert_b: CertFiles) -> None:
    # tracemalloc cannot see mbed TLS's own mallocs; resident memory can. A
    # leaked bundle (config, chain, key, two 32 KiB rings per probe) would add
    # well over 100 KiB per reload, some 100 MiB over the run.
    cryptos = [cert_b.crypto(library="mbedtls"), cert_a.crypto(library="mbedtls")]
    for i in range(50):
        server_a.reload(cryptos[i % 2])
    gc.collect()
    before = _rss_bytes()
    for i in range(1000):
        server_a.reload(cryptos[i % 2])
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 8 * 1024 * 1024, f"resident memory grew {grown} bytes"
    assert server_a.live_contexts() == 1


# Refusals that are mbed TLS's own (material.py accepted the input)

@pytest.mark.parametrize("extra, field, needle", [
    ({"ssl_min_version": "TLSv1.3"}, "ssl_min_version", "TLSv1.3"),
    ({"ssl_ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"}, "ssl_ciphers", "unknown suite"),
    ({"ssl_verify_mode": "optional", "ssl_trusted_certificate": "CA"},
     "ssl_verify_mode", "optional"),
])
def test_mbed_refusals_name_the_field_and_mbed(
        server_a: MbedTLS, cert_b: CertFiles, root: CA,
        extra: dict[str, Any], field: str, needle: str) -> None:
    if extra.get("ssl_trusted_certificate") == "CA":
        extra = {**extra, "ssl_trusted_certificate": str(root.cert_path)}
    fp = server_a.cert_info()["fingerprint"]
    with pytest.raises(TLSError) as err:
        server_a.reload(cert_b.crypto(library="mbedtls", **extra))
    assert err.value.field == field
    assert "mbed TLS" in str(err.value) and needle in str(err.value)
    assert server_a.cert_info()["fingerprint"] == fp


def test_ed25519_key_is_refused_by_mbed(tmp_path: Path, root: CA) -> None:
    files = issue(root, tmp_path, "ed", key_type="ed25519")
    with pytest.raises(TLSError) as err:
        MbedTLS(files.crypto(library="mbedtls"), server=True)
    assert err.value.field == "ssl_certificate_key"
    assert "mbed TLS" in str(err.value) and str(files.key) in str(err.value)


def test_ciphers_in_mbed_names_are_honoured(cert_a: CertFiles, root: CA) -> None:
    suite = "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"
    server = MbedTLS(cert_a.crypto(library="mbedtls", ssl_ciphers=suite), server=True)
    c, s = connect(client_for(root), server)
    assert s.info()["cipher"] == suite


def test_ciphers_that_cannot_serve_the_key_fail_the_loopback_proof(cert_a: CertFiles) -> None:
    rsa_only = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256"
    with pytest.raises(TLSError) as err:
        MbedTLS(cert_a.crypto(library="mbedtls", ssl_ciphers=rsa_only), server=True)
    assert err.value.field == "ssl_ciphers" and "loopback handshake failed" in str(err.value)


# Client verification

def test_client_refuses_a_wrong_server_name(server_a: MbedTLS, root: CA) -> None:
    client = client_for(root, ssl_server_name="not-this-host.example")
    c, s = client.new_secure_filter(), server_a.new_secure_filter()
    c.start()
    with pytest.raises(TLSSessionError):
        pump(c, s)


def test_client_refuses_an_untrusted_server(tmp_path: Path, server_a: MbedTLS) -> None:
    stranger = make_ca(tmp_path, "stranger")
    c, s = client_for(stranger).new_secure_filter(), server_a.new_secure_filter()
    c.start()
    with pytest.raises(TLSSessionError):
        pump(c, s)


def test_verifying_client_needs_a_server_name(root: CA) -> None:
    client = MbedTLS({"library": "mbedtls",
                      "ssl_trusted_certificate": str(root.cert_path)}, server=False)
    with pytest.raises(TLSError) as err:
        client.new_secure_filter()
    assert err.value.field == "ssl_server_name"


def test_close_notify_reaches_the_peer(server_a: MbedTLS, root: CA) -> None:
    c, s = connect(client_for(root), server_a)
    c.close_notify()
    s.incoming(c.outgoing())
    assert s.peer_closed


def test_large_message_crosses_in_records(server_a: MbedTLS, root: CA) -> None:
    c, s = connect(client_for(root), server_a)
    big = bytes(range(256)) * 1000            # 256 000 bytes, many records
    s.send(big)
    assert pump(c, s)[0] == big


# Mixed: OpenSSL (stdlib ssl) on the other end of a real loopback socket

def _drive_filter(sock: socket.socket, f: SecureFilter, send: bytes, want: int) -> bytes:
    """Run a filter over a blocking socket until ``want`` cleartext bytes arrive."""
    f.start()
    sock.sendall(f.outgoing())
    got = b""
    sent = False
    while len(got) < want:
        if f.handshake_done and not sent:
            f.send(send)
            sent = True
        out = f.outgoing()
        if out:
            sock.sendall(out)
            continue
        data = sock.recv(65536)
        if not data:
            break
        got += f.incoming(data)
    sock.sendall(f.outgoing())
    return got


def test_stdlib_openssl_client_against_mbed_server(server_a: MbedTLS, root: CA) -> None:
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    result: dict[str, Any] = {}

    def openssl_client() -> None:
        ctx = ssl.create_default_context(cafile=str(root.cert_path))
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"hello from openssl")
                result["reply"] = tls.recv(100)
                result["version"] = tls.version()

    thread = threading.Thread(target=openssl_client)
    thread.start()
    conn, _ = listener.accept()
    conn.settimeout(5)
    f = server_a.new_secure_filter()
    try:
        got = _drive_filter(conn, f, b"", len(b"hello from openssl"))
        f.send(got.upper())
        conn.sendall(f.outgoing())
        thread.join(5)
    finally:
        f.free(), conn.close(), listener.close()
    assert got == b"hello from openssl"
    assert result == {"reply": b"HELLO FROM OPENSSL", "version": "TLSv1.2"}


def test_mbed_client_against_stdlib_openssl_server(cert_a: CertFiles, root: CA) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_a.fullchain), str(cert_a.key))
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]

    def openssl_server() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(tls.recv(100)[::-1])

    thread = threading.Thread(target=openssl_server)
    thread.start()
    f = client_for(root).new_secure_filter()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            got = _drive_filter(sock, f, b"hello from mbed", len(b"hello from mbed"))
        thread.join(5)
        info = f.info()
    finally:
        f.free(), listener.close()
    assert got == b"hello from mbed"[::-1]
    assert info["version"] == "TLSv1.2"
    assert info["peer_subject"] == cert_a.leaf.subject.rfc4514_string()


def test_a_fatal_error_leaves_the_filter_only_freeable(server_a: MbedTLS, root: CA) -> None:
    c, s = connect(client_for(root), server_a)
    c.send(b"genuine")
    record = c.outgoing()
    forged = record[:-1] + bytes([record[-1] ^ 1])
    with pytest.raises(TLSSessionError):
        s.incoming(forged)
    # python-mbedtls reset its context after the error; the filter must not
    # let a fresh ClientHello start a new handshake on it.
    hello_from = client_for(root).new_secure_filter()
    hello_from.start()
    with pytest.raises(TLSSessionError, match="unusable"):
        s.incoming(hello_from.outgoing())
    s.free()
    assert server_a.bundle.refcount == 1
    c.free()


# Client certificates (ssl_verify_mode required on the server)

def test_server_requiring_client_certs(tmp_path: Path, cert_a: CertFiles, root: CA) -> None:
    server = MbedTLS(cert_a.crypto(library="mbedtls", ssl_verify_mode="required",
                                   ssl_trusted_certificate=str(root.cert_path)), server=True)
    me = issue(root, tmp_path, "client", cn="client-1")
    with_cert = client_for(root, ssl_certificate=str(me.fullchain),
                           ssl_certificate_key=str(me.key))
    c, s = connect(with_cert, server)
    assert s.info()["peer_subject"] == me.leaf.subject.rfc4514_string()
    echo(c, s, b"mutual")

    c, s = client_for(root).new_secure_filter(), server.new_secure_filter()
    c.start()
    with pytest.raises(TLSSessionError):
        pump(c, s)
