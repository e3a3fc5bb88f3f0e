"""The OpenSSL backend of gobj.ytls: loading, refusals, reload and live sessions.

Sessions are pumped against each other in memory; one test talks to a stdlib
``ssl`` client over a real socket on 127.0.0.1 to prove interoperability.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import threading
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gobj.ytls.material import serial_hex
import pytest

from gobj.ytls import SecureFilter, TLSError, TLSSessionError, YTLS, load_material, ytls_init
from gobj.ytls import openssl_backend

from tests.tls_certs import CA, CertFiles, issue, make_ca, pem, self_signed

MAIN = Path(__file__).resolve().parent.parent


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
def server_a(cert_a: CertFiles) -> YTLS:
    return ytls_init(cert_a.crypto(), server=True)


def client_for(root: CA, **extra: Any) -> YTLS:
    crypto = {"ssl_trusted_certificate": str(root.cert_path), "ssl_server_name": "localhost"}
    crypto.update(extra)
    return ytls_init(crypto, server=False)


def pump(client: SecureFilter, server: SecureFilter) -> tuple[bytes, bytes]:
    """Move ciphertext both ways until both sides are quiet; return the cleartext
    each side received (client's, server's)."""
    got_c, got_s = b"", b""
    for _ in range(20):
        to_s, to_c = client.outgoing(), server.outgoing()
        if not to_s and not to_c:
            break
        if to_s:
            got_s += server.incoming(to_s)
        if to_c:
            got_c += client.incoming(to_c)
    return got_c, got_s


def connect(client_tls: YTLS, server_tls: YTLS) -> tuple[SecureFilter, SecureFilter]:
    c, s = client_tls.new_secure_filter(), server_tls.new_secure_filter()
    c.start()
    s.start()
    pump(c, s)
    assert c.handshake_done and s.handshake_done
    return c, s


def echo_both_ways(c: SecureFilter, s: SecureFilter, msg: bytes) -> None:
    c.send(msg)
    assert pump(c, s) == (b"", msg)
    s.send(msg[::-1])
    assert pump(c, s) == (msg[::-1], b"")


def fingerprint_seen(c: SecureFilter, s: SecureFilter) -> str:
    return s.info()["cert_fingerprint"]


def refused(tls: YTLS, crypto: dict[str, Any], *needles: str) -> TLSError:
    """Reload must fail naming every needle, and leave cert_info as it was."""
    before = tls.cert_info()
    with pytest.raises(TLSError) as err:
        tls.reload(crypto)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert tls.cert_info() == before
    return err.value


# The guide's ported tests, at library level

def test_reload_a_to_b_then_failed_reload_keeps_b(
        tmp_path: Path, root: CA, server_a: YTLS, cert_a: CertFiles, cert_b: CertFiles) -> None:
    client = client_for(root)
    assert server_a.cert_info()["serial"] == serial_hex(cert_a.leaf.serial_number)

    result = server_a.reload(cert_b.crypto())
    assert result["changed"] is True
    assert result["old"]["serial"] == serial_hex(cert_a.leaf.serial_number)
    assert result["new"]["serial"] == serial_hex(cert_b.leaf.serial_number)

    missing = tmp_path / "nowhere.pem"
    refused(server_a, cert_b.crypto(ssl_certificate=str(missing)), str(missing), "no such file")
    c, s = connect(client, server_a)
    assert fingerprint_seen(c, s) == server_a.cert_info()["fingerprint"]
    assert server_a.cert_info()["serial"] == serial_hex(cert_b.leaf.serial_number)


def test_reload_same_files_is_a_noop(server_a: YTLS, cert_a: CertFiles) -> None:
    result = server_a.reload(cert_a.crypto())
    assert result["changed"] is False
    assert result["old"] == result["new"] == server_a.cert_info()
    gc.collect()
    assert server_a.live_contexts() == 1


def test_reload_same_cert_new_settings_rebuilds(server_a: YTLS, cert_a: CertFiles) -> None:
    assert server_a.reload(cert_a.crypto(ssl_min_version="TLSv1.3"))["changed"] is True


def test_cert_info_one_day(tmp_path: Path, root: CA) -> None:
    files = issue(root, tmp_path, "d1", days=1)
    info = ytls_init(files.crypto(), server=True).cert_info()
    assert info["not_after"] - info["not_before"] == 86400


def test_cert_info_365_days_and_fields(tmp_path: Path, root: CA) -> None:
    files = issue(root, tmp_path, "d365", days=365, key_type="rsa", cn="example.test",
                  sans=["example.test", "www.example.test", "127.0.0.1"])
    info = ytls_init(files.crypto(), server=True).cert_info()
    assert info["not_after"] - info["not_before"] == 365 * 86400
    assert info["subject"] == "CN=example.test,O=Yuneta-Py tests"
    assert info["issuer"] == "CN=root CA,O=Yuneta-Py tests"
    assert info["sans"] == ["example.test", "www.example.test", "127.0.0.1"]
    assert (info["key_type"], info["key_size"]) == ("RSA", 2048)
    octets = info["fingerprint"].split(":")
    assert len(octets) == 32 and all(o == o.upper() and len(o) == 2 for o in octets)
    assert isinstance(info["not_before"], int) and isinstance(info["not_after"], int)


def test_cert_info_self_signed_subject_is_issuer(tmp_path: Path) -> None:
    files = self_signed(tmp_path, "self", cn="self.test")
    info = ytls_init(files.crypto(), server=True).cert_info()
    assert info["subject"] == info["issuer"] == "CN=self.test,O=Yuneta-Py tests"
    assert (info["key_type"], info["key_size"]) == ("EC", 256)


def test_cert_info_serial_is_upper_hex(tmp_path: Path, root: CA) -> None:
    files = issue(root, tmp_path, "ser", serial=0x0ABCDEF0123)
    assert ytls_init(files.crypto(), server=True).cert_info()["serial"] == "ABCDEF0123"


def test_cert_info_client_without_cert_is_none(root: CA) -> None:
    assert client_for(root).cert_info() is None


def test_expired_cert_loads_at_init_but_not_on_reload(
        tmp_path: Path, root: CA, server_a: YTLS) -> None:
    past = datetime.now(timezone.utc) - timedelta(days=30)
    old = issue(root, tmp_path, "old", not_before=past, days=10)
    info = ytls_init(old.crypto(), server=True).cert_info()
    assert info["not_after"] < time.time()
    refused(server_a, old.crypto(), str(old.fullchain), "certificate expired on",
            (past + timedelta(days=10)).strftime("%Y-%m-%d"))


def test_1000_reloads_leave_no_growth(tmp_path: Path, inter: CA) -> None:
    a = issue(inter, tmp_path, "ma")
    b = issue(inter, tmp_path, "mb")
    tls = ytls_init(a.crypto(), server=True)
    pair = (b.crypto(), a.crypto())
    for i in range(20):  # warm caches (probe clients, interned strings)
        tls.reload(pair[i % 2])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(1000):
            assert tls.reload(pair[i % 2])["changed"] is True
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, f"grew {growth} bytes over 1000 reloads"
    assert tls.live_contexts() == 1


def test_reload_with_live_session_keeps_it_working(
        root: CA, server_a: YTLS, cert_a: CertFiles, cert_b: CertFiles) -> None:
    client = client_for(root)
    c, s = connect(client, server_a)
    fp_a = server_a.cert_info()["fingerprint"]
    echo_both_ways(c, s, b"before reload")

    server_a.reload(cert_b.crypto())
    echo_both_ways(c, s, b"after reload")
    assert fingerprint_seen(c, s) == fp_a
    gc.collect()
    assert server_a.live_contexts() == 2  # A held by the live session, B current

    c2, s2 = connect(client, server_a)
    assert fingerprint_seen(c2, s2) == server_a.cert_info()["fingerprint"] != fp_a

    for f in (c, s):
        f.free()
    gc.collect()
    assert server_a.live_contexts() == 1


def test_50_reloads_with_one_live_session(
        root: CA, server_a: YTLS, cert_a: CertFiles, cert_b: CertFiles) -> None:
    c, s = connect(client_for(root), server_a)
    pair = (cert_b.crypto(), cert_a.crypto())
    for i in range(50):
        assert server_a.reload(pair[i % 2])["changed"] is True
        echo_both_ways(c, s, f"message {i}".encode())
    gc.collect()
    # The live session pins its birth context; every other old one is gone.
    assert server_a.live_contexts() == 2
    c.close_notify()
    assert pump(c, s) == (b"", b"")
    s.free()
    c.free()
    gc.collect()
    assert server_a.live_contexts() == 1


# Refusals: each names the field's file and the cause, and keeps the old cert

def test_refuse_missing_key_file(tmp_path: Path, server_a: YTLS, cert_b: CertFiles) -> None:
    gone = tmp_path / "gone.key"
    err = refused(server_a, cert_b.crypto(ssl_certificate_key=str(gone)),
                  "ssl_certificate_key", str(gone), "no such file")
    assert (err.field, err.path) == ("ssl_certificate_key", str(gone))


def test_refuse_unreadable_file(tmp_path: Path, server_a: YTLS, cert_b: CertFiles) -> None:
    cert_b.key.chmod(0o000)
    if os.geteuid() != 0:
        refused(server_a, cert_b.crypto(), str(cert_b.key),
                f"permission denied reading the file as uid {os.geteuid()}")
        return
    # Root reads anything: load in a forked child that dropped to uid 65534
    # (the interpreter is already loaded, so the child needs no file access).
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the refusal text through the pipe, never return
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_material(cert_b.crypto(), server=True)
            os.write(w, b"loaded")
        except BaseException as exc:
            os.write(w, str(exc).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "permission denied reading the file as uid 65534" in message, message
    assert "ssl_certificate" in message


def test_refuse_empty_file(server_a: YTLS, cert_b: CertFiles) -> None:
    cert_b.fullchain.write_bytes(b"\n")
    refused(server_a, cert_b.crypto(), "ssl_certificate", str(cert_b.fullchain),
            "the file is empty")


def test_refuse_truncated_pem(server_a: YTLS, cert_b: CertFiles) -> None:
    data = cert_b.fullchain.read_bytes()
    cert_b.fullchain.write_bytes(data[: len(data) // 3])
    refused(server_a, cert_b.crypto(), str(cert_b.fullchain), "truncated PEM")


def test_refuse_garbled_pem(server_a: YTLS, cert_b: CertFiles) -> None:
    lines = cert_b.cert.read_bytes().splitlines(keepends=True)
    lines[3] = b"!!!!" + lines[3][4:]
    cert_b.fullchain.write_bytes(b"".join(lines))
    refused(server_a, cert_b.crypto(), str(cert_b.fullchain), "unparseable certificate PEM")


def test_refuse_no_certificate_in_file(server_a: YTLS, cert_b: CertFiles) -> None:
    refused(server_a, cert_b.crypto(ssl_certificate=str(cert_b.key)),
            str(cert_b.key), "no certificate in the file (it holds a private key)")


def test_refuse_key_file_without_key(server_a: YTLS, cert_b: CertFiles) -> None:
    refused(server_a, cert_b.crypto(ssl_certificate_key=str(cert_b.cert)),
            "ssl_certificate_key", str(cert_b.cert), "holds no private key")


def test_refuse_key_not_matching(server_a: YTLS, cert_a: CertFiles, cert_b: CertFiles) -> None:
    refused(server_a, cert_b.crypto(ssl_certificate_key=str(cert_a.key)),
            str(cert_a.key), "key does not match the certificate", str(cert_b.fullchain))


def test_refuse_chain_out_of_order(
        tmp_path: Path, inter: CA, server_a: YTLS, cert_b: CertFiles) -> None:
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(pem(inter.cert, cert_b.leaf))
    refused(server_a, cert_b.crypto(ssl_certificate=str(swapped)),
            str(swapped), "chain out of order")


def test_refuse_chain_with_forged_issuer(
        tmp_path: Path, root: CA, cert_b: CertFiles, server_a: YTLS) -> None:
    # Same subject name as the real intermediate, different key: names link,
    # the signature does not.
    (tmp_path / "impostor").mkdir()
    impostor = make_ca(tmp_path / "impostor", "inter", parent=root)
    forged = tmp_path / "forged.pem"
    forged.write_bytes(pem(cert_b.leaf, impostor.cert))
    refused(server_a, cert_b.crypto(ssl_certificate=str(forged)),
            str(forged), "chain does not link", "does not verify")


def test_refuse_not_yet_valid(tmp_path: Path, root: CA, server_a: YTLS) -> None:
    later = datetime.now(timezone.utc) + timedelta(days=3)
    files = issue(root, tmp_path, "later", not_before=later)
    refused(server_a, files.crypto(), str(files.fullchain), "not yet valid",
            later.strftime("%Y-%m-%d"))
    with pytest.raises(TLSError, match="not yet valid"):
        ytls_init(files.crypto(), server=True)


def test_refuse_encrypted_key_without_passphrase(
        tmp_path: Path, root: CA, server_a: YTLS) -> None:
    files = issue(root, tmp_path, "enc", password=b"s3cret")
    crypto = files.crypto()
    del crypto["ssl_key_password"]
    refused(server_a, crypto, str(files.key), "encrypted", "ssl_key_password is not set")


def test_refuse_wrong_passphrase(tmp_path: Path, root: CA, server_a: YTLS) -> None:
    files = issue(root, tmp_path, "enc", password=b"s3cret")
    err = refused(server_a, files.crypto(ssl_key_password="nope"),
                  str(files.key), "wrong passphrase")
    assert "nope" not in str(err)


def test_encrypted_key_with_passphrase_loads(tmp_path: Path, root: CA, server_a: YTLS) -> None:
    files = issue(root, tmp_path, "enc", password=b"s3cret")
    assert server_a.reload(files.crypto())["changed"] is True


def test_refuse_dsa_key(tmp_path: Path, root: CA, server_a: YTLS) -> None:
    files = issue(root, tmp_path, "dsa", key_type="dsa")
    refused(server_a, files.crypto(), str(files.key), "DSA keys cannot serve")


def test_refuse_small_rsa_key(tmp_path: Path, root: CA, server_a: YTLS) -> None:
    files = issue(root, tmp_path, "rsa1k", key_type="rsa", key_size=1024)
    refused(server_a, files.crypto(), str(files.key), "RSA-1024", "2048-bit minimum")


def test_refuse_curve_without_tls_signatures(tmp_path: Path, root: CA, server_a: YTLS) -> None:
    files = issue(root, tmp_path, "k1", key_type="secp256k1")
    refused(server_a, files.crypto(), str(files.key), "secp256k1")


def test_refuse_ciphers_that_cannot_serve_ec(server_a: YTLS, cert_b: CertFiles) -> None:
    err = refused(server_a, cert_b.crypto(ssl_ciphers="ECDHE-RSA-AES128-GCM-SHA256"),
                  "ssl_ciphers", "EC key", str(cert_b.key), "ssl_min_version TLSv1.3")
    assert err.field == "ssl_ciphers"


def test_same_ciphers_serve_ec_at_tls13_only(server_a: YTLS, cert_b: CertFiles) -> None:
    crypto = cert_b.crypto(ssl_ciphers="ECDHE-RSA-AES128-GCM-SHA256", ssl_min_version="TLSv1.3")
    assert server_a.reload(crypto)["changed"] is True


def test_refuse_what_only_a_handshake_shows(server_a: YTLS, cert_b: CertFiles) -> None:
    # The suite names ECDSA, so the static check passes; OpenSSL's security
    # level then refuses its NULL cipher during the handshake.
    refused(server_a, cert_b.crypto(ssl_ciphers="ECDHE-ECDSA-NULL-SHA"),
            "ssl_ciphers", "EC-256", str(cert_b.fullchain), "loopback TLSv1.2 handshake",
            "NO_SHARED_CIPHER")


def test_refuse_unknown_ciphers(server_a: YTLS, cert_b: CertFiles) -> None:
    refused(server_a, cert_b.crypto(ssl_ciphers="NO-SUCH-SUITE"), "ssl_ciphers",
            "selects no cipher suite")


def test_refuse_old_min_version(server_a: YTLS, cert_b: CertFiles) -> None:
    refused(server_a, cert_b.crypto(ssl_min_version="TLSv1.1"), "ssl_min_version",
            "TLSv1.2, TLSv1.3")


def test_refuse_missing_server_fields(cert_a: CertFiles) -> None:
    with pytest.raises(TLSError, match="ssl_certificate_key: required for a server"):
        ytls_init({"ssl_certificate": str(cert_a.fullchain)}, server=True)


def test_refuse_unknown_library(cert_a: CertFiles) -> None:
    with pytest.raises(TLSError) as err:
        ytls_init(cert_a.crypto(library="gnutls"), server=True)
    assert "'gnutls'" in str(err.value) and "openssl, mbedtls" in str(err.value)
    assert err.value.field == "library"


def test_reload_cannot_switch_library(server_a: YTLS, cert_b: CertFiles) -> None:
    refused(server_a, cert_b.crypto(library="mbedtls"), "library", "recreate the listener")


def test_client_without_ca_is_refused_unless_insecure(cert_a: CertFiles, server_a: YTLS) -> None:
    with pytest.raises(TLSError, match="ssl_trusted_certificate: a client needs the CA"):
        ytls_init({"ssl_server_name": "localhost"}, server=False)
    insecure = ytls_init({"ssl_allow_insecure_client": True}, server=False)
    c, s = connect(insecure, server_a)
    echo_both_ways(c, s, b"unverified but encrypted")


# Material details

def test_material_is_normalized_and_keeps_key_out_of_repr(
        tmp_path: Path, root: CA) -> None:
    files = issue(root, tmp_path, "m", password=b"pw")
    mat = load_material(files.crypto(), server=True)
    assert mat.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mat.chain[0] == mat.leaf and mat.info["chain_length"] == 1
    assert b"PRIVATE" not in repr(mat).encode()
    assert mat.settings == {
        "library": "openssl", "verify_mode": "none", "ciphers": None,
        "min_version": "TLSv1.2", "server_name": None, "allow_insecure_client": False,
        "num_tickets": None,
    }
    same = load_material(files.crypto(), server=True)
    assert same.digest == mat.digest


def test_passphrase_for_plain_key_is_ignored(server_a: YTLS, cert_b: CertFiles) -> None:
    assert server_a.reload(cert_b.crypto(ssl_key_password="unused"))["changed"] is True


def test_private_file_fallback_leaves_nothing_behind(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cert_a: CertFiles) -> None:
    monkeypatch.setattr(openssl_backend, "_HAVE_MEMFD", False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    tls = ytls_init(cert_a.crypto(), server=True)
    assert tls.cert_info() is not None
    assert list((tmp_path / "t").iterdir()) == []


# Sessions

def test_rsa_and_big_messages(root: CA, tmp_path: Path) -> None:
    rsa = issue(root, tmp_path, "r", key_type="rsa")
    server = ytls_init(rsa.crypto(), server=True)
    c, s = connect(client_for(root), server)
    assert c.info()["version"] == "TLSv1.3"
    echo_both_ways(c, s, os.urandom(200_000))


def test_send_before_handshake_is_delivered_after(root: CA, server_a: YTLS) -> None:
    c = client_for(root).new_secure_filter()
    s = server_a.new_secure_filter()
    c.send(b"early")
    c.start()
    _, got = pump(c, s)
    assert got == b"early"


def test_client_refuses_unknown_server(tmp_path: Path, server_a: YTLS) -> None:
    other = make_ca(tmp_path, "other")
    c = client_for(other).new_secure_filter()
    s = server_a.new_secure_filter()
    c.start()
    with pytest.raises(TLSSessionError, match="certificate verify failed"):
        pump(c, s)


def test_client_refuses_wrong_hostname(root: CA, server_a: YTLS) -> None:
    c = client_for(root, ssl_server_name="not-localhost.test").new_secure_filter()
    c.start()
    with pytest.raises(TLSSessionError, match="certificate verify failed"):
        pump(c, server_a.new_secure_filter())


def test_server_requiring_client_cert(tmp_path: Path, root: CA, cert_a: CertFiles) -> None:
    server = ytls_init(cert_a.crypto(ssl_verify_mode="required",
                                     ssl_trusted_certificate=str(root.cert_path)), server=True)
    anonymous = client_for(root).new_secure_filter()
    anonymous.start()
    with pytest.raises(TLSSessionError):
        pump(anonymous, server.new_secure_filter())

    me = issue(root, tmp_path, "client", cn="client")
    client = client_for(root, ssl_certificate=str(me.fullchain),
                        ssl_certificate_key=str(me.key))
    c, s = connect(client, server)
    echo_both_ways(c, s, b"mutual")
    assert "client" in s.info()["peer_subject"]


def test_freed_filter_refuses_use(root: CA, server_a: YTLS) -> None:
    c, s = connect(client_for(root), server_a)
    s.free()
    s.free()
    with pytest.raises(TLSSessionError, match="freed"):
        s.send(b"x")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_stdlib_client_over_loopback_socket(
        root: CA, server_a: YTLS, cert_b: CertFiles, version: ssl.TLSVersion) -> None:
    """A stock ssl client talks to our filter through a real 127.0.0.1 socket,
    across a reload, at each TLS version."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            f = server_a.new_secure_filter()
            try:
                while data := conn.recv(65536):
                    clear = f.incoming(data)
                    if clear:
                        f.send(clear.upper())
                    out = f.outgoing()
                    if out:
                        conn.sendall(out)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
            finally:
                f.free()

    ctx = ssl.create_default_context(cafile=str(root.cert_path))
    ctx.minimum_version = ctx.maximum_version = version
    serials = []
    with listener:
        for reload_to in (cert_b, None):
            t = threading.Thread(target=serve_one, daemon=True)
            t.start()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    assert tls.version() == version.name.replace("_", ".")
                    tls.sendall(b"hello")
                    assert tls.recv(100) == b"HELLO"
                    serials.append(int(tls.getpeercert()["serialNumber"], 16))
                    if reload_to is not None:
                        server_a.reload(reload_to.crypto())
                        tls.sendall(b"still here")  # the live session survives
                        assert tls.recv(100) == b"STILL HERE"
            t.join(10)
    assert not errors, errors
    assert serials == [serials[0], cert_b.leaf.serial_number]
    assert serials[0] != serials[1]
