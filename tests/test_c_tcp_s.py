"""C_TCP_S: a TLS (or plain) listener in a yuno, reloaded while clients talk to it.

Each test runs a yuno in this process on its own asyncio loop: C_YUNO at the
root, a C_ECHO default service, and one or more C_TCP_S children listening on
127.0.0.1 with a port the kernel picks. Clients are stock ``ssl`` clients
trusting a CA minted for the test. What is asserted is what an operator or a
client would see: command answers, the certificate a new client is served,
whether a live session still echoes, and the listener's stats.

The listener reads its certificate from two fixed paths (``live/server.crt``
and ``live/server.key``), and a renewal replaces the files there, as the deploy
hook does; ``install`` writes each file with a rename so a reload never sees a
half-written one unless a test means it to.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import ssl
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gobj.ytls.material import serial_hex
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gobj import gobj_command, gobj_create_tree, gobj_create_yuno, gobj_end, gobj_find_gobj, \
    gobj_read_attr, kernel
from gobj.entry import run_services
from gobj.log import capture_logs
from gobj.persist import PersistStore
from gobj.runtime import GObj
from gclasses.c_echo import register_c_echo
from gclasses.c_tcp_s import register_c_tcp_s
from gclasses.c_yuno import C_YUNO, register_c_yuno

from tests.tls_certs import CA, CertFiles, issue, make_ca, pem, self_signed
from tests.kernel_helpers import reload_growth

LIBRARIES = ["openssl", "mbedtls"]


# Certificates: a root, an intermediate, three leaves, and the live paths

class Certs:
    """A throwaway PKI and the two paths a listener is configured with."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = make_ca(base, "root")
        self.inter = make_ca(base, "inter", parent=self.root)
        self.a = issue(self.inter, base, "a")
        self.b = issue(self.inter, base, "b")
        self.c = issue(self.inter, base, "c")
        live = base / "live"
        live.mkdir()
        self.cert_path = live / "server.crt"
        self.key_path = live / "server.key"
        self.install(self.a)

    def install(self, files: CertFiles | None = None, *, chain: bytes | None = None,
                key: bytes | None = None) -> None:
        """Put a pair at the live paths (each file replaced by a rename)."""
        if files is not None:
            chain = chain if chain is not None else files.fullchain.read_bytes()
            key = key if key is not None else files.key.read_bytes()
        if chain is not None:
            _replace(self.cert_path, chain)
        if key is not None:
            _replace(self.key_path, key)

    def crypto(self, library: str = "openssl", **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"library": library, "ssl_certificate": str(self.cert_path),
                               "ssl_certificate_key": str(self.key_path)}
        out.update(extra)
        return out

    def client_ctx(self, cafile: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cafile or self.root.cert_path))


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def serial_of(files: CertFiles) -> str:
    return serial_hex(files.leaf.serial_number)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


# The yuno: created and run inside the test's own loop

def run(body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body`` on a fresh loop; destroy the yuno and close the loop after."""
    loop = asyncio.new_event_loop()
    kernel.loop = loop
    try:
        return loop.run_until_complete(asyncio.wait_for(body(), 120))
    finally:
        gobj_end()
        # Let transports closed by the teardown finish closing.
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()


def start_yuno(listeners: dict[str, dict[str, Any]], *, persist_dir: Path | None = None,
               yuno_kw: dict[str, Any] | None = None) -> GObj:
    """A yuno with a C_ECHO default service and one C_TCP_S child per entry.

    ``listeners`` maps a listener (service) name to its kw. Must be called with
    the loop running: listeners start listening at once.
    """
    register_c_yuno()
    register_c_tcp_s()
    register_c_echo()
    if persist_dir is not None:
        kernel.persist = PersistStore(str(persist_dir))
    kw = {"yuno_role": "test", "timeout_cert_check": 0}
    kw.update(yuno_kw or {})
    yuno = gobj_create_yuno("t", C_YUNO, kw)
    gobj_create_tree(yuno, {
        "name": "echo", "gclass": "C_ECHO", "default_service": True, "autostart": True,
        "children": [{"name": name, "gclass": "C_TCP_S", "as_service": True, "kw": lkw}
                     for name, lkw in listeners.items()]})
    run_services(yuno)
    return yuno


def tls_listener(certs: Certs, library: str = "openssl", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"url": "tcps://127.0.0.1:0", "crypto": certs.crypto(library)}
    out.update(kw)
    return out


def port_of(name: str) -> int:
    listener = gobj_find_gobj(name)
    assert listener is not None and listener.running, f"{name} is not running"
    port = gobj_read_attr(listener, "lPort")
    assert port > 0
    return port


def command(name: str, line: str) -> dict[str, Any]:
    gobj = gobj_find_gobj(name)
    assert gobj is not None
    answer = gobj_command(gobj, line, {}, None)
    assert answer is not None
    return answer


# Clients

class Client:
    """One TLS (or plain) client connection on loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def peer_der(self) -> bytes:
        return self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

    @property
    def serial(self) -> str:
        return serial_hex(x509.load_der_x509_certificate(self.peer_der).serial_number)

    async def echo(self, data: bytes) -> bytes:
        self.writer.write(data)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(len(data)), 10)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass


async def connect(port: int, ctx: ssl.SSLContext | None, hostname: str = "localhost",
                  shutdown_timeout: float = 0.25) -> Client:
    # A short shutdown timeout: a client that closes gives up waiting for the
    # server's close_notify after this long (see test_client_close_notify_is_answered).
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=hostname if ctx else None,
        ssl_shutdown_timeout=shutdown_timeout if ctx else None), 10)
    return Client(reader, writer)


async def served_serial(port: int, ctx: ssl.SSLContext) -> str:
    """The serial a brand-new client is served, after one echo proves the session."""
    client = await connect(port, ctx)
    try:
        assert await client.echo(b"ping") == b"ping"
        return client.serial
    finally:
        await client.close()


async def settle(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def stat(name: str, attr: str) -> Any:
    listener = gobj_find_gobj(name)
    assert listener is not None
    return gobj_read_attr(listener, attr)


# The guide's five tests, at the listener

@pytest.mark.parametrize("library", LIBRARIES)
def test_reload_a_to_b_then_refused_reload_keeps_b(certs: Certs, library: str) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs, library)})
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        assert await served_serial(port, ctx) == serial_of(certs.a)

        certs.install(certs.b)
        answer = command("echo_tls", "reload-certs")
        assert answer["result"] == 0, answer
        assert answer["data"]["old_serial"] == serial_of(certs.a)
        assert answer["data"]["new_serial"] == serial_of(certs.b)
        assert await served_serial(port, ctx) == serial_of(certs.b)

        certs.key_path.unlink()
        answer = command("echo_tls", "reload-certs")
        assert answer["result"] == -1
        assert str(certs.key_path) in answer["comment"]
        assert "no such file" in answer["comment"]
        assert await served_serial(port, ctx) == serial_of(certs.b)
        assert (stat("echo_tls", "reloads"), stat("echo_tls", "reload_failures")) == (1, 1)

    run(body)


def _view_cert(files: CertFiles, library: str = "openssl") -> dict[str, Any]:
    """Start a listener on ``files`` and answer its view-cert."""
    crypto = files.crypto(library=library)

    async def body() -> dict[str, Any]:
        start_yuno({"echo_tls": {"url": "tcps://127.0.0.1:0", "crypto": crypto}})
        answer = command("echo_tls", "view-cert")
        assert answer["result"] == 0, answer
        return answer["data"]

    return run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_view_cert_one_day_left(tmp_path: Path, library: str) -> None:
    root = make_ca(tmp_path, "root")
    data = _view_cert(issue(root, tmp_path, "d1", days=1), library)
    assert data["days_remaining"] == 0
    assert 0 < data["not_after"] - time.time() <= 26 * 3600
    assert data["url"].startswith("tcps://127.0.0.1:") and data["library"] == library


@pytest.mark.parametrize("library", LIBRARIES)
def test_view_cert_365_days(tmp_path: Path, library: str) -> None:
    root = make_ca(tmp_path, "root")
    data = _view_cert(issue(root, tmp_path, "d365", days=365, key_type="rsa"), library)
    assert data["days_remaining"] >= 364
    assert (data["key_type"], data["key_size"]) == ("RSA", 2048)


@pytest.mark.parametrize("library", LIBRARIES)
def test_view_cert_self_signed_subject_is_issuer(tmp_path: Path, library: str) -> None:
    data = _view_cert(self_signed(tmp_path, "self", cn="self.test"), library)
    assert data["subject"] == data["issuer"] == "CN=self.test,O=Yuneta-Py tests"


@pytest.mark.parametrize("library", LIBRARIES)
def test_view_cert_serial_is_upper_hex(tmp_path: Path, library: str) -> None:
    root = make_ca(tmp_path, "root")
    files = issue(root, tmp_path, "ser", serial=0xABCDEF0123)
    data = _view_cert(files, library)
    assert data["serial"] == "ABCDEF0123" == serial_of(files)
    fp = data["fingerprint"].split(":")
    assert len(fp) == 32 and all(o == o.upper() for o in fp)


@pytest.mark.parametrize("library", LIBRARIES)
def test_expired_cert_starts_and_reports_no_days_left(tmp_path: Path, library: str) -> None:
    root = make_ca(tmp_path, "root")
    past = datetime.now(timezone.utc) - timedelta(days=30)
    files = issue(root, tmp_path, "old", not_before=past, days=10)
    with capture_logs("warning") as records:
        data = _view_cert(files, library)
    assert data["days_remaining"] <= 0 and data["not_after"] < time.time()
    assert "tcp_s.tls.expired_at_start" in [r["msgid"] for r in records]


@pytest.mark.parametrize("library", LIBRARIES)
def test_1000_reloads_leave_no_growth(certs: Certs, library: str) -> None:
    chain = {k: f.fullchain.read_bytes() for k, f in (("a", certs.a), ("b", certs.b))}
    keys = {k: f.key.read_bytes() for k, f in (("a", certs.a), ("b", certs.b))}

    def reload_to(which: str) -> None:
        certs.install(chain=chain[which], key=keys[which])
        answer = command("echo_tls", "reload-certs")
        assert answer["result"] == 0 and answer["data"]["changed"], answer

    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs, library)})
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        assert await served_serial(port, ctx) == serial_of(certs.a)
        await settle(lambda: stat("echo_tls", "connxs") == 0)
        for i in range(20):  # warm caches before measuring
            reload_to("ba"[i % 2])
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for i in range(1000):
                reload_to("ba"[i % 2])
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = reload_growth(before, after)
        assert growth < 64 * 1024, f"grew {growth} bytes over 1000 reloads"
        view = command("echo_tls", "view-cert")["data"]
        assert view["live_contexts"] == 1 and view["serial"] == serial_of(certs.a)
        assert stat("echo_tls", "connxs") == 0 and stat("echo_tls", "reloads") == 1020
        assert await served_serial(port, ctx) == serial_of(certs.a)

    run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_reload_with_a_live_session_keeps_it(certs: Certs, library: str) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs, library)})
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        live = await connect(port, ctx)
        assert await live.echo(b"before") == b"before"

        certs.install(certs.b)
        assert command("echo_tls", "reload-certs")["result"] == 0
        assert await live.echo(b"after the reload") == b"after the reload"
        assert live.serial == serial_of(certs.a)
        assert await served_serial(port, ctx) == serial_of(certs.b)
        # The live session pins A; B is current.
        gc.collect()
        assert command("echo_tls", "view-cert")["data"]["live_contexts"] == 2

        await live.close()
        await settle(lambda: stat("echo_tls", "connxs") == 0)
        gc.collect()
        assert command("echo_tls", "view-cert")["data"]["live_contexts"] == 1

    run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_50_reloads_with_one_live_session(certs: Certs, library: str) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs, library)})
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        live = await connect(port, ctx)
        a_der = live.peer_der
        for i in range(50):
            files = certs.b if i % 2 == 0 else certs.c
            certs.install(files)
            assert command("echo_tls", "reload-certs")["result"] == 0
            msg = f"message {i}".encode()
            assert await live.echo(msg) == msg
            assert await served_serial(port, ctx) == serial_of(files)
        assert live.peer_der == a_der == certs.a.leaf.public_bytes(Encoding.DER)
        assert stat("echo_tls", "reloads") == 50 and stat("echo_tls", "connxs") == 1
        await live.close()

    run(body)


@pytest.mark.parametrize("library", ["openssl", "mbedtls"])
def test_client_close_notify_is_answered(certs: Certs, library: str) -> None:
    async def body() -> float:
        start_yuno({"echo_tls": tls_listener(certs, library)})
        client = await connect(port_of("echo_tls"), certs.client_ctx(), shutdown_timeout=5)
        assert await client.echo(b"bye") == b"bye"
        t0 = time.monotonic()
        client.writer.close()
        await client.writer.wait_closed()  # raises TimeoutError if never answered
        took = time.monotonic() - t0
        await settle(lambda: stat("echo_tls", "connxs") == 0)
        return took

    assert run(body) < 1.0


# Refusals at the listener: the answer names the file and the cause, and a new
# client is still served the old certificate.

def _break_missing(c: Certs, tmp: Path) -> list[str]:
    c.key_path.unlink()
    return [str(c.key_path), "no such file"]


def _break_empty(c: Certs, tmp: Path) -> list[str]:
    c.install(chain=b"\n")
    return [str(c.cert_path), "the file is empty"]


def _break_truncated(c: Certs, tmp: Path) -> list[str]:
    data = c.b.fullchain.read_bytes()
    c.install(chain=data[: len(data) // 2], key=c.b.key.read_bytes())
    return [str(c.cert_path), "truncated PEM"]


def _break_key_mismatch(c: Certs, tmp: Path) -> list[str]:
    c.install(chain=c.b.fullchain.read_bytes())  # B's chain, A's key still there
    return [str(c.key_path), "key does not match the certificate", str(c.cert_path)]


def _break_chain_order(c: Certs, tmp: Path) -> list[str]:
    c.install(c.b, chain=pem(c.inter.cert, c.b.leaf))
    return [str(c.cert_path), "chain out of order"]


def _break_expired(c: Certs, tmp: Path) -> list[str]:
    past = datetime.now(timezone.utc) - timedelta(days=30)
    c.install(issue(c.inter, tmp, "old", not_before=past, days=10))
    return [str(c.cert_path), "certificate expired on",
            (past + timedelta(days=10)).strftime("%Y-%m-%d")]


def _break_not_yet_valid(c: Certs, tmp: Path) -> list[str]:
    later = datetime.now(timezone.utc) + timedelta(days=3)
    c.install(issue(c.inter, tmp, "later", not_before=later))
    return [str(c.cert_path), "not yet valid", later.strftime("%Y-%m-%d")]


def _break_encrypted_no_pass(c: Certs, tmp: Path) -> list[str]:
    c.install(issue(c.inter, tmp, "enc", password=b"s3cret"))
    return [str(c.key_path), "encrypted", "ssl_key_password is not set"]


def _break_wrong_pass(c: Certs, tmp: Path) -> list[str]:
    # The listener was started with ssl_key_password "wrong" (harmless on A's
    # plain key); the renewed key is encrypted with another one.
    c.install(issue(c.inter, tmp, "enc", password=b"s3cret"))
    return [str(c.key_path), "wrong passphrase"]


def _break_rsa_with_ecdsa_ciphers(c: Certs, tmp: Path) -> list[str]:
    # ssl_ciphers offers ECDSA suites only; a renewal switched to an RSA key.
    c.install(issue(c.inter, tmp, "rsa", key_type="rsa"))
    return ["ssl_ciphers", "RSA", str(c.key_path)]


def _break_dsa(c: Certs, tmp: Path) -> list[str]:
    c.install(issue(c.inter, tmp, "dsa", key_type="dsa"))
    return [str(c.key_path), "DSA keys cannot serve"]


REFUSALS: dict[str, tuple[Callable[[Certs, Path], list[str]], dict[str, Any]]] = {
    "missing_file": (_break_missing, {}),
    "empty_file": (_break_empty, {}),
    "truncated_pem": (_break_truncated, {}),
    "key_not_matching": (_break_key_mismatch, {}),
    "chain_out_of_order": (_break_chain_order, {}),
    "expired_leaf": (_break_expired, {}),
    "not_yet_valid_leaf": (_break_not_yet_valid, {}),
    "encrypted_key_without_passphrase": (_break_encrypted_no_pass, {}),
    "encrypted_key_wrong_passphrase": (_break_wrong_pass, {"ssl_key_password": "wrong"}),
    "rsa_key_with_ecdsa_only_ciphers": (_break_rsa_with_ecdsa_ciphers, {"ssl_ciphers": {
        # Each library spells its suites its own way.
        "openssl": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "mbedtls": "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"}}),
    "dsa_key": (_break_dsa, {}),
}

_REFUSAL_PARAMS = [
    pytest.param(case, library, id=f"{case}-{library}")
    for case in REFUSALS for library in LIBRARIES]


@pytest.mark.parametrize("case,library", _REFUSAL_PARAMS)
def test_refused_reload_names_file_and_cause_and_keeps_serving(
        certs: Certs, tmp_path: Path, case: str, library: str) -> None:
    breaker, by_library = REFUSALS[case]
    extra = {k: v[library] if isinstance(v, dict) else v for k, v in by_library.items()}

    async def body() -> None:
        with capture_logs("error") as records:
            start_yuno({"echo_tls": {"url": "tcps://127.0.0.1:0",
                                     "crypto": certs.crypto(library, **extra)}})
            port, ctx = port_of("echo_tls"), certs.client_ctx()
            live = await connect(port, ctx)
            needles = breaker(certs, tmp_path)
            answer = command("echo_tls", "reload-certs")
        assert answer["result"] == -1, answer
        for needle in needles:
            assert needle in answer["comment"], (needle, answer["comment"])
        assert "the previous certificate is still served" in answer["comment"]
        failed = [r for r in records if r["msgid"] == "tls.reload.failed"]
        assert len(failed) == 1 and failed[0]["error"] in answer["comment"]
        assert [r["msgid"] for r in records] == ["tls.reload.failed"]

        assert await served_serial(port, ctx) == serial_of(certs.a)
        assert await live.echo(b"still here") == b"still here"
        view = command("echo_tls", "view-cert")["data"]
        assert view["serial"] == serial_of(certs.a)
        assert stat("echo_tls", "reload_failures") == 1 and stat("echo_tls", "reloads") == 0
        await live.close()

    run(body)


def test_refused_reload_of_unreadable_file(certs: Certs) -> None:
    """A renewed key the yuno's uid may not read. As root (who reads any file)
    the whole scenario runs in a forked child that dropped to uid/gid 65534."""
    if os.geteuid() != 0:
        answer, before, after = _unreadable_scenario(certs, _pair(certs.b))
        key_path = certs.key_path
    else:
        answer, before, after, key_path = _in_child_as_nobody(certs)
    assert answer["result"] == -1, answer
    assert str(key_path) in answer["comment"]
    assert "permission denied reading the file as uid" in answer["comment"]
    assert before == after == serial_of(certs.a)


def _pair(files: CertFiles) -> tuple[bytes, bytes]:
    return files.fullchain.read_bytes(), files.key.read_bytes()


def _unreadable_scenario(certs: Certs, renewal: tuple[bytes, bytes]
                         ) -> tuple[dict[str, Any], str, str]:
    async def body() -> tuple[dict[str, Any], str, str]:
        start_yuno({"echo_tls": tls_listener(certs)})
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        before = await served_serial(port, ctx)
        certs.install(chain=renewal[0], key=renewal[1])
        certs.key_path.chmod(0o000)
        answer = command("echo_tls", "reload-certs")
        return answer, before, await served_serial(port, ctx)

    return run(body)


def _in_child_as_nobody(certs: Certs) -> tuple[dict[str, Any], str, str, Path]:
    # The child's files must be reachable by uid 65534: a fresh world-traversable
    # directory (the pytest tmp_path is 0700) holding copies owned by that uid.
    shared = Path(tempfile.mkdtemp(prefix="ytls-nobody-"))
    try:
        shared.chmod(0o755)
        (shared / "live").mkdir()
        staged = Certs.__new__(Certs)
        staged.__dict__.update(certs.__dict__)
        staged.cert_path = shared / "live" / "server.crt"
        staged.key_path = shared / "live" / "server.key"
        staged.root = CA(certs.root.name, certs.root.key, certs.root.cert,
                         Path(shutil.copy(certs.root.cert_path, shared / "root-ca.pem")))
        staged.install(certs.a)
        for path in [shared, *shared.rglob("*")]:
            os.chown(path, 65534, 65534)

        # The interpreter's own files may be out of uid 65534's reach: load
        # what the scenario imports lazily while still root.
        import encodings.idna  # noqa: F401
        import secrets  # noqa: F401

        renewal = _pair(certs.b)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reports through the pipe and never returns into pytest
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                gobj_end()
                out = _unreadable_scenario(staged, renewal)
                os.write(w, json.dumps(out).encode())
            except BaseException as exc:
                import traceback
                os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            got = json.loads(pipe.read().decode())
        os.waitpid(pid, 0)
        assert isinstance(got, list), got
        return got[0], got[1], got[2], staged.key_path
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# Writing crypto through the yuno's write-attr

def _write_crypto_line(crypto: dict[str, Any]) -> str:
    return f"write-attr gobj=echo_tls attribute=crypto value='{json.dumps(crypto)}'"


def test_write_attr_crypto_reloads_and_a_bad_one_is_refused(certs: Certs, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    stored = data_dir / "C_TCP_S-echo_tls-persistent-attrs.json"

    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs)}, persist_dir=data_dir)
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        live = await connect(port, ctx)

        good = certs.b.crypto(library="openssl")
        answer = command("__yuno__", _write_crypto_line(good))
        assert answer["result"] == 0, answer
        assert answer["data"]["crypto"] == good
        assert await served_serial(port, ctx) == serial_of(certs.b)
        assert json.loads(stored.read_text())["crypto"] == good

        gone = str(tmp_path / "gone.key")
        bad = certs.c.crypto(library="openssl", ssl_certificate_key=gone)
        answer = command("__yuno__", _write_crypto_line(bad))
        assert answer["result"] == -1
        assert gone in answer["comment"] and "no such file" in answer["comment"]
        assert "crypto not written" in answer["comment"]
        assert stat("echo_tls", "crypto") == good
        assert json.loads(stored.read_text())["crypto"] == good
        assert await served_serial(port, ctx) == serial_of(certs.b)
        assert await live.echo(b"A still") == b"A still" and live.serial == serial_of(certs.a)

        # crypto is an object: a JSON string is refused before any reload.
        answer = command("__yuno__", "write-attr gobj=echo_tls attribute=crypto value='\"x\"'")
        assert answer["result"] == -1 and "expected dict" in answer["comment"]
        assert stat("echo_tls", "crypto") == good
        assert stat("echo_tls", "reload_failures") == 1
        await live.close()

    run(body)


def test_reload_to_the_same_files_is_a_noop(certs: Certs) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs)})
        with capture_logs("info") as records:
            answer = command("echo_tls", "reload-certs")
        assert answer["result"] == 0
        assert "unchanged" in answer["comment"]
        assert answer["data"] == {"changed": False, "serial": serial_of(certs.a)}
        assert [r["msgid"] for r in records] == ["tls.reload.unchanged"]
        assert stat("echo_tls", "reloads") == 0
        assert command("echo_tls", "view-cert")["data"]["live_contexts"] == 1

    run(body)


# Yuno-level commands across listeners

def test_yuno_reload_certs_reports_each_listener(certs: Certs, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Certs(tmp_path / "other")

    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs), "other_tls": tls_listener(other)})
        certs.install(certs.b)
        other.install(chain=b"")  # a renewal that copied an empty chain
        answer = command("__yuno__", "reload-certs")
        assert answer["result"] == -1
        assert answer["comment"].startswith("test^t: reloaded 1 TLS listener(s), 1 failed: ")
        assert str(other.cert_path) in answer["comment"]
        data = answer["data"]
        assert (data["reloaded"], data["failed"]) == (1, 1)
        details = {d["gobj"].rsplit("`", 1)[1]: d for d in data["details"]}
        assert set(details) == {"C_TCP_S^echo_tls", "C_TCP_S^other_tls"}
        ok, bad = details["C_TCP_S^echo_tls"], details["C_TCP_S^other_tls"]
        assert ok["result"] == 0 and ok["data"]["new_serial"] == serial_of(certs.b)
        assert bad["result"] == -1 and "the file is empty" in bad["comment"]
        assert bad["data"] is None

        assert await served_serial(port_of("echo_tls"), certs.client_ctx()) == serial_of(certs.b)
        assert await served_serial(port_of("other_tls"), other.client_ctx()) == \
            serial_of(other.a)

        # gobj= narrows the command to one listener.
        answer = command("__yuno__", "reload-certs gobj=echo_tls")
        assert answer["result"] == 0 and answer["data"]["details"][0]["data"]["changed"] is False
        assert "reloaded 1 TLS listener(s), 0 failed" in answer["comment"]

    run(body)


def test_cert_expiry_status_gives_min_days_remaining(certs: Certs, tmp_path: Path) -> None:
    soon = issue(certs.inter, tmp_path, "soon", days=5)
    later = issue(certs.inter, tmp_path, "later", days=30)

    async def body() -> None:
        start_yuno({"soon_tls": {"url": "tcps://127.0.0.1:0", "crypto": soon.crypto()},
                    "later_tls": {"url": "tcps://127.0.0.1:0", "crypto": later.crypto()},
                    "plain": {"url": "tcp://127.0.0.1:0"}})
        answer = command("__yuno__", "cert-expiry-status")
        assert answer["result"] == 0, answer
        data = answer["data"]
        assert data["listeners"] == 2  # the plain listener is not a TLS one
        assert data["min_days_remaining"] == 4  # 5 days minus the minute of backdating
        assert (data["warn_threshold"], data["critical_threshold"]) == (7, 2)
        by_name = {d["gobj"].rsplit("^", 1)[1]: d for d in data["details"]}
        assert by_name["soon_tls"]["serial"] == serial_of(soon)
        assert by_name["later_tls"]["days_remaining"] == 29
        one = command("__yuno__", "cert-expiry-status gobj=later_tls")["data"]
        assert one["listeners"] == 1 and one["min_days_remaining"] == 29

    run(body)


# Connection limits and deadlines

def test_silent_client_is_dropped_after_timeout_handshake(certs: Certs) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs, clisrv_kw={"timeout_handshake": 300})})
        port = port_of("echo_tls")
        with capture_logs("info") as records:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await settle(lambda: stat("echo_tls", "connxs") == 1)
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed by the server
            waited = time.monotonic() - t0
            writer.close()
        assert 0.2 <= waited < 2.0, waited
        assert "tcp.tls.handshake_timeout" in [r["msgid"] for r in records]
        await settle(lambda: stat("echo_tls", "connxs") == 0)
        # A client that does handshake is served as usual.
        assert await served_serial(port, certs.client_ctx()) == serial_of(certs.a)

    run(body)


def test_max_connections_refuses_the_one_too_many(certs: Certs) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs, max_connections=2)})
        port, ctx = port_of("echo_tls"), certs.client_ctx()
        first, second = await connect(port, ctx), await connect(port, ctx)
        with capture_logs("warning") as records:
            with pytest.raises((OSError, ssl.SSLError, asyncio.IncompleteReadError)):
                extra = await connect(port, ctx)
                await extra.echo(b"x")
        assert [r["msgid"] for r in records] == ["tcp_s.accept.refused"]
        assert records[0]["limit"] == 2
        assert await first.echo(b"1") == b"1" and await second.echo(b"2") == b"2"
        await first.close()
        await settle(lambda: stat("echo_tls", "connxs") == 1)
        assert await served_serial(port, ctx) == serial_of(certs.a)
        assert stat("echo_tls", "tconnxs") == 3  # the refused one was never counted
        await second.close()

    run(body)


def test_plain_tcp_listener_echoes() -> None:
    async def body() -> None:
        start_yuno({"plain": {"url": "tcp://127.0.0.1:0"}})
        client = await connect(port_of("plain"), None)
        payload = os.urandom(100_000)
        assert await client.echo(payload) == payload
        assert stat("plain", "use_ssl") is False
        answer = command("plain", "reload-certs")
        assert answer["result"] == -1 and "not TLS-enabled" in answer["comment"]
        assert command("plain", "view-cert")["result"] == -1
        await client.close()
        await settle(lambda: stat("plain", "connxs") == 0)

    run(body)


def test_big_echo_over_tls(certs: Certs) -> None:
    async def body() -> None:
        start_yuno({"echo_tls": tls_listener(certs)})
        client = await connect(port_of("echo_tls"), certs.client_ctx())
        payload = os.urandom(1_000_000)
        assert await client.echo(payload) == payload
        await client.close()

    run(body)
