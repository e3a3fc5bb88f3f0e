"""The renewal guide's five tests, at the listener level, on every listener and backend.

Each test runs a yuno in this process on its own asyncio loop: C_YUNO at the
root, a C_ECHO default service, and a TLS listener under it, either C_TCP_S
(``tcps://``) or C_UDP_S (``udps://``), on 127.0.0.1 with a port the kernel
picks, serving with OpenSSL or mbed TLS. Real clients talk to it over loopback:
for TCP a stock ``ssl`` client, and for an mbed TLS listener also an mbed TLS
client from ``gobj.ytls``; for UDP a DTLS client (``YDTLS``) of the listener's
library. Mixed pairings (OpenSSL client and mbed TLS server, and the reverse)
have a test of their own.

The five, as the guide lists them: reload A to B then a refused reload that
keeps B; certificate facts for edge cases, the same from every backend; 1000
reloads leave no growth; one reload under a live session; 50 reloads under a
live session, one echo each. Also: the mbed TLS bundle (and the OpenSSL DTLS
one, which is counted the same way) is released exactly when the last session
born with it closes.

The listener reads its certificate from two fixed paths (``live/server.crt``,
``live/server.key``); a renewal replaces the files there with a rename, as the
deploy hook does, and then ``reload-certs`` runs on the listener.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import ssl
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gobj.ytls.material import serial_hex
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gobj import gobj_command, gobj_create_tree, gobj_create_yuno, gobj_end, gobj_find_gobj, \
    gobj_read_attr, kernel
from gobj.entry import run_services
from gobj.log import capture_logs
from gobj.runtime import GObj
from gobj.ytls import SecureFilter, TLSSessionError, ytls_init
from gobj.ytls.dtls import DTLSSession, YDTLS
from gclasses.c_echo import register_c_echo
from gclasses.c_tcp_s import register_c_tcp_s
from gclasses.c_udp_s import register_c_udp_s
from gclasses.c_yuno import C_YUNO, register_c_yuno

from tests.tls_certs import CA, CertFiles, issue, make_ca, self_signed
from tests.kernel_helpers import reload_growth

LIBRARIES = ("openssl", "mbedtls")
KINDS = {"tcp": ("C_TCP_S", "tcps://127.0.0.1:0"), "udp": ("C_UDP_S", "udps://127.0.0.1:0")}
COMBOS = [pytest.param(kind, lib, id=f"{kind}-{lib}") for kind in KINDS for lib in LIBRARIES]
LISTENER = "lst"


# Certificates: a root, an intermediate, two leaves, and the live paths

class Certs:
    """A throwaway PKI and the two paths a listener is configured with."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root: CA = make_ca(base, "root")
        self.inter = make_ca(base, "inter", parent=self.root)
        self.a = issue(self.inter, base, "a")
        self.b = issue(self.inter, base, "b")
        live = base / "live"
        live.mkdir()
        self.cert_path = live / "server.crt"
        self.key_path = live / "server.key"
        self.install(self.a)

    def install(self, files: CertFiles) -> None:
        """Put a pair at the live paths, each file replaced by a rename."""
        _replace(self.cert_path, files.fullchain.read_bytes())
        _replace(self.key_path, files.key.read_bytes())

    def crypto(self, library: str) -> dict[str, Any]:
        return {"library": library, "ssl_certificate": str(self.cert_path),
                "ssl_certificate_key": str(self.key_path)}


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def serial_of(files: CertFiles) -> str:
    return serial_hex(files.leaf.serial_number)


def fingerprint_of(cert: x509.Certificate) -> str:
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


# The yuno: created and run inside the test's own loop

def run(body: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    """Run ``body`` on a fresh loop; destroy the yuno and close the loop after."""
    loop = asyncio.new_event_loop()
    kernel.loop = loop
    try:
        return loop.run_until_complete(asyncio.wait_for(body(), timeout))
    finally:
        gobj_end()
        loop.run_until_complete(asyncio.sleep(0.05))   # let closed transports finish
        loop.close()


async def start_yuno(listeners: dict[str, tuple[str, dict[str, Any]]],
                     yuno_kw: dict[str, Any] | None = None,
                     parent: dict[str, Any] | None = None) -> GObj:
    """A yuno whose default service (C_ECHO unless ``parent`` says otherwise)
    has one listener per entry: name -> (gclass, kw). Returns once every
    listener's socket is being served by the loop."""
    register_c_yuno()
    register_c_tcp_s()
    register_c_udp_s()
    register_c_echo()
    kw = {"yuno_role": "test", "timeout_cert_check": 0, **(yuno_kw or {})}
    yuno = gobj_create_yuno("t", C_YUNO, kw)
    tree = parent or {"name": "echo", "gclass": "C_ECHO"}
    gobj_create_tree(yuno, {
        **tree, "default_service": True, "autostart": True,
        "children": [{"name": name, "gclass": gclass, "as_service": True, "kw": lkw}
                     for name, (gclass, lkw) in listeners.items()]})
    run_services(yuno)
    for name in listeners:
        listener = gobj_find_gobj(name)
        assert listener is not None and listener.running, f"{name} did not start"
        await settle(lambda: _serving(listener))
    return yuno


def _serving(listener: GObj) -> bool:
    priv = listener.priv
    return getattr(priv, "transport", None) is not None or getattr(priv, "server", None) \
        is not None


def listener_kw(kind: str, library: str, certs: Certs, **extra: Any) -> tuple[str, dict[str, Any]]:
    gclass, url = KINDS[kind]
    return gclass, {"url": url, "crypto": certs.crypto(library), **extra}


async def start_listener(kind: str, library: str, certs: Certs, **extra: Any) -> GObj:
    await start_yuno({LISTENER: listener_kw(kind, library, certs, **extra)})
    listener = gobj_find_gobj(LISTENER)
    assert listener is not None
    return listener


def command(gobj: GObj, line: str) -> dict[str, Any]:
    answer = gobj_command(gobj, line, {}, None)
    assert answer is not None
    return answer


def view_cert(listener: GObj) -> dict[str, Any]:
    answer = command(listener, "view-cert")
    assert answer["result"] == 0, answer["comment"]
    return answer["data"]


def ytls_of(listener: GObj) -> Any:
    return listener.priv.ytls


async def settle(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# Clients: each opens with a finished handshake, echoes, tells the peer's
# certificate fingerprint, and closes with a close_notify.

class StdlibClient:
    """A stock ``ssl`` (OpenSSL) TLS client."""

    def __init__(self, ca: Path) -> None:
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=self.ctx, server_hostname="localhost",
            ssl_shutdown_timeout=0.25), 10)

    @property
    def peer_fingerprint(self) -> str:
        assert self.writer is not None
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return fingerprint_of(x509.load_der_x509_certificate(der))

    async def echo(self, data: bytes) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.writer.write(data)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(len(data)), 10)

    async def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass
        self.writer = None


class MbedStreamClient:
    """An mbed TLS client: a ``gobj.ytls`` secure filter pumped over a plain socket."""

    def __init__(self, ca: Path) -> None:
        self.ytls = ytls_init({"library": "mbedtls", "ssl_trusted_certificate": str(ca),
                               "ssl_server_name": "localhost"}, server=False)
        self.filter: SecureFilter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.clear = bytearray()

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 10)
        self.filter = self.ytls.new_secure_filter()
        self.filter.start()
        self._flush()
        await self._pump(lambda: self.filter is not None and self.filter.handshake_done)

    def _flush(self) -> None:
        assert self.filter is not None and self.writer is not None
        out = self.filter.outgoing()
        if out:
            self.writer.write(out)

    async def _pump(self, until: Callable[[], bool]) -> None:
        assert self.reader is not None and self.filter is not None
        while not until():
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("server closed the connection")
            self.clear += self.filter.incoming(data)
            self._flush()

    @property
    def peer_fingerprint(self) -> str:
        assert self.filter is not None
        return self.filter.info()["peer_fingerprint"]

    async def echo(self, data: bytes) -> bytes:
        assert self.filter is not None
        self.clear.clear()
        self.filter.send(data)
        self._flush()
        await self._pump(lambda: len(self.clear) >= len(data))
        return bytes(self.clear)

    async def close(self) -> None:
        if self.filter is None or self.writer is None:
            return
        self.filter.close_notify()
        self._flush()
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (asyncio.TimeoutError, OSError):
            pass
        self.filter.free()
        self.filter = None
        self.ytls.cleanup()


class _DatagramProto(asyncio.DatagramProtocol):
    def __init__(self, owner: DtlsClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.on_datagram(data)


class DtlsClient:
    """A DTLS client (``YDTLS``) on its own connected UDP socket.

    ``drive_timer=False`` leaves retransmission to the server alone;
    ``drop_after_hvr`` seconds: datagrams arriving that long after the
    HelloVerifyRequest are dropped, so the server's first flight is lost.
    """

    def __init__(self, library: str, ca: Path, *, mtu: int = 1400, drive_timer: bool = True,
                 drop_after_hvr: float = 0.0) -> None:
        self.ydtls = YDTLS({"library": library, "ssl_trusted_certificate": str(ca),
                            "ssl_server_name": "localhost"}, server=False, mtu=mtu)
        self.session: DTLSSession | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []
        self.error: BaseException | None = None
        self.drive_timer = drive_timer
        self.drop_after_hvr = drop_after_hvr
        self.datagrams_in = 0
        self.dropped = 0
        self._drop_until = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def open(self, port: int, *, wait: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProto(self), remote_addr=("127.0.0.1", port))
        self.session = self.ydtls.new_session(("127.0.0.1", port))
        self._flush()
        if wait:
            await self.until(lambda: self.handshake_done)

    @property
    def handshake_done(self) -> bool:
        return self.session is not None and self.session.handshake_done

    @property
    def local_addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")

    def on_datagram(self, data: bytes) -> None:
        if self.session is None or self.error is not None:
            return
        self.datagrams_in += 1
        now = time.monotonic()
        if self.datagrams_in == 1 and self.drop_after_hvr:
            self._drop_until = now + self.drop_after_hvr
        elif now < self._drop_until:
            self.dropped += 1
            return
        try:
            self.received.extend(self.session.incoming(data))
        except TLSSessionError as exc:
            self.error = exc
            return
        self._flush()

    def _flush(self) -> None:
        assert self.session is not None and self.transport is not None
        for datagram in self.session.outgoing():
            self.transport.sendto(datagram)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wait = self.session.next_timeout() if self.drive_timer else None
        if wait is not None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.session is None or self.session.bundle is None:
            return
        try:
            self.session.handle_timeout()
        except TLSSessionError as exc:
            self.error = exc
            return
        self._flush()

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        def done() -> bool:
            if self.error is not None:
                raise AssertionError(f"DTLS client failed: {self.error}")
            return cond()
        await settle(done, timeout)

    @property
    def peer_fingerprint(self) -> str:
        assert self.session is not None
        return self.session.info()["peer_fingerprint"]

    def send(self, data: bytes) -> None:
        assert self.session is not None
        self.session.send(data)
        self._flush()

    async def echo(self, data: bytes) -> bytes:
        self.received.clear()
        self.send(data)
        await self.until(lambda: bool(self.received))
        return self.received.pop(0)

    async def close(self, *, notify: bool = True) -> None:
        if self.session is None:
            return
        if notify and self.session.handshake_done:
            self.session.close_notify()
            for datagram in self.session.outgoing():
                assert self.transport is not None
                self.transport.sendto(datagram)
        if self._timer is not None:
            self._timer.cancel()
        self.session.free()
        self.session = None
        if self.transport is not None:
            self.transport.close()
        self.ydtls.cleanup()


Client = StdlibClient | MbedStreamClient | DtlsClient


def make_client(kind: str, client_lib: str, certs: Certs) -> Client:
    if kind == "udp":
        return DtlsClient(client_lib, certs.root.cert_path)
    if client_lib == "mbedtls":
        return MbedStreamClient(certs.root.cert_path)
    return StdlibClient(certs.root.cert_path)


def client_libs(kind: str, library: str) -> list[str]:
    """Clients each combination is tried with: a stock ssl client for TCP (plus an
    mbed TLS one for an mbed TLS listener), a DTLS client of the same library for UDP."""
    if kind == "udp":
        return [library]
    return ["openssl", "mbedtls"] if library == "mbedtls" else ["openssl"]


async def connect(kind: str, client_lib: str, certs: Certs, port: int) -> Client:
    client = make_client(kind, client_lib, certs)
    await client.open(port)
    return client


async def served_fingerprint(kind: str, client_lib: str, certs: Certs, port: int) -> str:
    """The certificate a brand-new client is served, after one echo proves the session."""
    client = await connect(kind, client_lib, certs, port)
    try:
        assert await client.echo(b"ping") == b"ping"
        return client.peer_fingerprint
    finally:
        await client.close()


def live_sessions(listener: GObj) -> int:
    return gobj_read_attr(listener, "connxs" if listener.gclass.name == "C_TCP_S" else "peers")


def server_session_fingerprint(listener: GObj) -> str:
    """Fingerprint of the certificate the listener's only live session serves."""
    if listener.gclass.name == "C_UDP_S":
        (peer,) = listener.priv.peers.values()
        return peer.session.info()["cert_fingerprint"]
    (conn,) = [c for c in listener.children if c.priv.filter is not None]
    return conn.priv.filter.info()["cert_fingerprint"]


def bundle_of(listener: GObj) -> Any:
    """The counted bundle new sessions are born with (None for stdlib OpenSSL TCP,
    whose contexts are watched through weak references instead)."""
    ytls = ytls_of(listener)
    return ytls.bundle if hasattr(ytls, "bundle") else None


# 1. Reload A to B, then a refused reload keeps B

@pytest.mark.parametrize("kind, library", COMBOS)
def test_reload_a_to_b_then_failed_reload_keeps_b(kind: str, library: str,
                                                  certs: Certs) -> None:
    async def body() -> None:
        listener = await start_listener(kind, library, certs)
        port = gobj_read_attr(listener, "lPort")
        fp_a, fp_b = fingerprint_of(certs.a.leaf), fingerprint_of(certs.b.leaf)
        for client_lib in client_libs(kind, library):
            assert await served_fingerprint(kind, client_lib, certs, port) == fp_a

        certs.install(certs.b)
        with capture_logs() as records:
            answer = command(listener, "reload-certs")
        assert answer["result"] == 0, answer["comment"]
        assert answer["data"]["new_serial"] == serial_of(certs.b)
        assert view_cert(listener)["serial"] == serial_of(certs.b)
        for client_lib in client_libs(kind, library):
            assert await served_fingerprint(kind, client_lib, certs, port) == fp_b

        os.remove(certs.key_path)
        with capture_logs() as more:
            answer = command(listener, "reload-certs")
        records += more
        assert answer["result"] == -1
        assert str(certs.key_path) in answer["comment"], answer["comment"]
        assert [r["msgid"] for r in records if r["msgid"].startswith("tls.reload")] == \
            ["tls.reload.done", "tls.reload.failed"]
        (failed,) = [r for r in records if r["msgid"] == "tls.reload.failed"]
        assert failed["path"] == str(certs.key_path) and failed["field"] == "ssl_certificate_key"
        assert view_cert(listener)["serial"] == serial_of(certs.b)
        for client_lib in client_libs(kind, library):
            assert await served_fingerprint(kind, client_lib, certs, port) == fp_b
        assert gobj_read_attr(listener, "reloads") == 1
        assert gobj_read_attr(listener, "reload_failures") == 1

    run(body)


# 2. Certificate facts for edge cases, the same whatever the listener and library

def _edge_cases(base: Path, root: CA) -> dict[str, CertFiles]:
    now = datetime.now(timezone.utc)
    return {
        "one_day": issue(root, base, "one-day", days=1),
        "one_year": issue(root, base, "one-year", days=365),
        "self_signed": self_signed(base, "self", cn="self.example"),
        "serial": issue(root, base, "serial", serial=0x0ABCDEF0123456789ABCDEF),
        "expired": issue(root, base, "expired", not_before=now - timedelta(days=10), days=5),
    }


def _expected_info(files: CertFiles) -> dict[str, Any]:
    leaf = files.leaf
    return {"subject": leaf.subject.rfc4514_string(), "issuer": leaf.issuer.rfc4514_string(),
            "serial": serial_of(files), "fingerprint": fingerprint_of(leaf),
            "not_before": int(leaf.not_valid_before_utc.timestamp()),
            "not_after": int(leaf.not_valid_after_utc.timestamp())}


@pytest.mark.parametrize("kind, library", COMBOS)
def test_cert_info_edge_cases(kind: str, library: str, certs: Certs) -> None:
    cases = _edge_cases(certs.base, certs.root)

    async def body() -> dict[str, dict[str, Any]]:
        gclass, url = KINDS[kind]
        await start_yuno({name: (gclass, {"url": url, "crypto": files.crypto(library=library)})
                          for name, files in cases.items()})
        return {name: view_cert(gobj_find_gobj(name)) for name in cases}

    infos = run(body)
    now = time.time()
    for name, files in cases.items():
        info = infos[name]
        expected = _expected_info(files)
        assert {k: info[k] for k in expected} == expected, name
        assert info["library"] == library
    one_day = infos["one_day"]
    assert one_day["days_remaining"] == 0
    assert 0 < one_day["not_after"] - now <= 26 * 3600
    assert infos["one_year"]["days_remaining"] >= 364
    assert infos["self_signed"]["subject"] == infos["self_signed"]["issuer"]
    serial = infos["serial"]["serial"]
    assert serial == "ABCDEF0123456789ABCDEF" and re.fullmatch(r"[0-9A-F]+", serial)
    assert infos["expired"]["days_remaining"] <= 0    # served all the same: the listener runs


def test_cert_info_identical_on_every_listener_and_library(certs: Certs) -> None:
    """The same files give the same view-cert fields and values on all four."""
    cases = _edge_cases(certs.base, certs.root)
    combos = [(kind, lib) for kind in KINDS for lib in LIBRARIES]

    async def body() -> dict[tuple[str, str, str], dict[str, Any]]:
        listeners = {}
        for case, files in cases.items():
            for kind, lib in combos:
                gclass, url = KINDS[kind]
                listeners[f"{case}-{kind}-{lib}"] = (
                    gclass, {"url": url, "crypto": files.crypto(library=lib)})
        await start_yuno(listeners)
        return {(case, kind, lib): view_cert(gobj_find_gobj(f"{case}-{kind}-{lib}"))
                for case in cases for kind, lib in combos}

    infos = run(body, timeout=60)
    own = {"url", "library"}              # what legitimately differs per listener
    for case in cases:
        first = {k: v for k, v in infos[(case, "tcp", "openssl")].items() if k not in own}
        for kind, lib in combos:
            other = {k: v for k, v in infos[(case, kind, lib)].items() if k not in own}
            assert other == first, (case, kind, lib)


# 3. 1000 reloads, alternating A and B, leave no growth

@pytest.mark.parametrize("kind, library", COMBOS)
def test_1000_reloads_leave_no_growth(kind: str, library: str, certs: Certs) -> None:
    reloads = 1000

    async def body() -> None:
        listener = await start_listener(kind, library, certs)
        pairs = [certs.b, certs.a]
        for i in range(20):                    # warm caches before measuring
            certs.install(pairs[i % 2])
            assert command(listener, "reload-certs")["result"] == 0
        first = bundle_of(listener)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for i in range(reloads):
                certs.install(pairs[i % 2])
                answer = command(listener, "reload-certs")
                assert answer["result"] == 0, answer["comment"]
            del answer
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = reload_growth(before, after)
        assert growth < 128 * 1024, f"grew {growth} bytes over {reloads}"
        assert gobj_read_attr(listener, "reloads") == 20 + reloads
        assert live_sessions(listener) == 0
        assert ytls_of(listener).live_contexts() == 1
        if first is not None:
            assert first.released and first.refcount == 0
            assert bundle_of(listener).refcount == 1

    run(body)


# 4. One reload while a session is live: the session keeps echoing

@pytest.mark.parametrize("kind, library", COMBOS)
def test_reload_while_a_session_is_live(kind: str, library: str, certs: Certs) -> None:
    async def body() -> None:
        listener = await start_listener(kind, library, certs)
        port = gobj_read_attr(listener, "lPort")
        fp_a, fp_b = fingerprint_of(certs.a.leaf), fingerprint_of(certs.b.leaf)
        for client_lib in client_libs(kind, library):
            client = await connect(kind, client_lib, certs, port)
            assert await client.echo(b"before") == b"before"
            born_with = bundle_of(listener)

            certs.install(certs.b)
            answer = command(listener, "reload-certs")
            assert answer["result"] == 0 and answer["data"]["changed"], answer["comment"]
            assert await client.echo(b"after the reload") == b"after the reload"
            assert client.peer_fingerprint == fp_a
            assert server_session_fingerprint(listener) == fp_a
            assert ytls_of(listener).live_contexts() == 2
            assert await served_fingerprint(kind, client_lib, certs, port) == fp_b
            assert await client.echo(b"still") == b"still"

            await client.close()
            await settle(lambda: live_sessions(listener) == 0)
            gc.collect()
            assert ytls_of(listener).live_contexts() == 1
            if born_with is not None:
                assert born_with.released
            certs.install(certs.a)              # back to A for the next client
            assert command(listener, "reload-certs")["result"] == 0

    run(body)


# 5. 50 reloads with one live session, one echo per reload

@pytest.mark.parametrize("kind, library", COMBOS)
def test_50_reloads_with_one_live_session(kind: str, library: str, certs: Certs) -> None:
    async def body() -> None:
        listener = await start_listener(kind, library, certs)
        port = gobj_read_attr(listener, "lPort")
        fp_a = fingerprint_of(certs.a.leaf)
        for client_lib in client_libs(kind, library):
            client = await connect(kind, client_lib, certs, port)
            born_with = bundle_of(listener)
            pairs = [certs.b, certs.a]
            for i in range(50):
                certs.install(pairs[i % 2])
                answer = command(listener, "reload-certs")
                assert answer["result"] == 0 and answer["data"]["changed"], answer["comment"]
                message = f"message {i}".encode()
                assert await client.echo(message) == message
                # Only two contexts live: the session's and the current one.
                assert ytls_of(listener).live_contexts() <= 2
            assert client.peer_fingerprint == fp_a
            assert server_session_fingerprint(listener) == fp_a
            if born_with is not None:
                assert born_with.refcount == 1 and not born_with.released
            await client.close()
            await settle(lambda: live_sessions(listener) == 0)
            if born_with is not None:
                assert born_with.released
            gc.collect()
            assert ytls_of(listener).live_contexts() == 1

    run(body)


# The bundle dies exactly when the last session born with it closes

@pytest.mark.parametrize("kind, library", COMBOS)
def test_old_context_released_when_its_last_session_closes(kind: str, library: str,
                                                           certs: Certs) -> None:
    async def body() -> None:
        listener = await start_listener(kind, library, certs)
        port = gobj_read_attr(listener, "lPort")
        client_lib = client_libs(kind, library)[-1]
        first = await connect(kind, client_lib, certs, port)
        second = await connect(kind, client_lib, certs, port)
        await settle(lambda: live_sessions(listener) == 2)
        bundle_a = bundle_of(listener)
        if bundle_a is not None:
            assert bundle_a.refcount == 3          # the handle and two sessions

        certs.install(certs.b)
        assert command(listener, "reload-certs")["result"] == 0
        assert ytls_of(listener).live_contexts() == 2
        if bundle_a is not None:
            assert bundle_a.refcount == 2 and not bundle_a.released

        await first.close()
        await settle(lambda: live_sessions(listener) == 1)
        gc.collect()
        assert ytls_of(listener).live_contexts() == 2
        assert await second.echo(b"still here") == b"still here"
        if bundle_a is not None:
            assert bundle_a.refcount == 1 and not bundle_a.released

        await second.close()
        await settle(lambda: live_sessions(listener) == 0)
        gc.collect()
        assert ytls_of(listener).live_contexts() == 1
        if bundle_a is not None:
            assert bundle_a.refcount == 0 and bundle_a.released

    run(body)


# Mixed pairings: an OpenSSL client on an mbed TLS listener and the reverse

MIXED = [pytest.param(kind, server_lib, client_lib, id=f"{kind}-{server_lib}-server-"
                      f"{client_lib}-client")
         for kind in KINDS for server_lib, client_lib in (("mbedtls", "openssl"),
                                                          ("openssl", "mbedtls"))]


@pytest.mark.parametrize("kind, server_lib, client_lib", MIXED)
def test_mixed_libraries_interoperate_across_a_reload(kind: str, server_lib: str,
                                                      client_lib: str, certs: Certs) -> None:
    async def body() -> None:
        listener = await start_listener(kind, server_lib, certs)
        port = gobj_read_attr(listener, "lPort")
        client = await connect(kind, client_lib, certs, port)
        assert await client.echo(b"hello") == b"hello"
        assert client.peer_fingerprint == fingerprint_of(certs.a.leaf)

        certs.install(certs.b)
        assert command(listener, "reload-certs")["result"] == 0
        assert await client.echo(b"after") == b"after"
        assert await served_fingerprint(kind, client_lib, certs, port) == \
            fingerprint_of(certs.b.leaf)
        await client.close()

    run(body)
