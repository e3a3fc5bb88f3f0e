"""DTLS 1.2 on both backends: cookie gate, echo over real UDP, reload, retransmission.

The UDP tests run a small select() loop over sockets bound to 127.0.0.1 port 0:
an echo server that admits peers only through ``YDTLS.accept`` and clients
that each own one session. Every server backend meets every client backend.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gobj.ytls import TLSError, TLSSessionError
from gobj.ytls.dtls import CookieSecret, DTLSSession, YDTLS, peer_id, split_datagrams

sys.path.insert(0, str(Path(__file__).parent))
from tls_certs import CA, CertFiles, issue, make_ca  # noqa: E402

LOOPBACK = "127.0.0.1"
LIBRARIES = ("openssl", "mbedtls")
_HANDSHAKE, _HELLO_VERIFY_REQUEST = 22, 3


# Fixtures and helpers

@pytest.fixture
def root(tmp_path: Path) -> CA:
    return make_ca(tmp_path, "root")


@pytest.fixture
def cert_a(tmp_path: Path, root: CA) -> CertFiles:
    return issue(root, tmp_path, "a", cn="localhost")


@pytest.fixture
def cert_b(tmp_path: Path, root: CA) -> CertFiles:
    return issue(root, tmp_path, "b", cn="localhost")


def client_dtls(library: str, root: CA, name: str = "localhost",
                mtu: int = 1400) -> YDTLS:
    return YDTLS({"library": library, "ssl_trusted_certificate": str(root.cert_path),
                  "ssl_server_name": name}, server=False, mtu=mtu)


def is_hello_verify_request(datagram: bytes) -> bool:
    # RFC 6347 4.2.1: a handshake record whose message type is 3.
    return datagram[0] == _HANDSHAKE and datagram[13] == _HELLO_VERIFY_REQUEST


class EchoServer:
    """A DTLS echo service on a UDP socket; peers enter only through accept()."""

    def __init__(self, dtls: YDTLS) -> None:
        self.dtls = dtls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.sessions: dict[Any, DTLSSession] = {}
        self.verify_requests = 0

    def on_datagram(self, data: bytes, addr: Any) -> None:
        session = self.sessions.get(addr)
        if session is None:
            session, replies = self.dtls.accept(addr, data)
            for reply in replies:
                assert is_hello_verify_request(reply) and not self.sessions.get(addr)
                self.verify_requests += 1
                self.sock.sendto(reply, addr)
            if session is None:
                return
            self.sessions[addr] = session
        else:
            for message in session.incoming(data):
                session.send(message)
        self.flush(session)

    def flush(self, session: DTLSSession) -> None:
        for datagram in session.outgoing():
            self.sock.sendto(datagram, session.peer)

    def sessions_list(self) -> list[DTLSSession]:
        return list(self.sessions.values())

    def drop(self, addr: Any) -> None:
        self.sessions.pop(addr).free()

    def close(self) -> None:
        for addr in list(self.sessions):
            self.drop(addr)
        self.sock.close()


class Client:
    """One DTLS client session on its own UDP socket."""

    def __init__(self, dtls: YDTLS, server: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.server = server
        self.session = dtls.new_session(server)
        self.received: list[bytes] = []
        self.flush(self.session)

    def on_datagram(self, data: bytes, addr: Any) -> None:
        self.received += self.session.incoming(data)
        self.flush(self.session)

    def flush(self, session: DTLSSession) -> None:
        for datagram in session.outgoing():
            self.sock.sendto(datagram, self.server)

    def sessions_list(self) -> list[DTLSSession]:
        return [self.session]

    def close(self) -> None:
        self.session.free()
        self.sock.close()


def run(endpoints: list[Any], until: Callable[[], bool], timeout: float = 5.0) -> None:
    """The event loop: read sockets, drive retransmission timers, until ``until()``."""
    deadline = time.monotonic() + timeout
    by_sock = {e.sock: e for e in endpoints}
    while not until():
        assert time.monotonic() < deadline, "loop timed out"
        timers = [t for e in endpoints for s in e.sessions_list()
                  if (t := s.next_timeout()) is not None]
        readable, _, _ = select.select(list(by_sock), [], [], min(timers + [0.05]))
        for sock in readable:
            data, addr = sock.recvfrom(65535)
            by_sock[sock].on_datagram(data, addr)
        for endpoint in endpoints:
            for session in endpoint.sessions_list():
                if session.next_timeout() == 0:
                    session.handle_timeout()
                    endpoint.flush(session)


def echo(server: EchoServer, client: Client, message: bytes) -> None:
    client.received.clear()
    client.session.send(message)
    client.flush(client.session)
    run([server, client], lambda: bool(client.received))
    assert client.received == [message]


def handshake(server: EchoServer, client: Client) -> None:
    run([server, client], lambda: client.session.handshake_done)


# Handshake, cookie exchange and echo over real UDP: every pairing

@pytest.mark.parametrize("client_lib", LIBRARIES)
@pytest.mark.parametrize("server_lib", LIBRARIES)
def test_handshake_with_cookie_exchange_and_echo(
        server_lib: str, client_lib: str, cert_a: CertFiles, root: CA) -> None:
    server = EchoServer(YDTLS(cert_a.crypto(library=server_lib), server=True))
    client = Client(client_dtls(client_lib, root), server.addr)
    try:
        handshake(server, client)
        assert server.verify_requests == 1          # the cookie exchange happened
        echo(server, client, b"ping")
        echo(server, client, b"x" * 1000)
        info = client.session.info()
        assert info["version"] == "DTLSv1.2"
        assert info["peer_fingerprint"] == server.dtls.cert_info()["fingerprint"]
        assert server.dtls.live_sessions() == 1
    finally:
        client.close(), server.close()
    assert server.dtls.live_sessions() == 0 and server.dtls.bundle.refcount == 1


# Reload with live sessions

@pytest.mark.parametrize("library", LIBRARIES)
def test_reload_while_a_session_is_live(
        library: str, cert_a: CertFiles, cert_b: CertFiles, root: CA) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    server = EchoServer(dtls)
    old = Client(client_dtls(library, root), server.addr)
    try:
        handshake(server, old)
        fp_a = dtls.cert_info()["fingerprint"]
        born_with = dtls.bundle
        out = dtls.reload(cert_b.crypto(library=library))
        assert out["changed"] and dtls.live_contexts() == 2
        echo(server, old, b"still here")

        new = Client(client_dtls(library, root), server.addr)
        handshake(server, new)
        fp_b = dtls.cert_info()["fingerprint"]
        assert new.session.info()["peer_fingerprint"] == fp_b != fp_a
        assert old.session.info()["peer_fingerprint"] == fp_a
        echo(server, new, b"fresh")
        echo(server, old, b"old one still works")

        assert born_with.refcount == 1                 # only the old session
        server.drop(old.sock.getsockname())
        assert born_with.released and dtls.live_contexts() == 1
        new.close()
    finally:
        old.session.free(), old.sock.close(), server.close()


@pytest.mark.parametrize("library", LIBRARIES)
def test_50_reloads_with_one_live_session(
        library: str, cert_a: CertFiles, cert_b: CertFiles, root: CA) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    server = EchoServer(dtls)
    client = Client(client_dtls(library, root), server.addr)
    try:
        handshake(server, client)
        for i in range(50):
            files = cert_b if i % 2 == 0 else cert_a
            assert dtls.reload(files.crypto(library=library))["changed"]
            echo(server, client, f"message {i}".encode())
            assert dtls.live_contexts() == 2
    finally:
        client.close(), server.close()
    assert dtls.live_contexts() == 1 and dtls.live_sessions() == 0


@pytest.mark.parametrize("library", LIBRARIES)
def test_failed_reload_keeps_serving(
        library: str, cert_a: CertFiles, cert_b: CertFiles) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    fp = dtls.cert_info()["fingerprint"]
    bad = cert_b.crypto(library=library, ssl_certificate_key=str(cert_a.key))
    with pytest.raises(TLSError) as err:
        dtls.reload(bad)
    assert err.value.field == "ssl_certificate_key"
    assert dtls.cert_info()["fingerprint"] == fp and dtls.live_contexts() == 1
    assert dtls.reload(cert_a.crypto(library=library))["changed"] is False


# The stateless gate

@pytest.mark.parametrize("library", LIBRARIES)
def test_client_that_never_answers_leaves_no_state(
        library: str, cert_a: CertFiles, root: CA) -> None:
    server = EchoServer(YDTLS(cert_a.crypto(library=library), server=True))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((LOOPBACK, 0))
    throwaway = client_dtls(library, root).new_session(server.addr)
    hello = throwaway.outgoing()[0]
    throwaway.free()
    try:
        silent.sendto(hello, server.addr)
        run([server], lambda: server.verify_requests == 1)
        reply = silent.recv(65535)
        assert is_hello_verify_request(reply)
        assert len(reply) < len(hello)              # no amplification
        assert server.sessions == {} and server.dtls.live_sessions() == 0
        assert server.dtls.bundle.refcount == 1
    finally:
        silent.close(), server.close()


@pytest.mark.parametrize("library", LIBRARIES)
def test_spoofed_hellos_from_many_sources_create_nothing(
        library: str, cert_a: CertFiles, root: CA) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    probe = client_dtls(library, root).new_session(("192.0.2.1", 1))
    hello = probe.outgoing()[0]
    probe.free()
    for port in range(1, 201):
        session, replies = dtls.accept(("198.51.100.7", port), hello)
        assert session is None and len(replies) == 1
        assert is_hello_verify_request(replies[0])
    for junk in (b"", b"\x17\xfe\xfd" + b"\x00" * 40, b"x" * 5000):
        assert dtls.accept((LOOPBACK, 9), junk) == (None, [])
    assert dtls.live_sessions() == 0 and dtls.bundle.refcount == 1

    # The one gate that answered them all still admits a real client.
    client = client_dtls(library, root).new_session(("s", 1))
    _, replies = dtls.accept(("c", 2), client.outgoing()[0])
    client.incoming(replies[0])
    server, _ = dtls.accept(("c", 2), client.outgoing()[0])
    assert server is not None and dtls.live_sessions() == 1
    server.free(), client.free()


def test_cookie_secret_keeps_the_previous_key() -> None:
    secret = CookieSecret(interval=10.0)
    peer = peer_id(("127.0.0.1", 4433))
    cookie = secret.mint(peer)
    assert secret.check(peer, cookie)
    assert not secret.check(peer_id(("127.0.0.1", 4434)), cookie)   # bound to the port
    secret.rotate()
    assert secret.check(peer, cookie)            # minted just before the rotation
    secret.rotate()
    assert not secret.check(peer, cookie)        # two rotations later: stale
    assert not secret.tick(time.monotonic())     # interval not yet passed
    assert secret.tick(time.monotonic() + 11.0)


def test_openssl_cookie_survives_one_rotation_not_two(cert_a: CertFiles, root: CA) -> None:
    secret = CookieSecret()
    dtls = YDTLS(cert_a.crypto(library="openssl"), server=True, cookies=secret)
    peer = (LOOPBACK, 5000)

    def second_hello(rotations: int) -> tuple[DTLSSession | None, list[bytes]]:
        client = client_dtls("openssl", root).new_session(peer)
        _, replies = dtls.accept(peer, client.outgoing()[0])
        client.incoming(replies[0])
        for _ in range(rotations):
            secret.rotate()
        result = dtls.accept(peer, client.outgoing()[0])
        client.free()
        return result

    session, _ = second_hello(1)
    assert session is not None
    session.free()
    session, replies = second_hello(2)
    assert session is None and is_hello_verify_request(replies[0])


# Retransmission (RFC 6347 4.2.4), in memory: the caller drives the timers

@pytest.mark.parametrize("library", LIBRARIES)
def test_lost_flight_is_retransmitted(library: str, cert_a: CertFiles, root: CA) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    client = client_dtls(library, root).new_session(("server", 1))
    peer = ("client", 2)
    _, replies = dtls.accept(peer, client.outgoing()[0])
    client.incoming(replies[0])
    server, _ = dtls.accept(peer, client.outgoing()[0])
    assert server is not None
    assert server.outgoing()                     # the server's flight: lost

    wait = client.next_timeout()
    assert wait is not None and 0 < wait <= 1.0
    deadline = time.monotonic() + 5
    while not client.handshake_done:
        assert time.monotonic() < deadline
        time.sleep(min(t for t in (client.next_timeout(), server.next_timeout(), 0.05)
                       if t is not None))
        for session in (client, server):
            if session.next_timeout() == 0:
                session.handle_timeout()
        for datagram in client.outgoing():
            for message in server.incoming(datagram):
                server.send(message)
        for datagram in server.outgoing():
            client.incoming(datagram)
    assert server.handshake_done
    server.free(), client.free()


# Client verification

@pytest.mark.parametrize("library", LIBRARIES)
def test_client_refuses_a_wrong_server_name(library: str, cert_a: CertFiles, root: CA) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    client = client_dtls(library, root, name="elsewhere.example").new_session(("s", 1))
    peer = ("c", 2)
    _, replies = dtls.accept(peer, client.outgoing()[0])
    client.incoming(replies[0])
    server, _ = dtls.accept(peer, client.outgoing()[0])
    assert server is not None
    with pytest.raises(TLSSessionError):
        for datagram in server.outgoing():
            client.incoming(datagram)
    server.free(), client.free()


# Framing

def test_split_datagrams_keeps_records_whole() -> None:
    def record(n: int) -> bytes:
        return bytes([23, 0xFE, 0xFD]) + bytes(8) + n.to_bytes(2, "big") + b"r" * n

    data = record(500) + record(500) + record(500) + record(2000)
    out = split_datagrams(data, 1200)
    assert [len(d) for d in out] == [1026, 513, 2013]
    assert b"".join(out) == data


# Measured: one in-memory handshake per backend (cookie exchange included)

@pytest.mark.parametrize("library", LIBRARIES)
def test_in_memory_handshake_time(library: str, cert_a: CertFiles, root: CA,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    dtls = YDTLS(cert_a.crypto(library=library), server=True)
    client_side = client_dtls(library, root)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        client = client_side.new_session(("s", 1))
        _, replies = dtls.accept(("c", 2), client.outgoing()[0])
        client.incoming(replies[0])
        server, _ = dtls.accept(("c", 2), client.outgoing()[0])
        assert server is not None
        while not (client.handshake_done and server.handshake_done):
            for datagram in server.outgoing():
                client.incoming(datagram)
            for datagram in client.outgoing():
                server.incoming(datagram)
        best = min(best, time.perf_counter() - start)
        server.free(), client.free()
    with capsys.disabled():
        print(f"\nDTLS in-memory handshake, {library}: {best * 1000:.2f} ms (best of 5)")
    assert best < 1.0


def handshake_in_memory(server_dtls: YDTLS,
                        client_side: YDTLS) -> tuple[DTLSSession, DTLSSession]:
    client = client_side.new_session(("s", 1))
    _, replies = server_dtls.accept(("c", 2), client.outgoing()[0])
    client.incoming(replies[0])
    server, _ = server_dtls.accept(("c", 2), client.outgoing()[0])
    assert server is not None
    for _ in range(10):
        for datagram in server.outgoing():
            client.incoming(datagram)
        for datagram in client.outgoing():
            server.incoming(datagram)
        if client.handshake_done and server.handshake_done:
            break
    return client, server


# Datagram size: one send is one record is one datagram of at most mtu bytes

@pytest.mark.parametrize("client_lib", LIBRARIES)
@pytest.mark.parametrize("server_lib", LIBRARIES)
def test_a_datagram_too_big_is_refused_and_the_session_lives(
        server_lib: str, client_lib: str, cert_a: CertFiles, root: CA) -> None:
    server_dtls = YDTLS(cert_a.crypto(library=server_lib), server=True, mtu=1200)
    client_side = client_dtls(client_lib, root, mtu=1200)
    client, server = handshake_in_memory(server_dtls, client_side)
    for sender, receiver in ((client, server), (server, client)):
        limit = sender.max_datagram()
        assert 1100 < limit < 1200
        with pytest.raises(ValueError, match="split it"):
            sender.send(b"x" * (limit + 1))
        sender.send(b"y" * limit)
        out = sender.outgoing()
        assert len(out) == 1 and len(out[0]) <= 1200
        assert receiver.incoming(out[0]) == [b"y" * limit]
    server.free(), client.free()


# A server session made without the gate runs the cookie exchange itself

@pytest.mark.parametrize("library", LIBRARIES)
def test_server_new_session_does_its_own_cookie_exchange(
        library: str, cert_a: CertFiles, root: CA) -> None:
    server_dtls = YDTLS(cert_a.crypto(library=library), server=True)
    server = server_dtls.new_session(("c", 2))
    client = client_dtls(library, root).new_session(("s", 1))
    verify_requests = 0
    for _ in range(10):
        for datagram in client.outgoing():
            server.incoming(datagram)
        for datagram in server.outgoing():
            verify_requests += is_hello_verify_request(datagram)
            client.incoming(datagram)
        if client.handshake_done and server.handshake_done:
            break
    assert client.handshake_done and server.handshake_done and verify_requests == 1
    client.send(b"hi")
    assert [m for d in client.outgoing() for m in server.incoming(d)] == [b"hi"]
    server.free(), client.free()
    assert server_dtls.live_sessions() == 0


@pytest.mark.parametrize("library", LIBRARIES)
def test_forged_record_is_dropped_silently(library: str, cert_a: CertFiles,
                                               root: CA) -> None:
    server_dtls = YDTLS(cert_a.crypto(library=library), server=True)
    client, server = handshake_in_memory(server_dtls, client_dtls(library, root))
    client.send(b"genuine")
    genuine = client.outgoing()[0]
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    # RFC 6347 4.1.2.7: a DTLS record that fails authentication is dropped
    # silently, not answered with an alert; the session goes on.
    assert server.incoming(forged) == []
    assert server.incoming(genuine) == [b"genuine"]
    server.free(), client.free()


@pytest.mark.parametrize("library", LIBRARIES)
def test_client_refuses_an_untrusted_server(library: str, tmp_path: Path,
                                            cert_a: CertFiles) -> None:
    stranger = make_ca(tmp_path, "stranger")
    server_dtls = YDTLS(cert_a.crypto(library=library), server=True)
    with pytest.raises(TLSSessionError):
        handshake_in_memory(server_dtls, client_dtls(library, stranger))


@pytest.mark.parametrize("client_lib", LIBRARIES)
@pytest.mark.parametrize("server_lib", LIBRARIES)
def test_server_requiring_client_certs(server_lib: str, client_lib: str, tmp_path: Path,
                                       cert_a: CertFiles, root: CA) -> None:
    server_dtls = YDTLS(cert_a.crypto(library=server_lib, ssl_verify_mode="required",
                                      ssl_trusted_certificate=str(root.cert_path)),
                        server=True)
    me = issue(root, tmp_path, "client", cn="client-1")
    client_side = YDTLS({"library": client_lib, "ssl_server_name": "localhost",
                         "ssl_trusted_certificate": str(root.cert_path),
                         "ssl_certificate": str(me.fullchain),
                         "ssl_certificate_key": str(me.key)}, server=False)
    client, server = handshake_in_memory(server_dtls, client_side)
    assert server.handshake_done
    assert server.info()["peer_subject"] == me.leaf.subject.rfc4514_string()
    server.free(), client.free()
    with pytest.raises(TLSSessionError):
        handshake_in_memory(server_dtls, client_dtls(client_lib, root))


@given(sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
       mtu=st.integers(min_value=200, max_value=2000))
def test_split_datagrams_never_cuts_a_record(sizes: list[int], mtu: int) -> None:
    records = [bytes([23, 0xFE, 0xFD]) + bytes(8) + n.to_bytes(2, "big") + bytes(n)
               for n in sizes]
    out = split_datagrams(b"".join(records), mtu)
    assert b"".join(out) == b"".join(records)
    for datagram in out:
        # Every datagram is whole records, and only a lone record may exceed mtu.
        pos, count = 0, 0
        while pos < len(datagram):
            pos += 13 + int.from_bytes(datagram[pos + 11:pos + 13], "big")
            count += 1
        assert pos == len(datagram)
        assert len(datagram) <= mtu or count == 1


@pytest.mark.parametrize("library", LIBRARIES)
def test_close_notify_reaches_the_peer(library: str, cert_a: CertFiles, root: CA) -> None:
    server_dtls = YDTLS(cert_a.crypto(library=library), server=True)
    client, server = handshake_in_memory(server_dtls, client_dtls(library, root))
    client.close_notify()
    for datagram in client.outgoing():
        assert server.incoming(datagram) == []
    assert server.peer_closed
    server.free(), client.free()
