"""C_UDP_S: a UDP listener, plain or DTLS, in a yuno, with real datagrams on loopback.

Each test runs a yuno in this process on its own asyncio loop (helpers shared
with ``test_listener_matrix``). The listener's subscriber is either C_ECHO or a
probe gclass defined here that records every event it gets and echoes data
back, so that what the listener publishes (EV_CONNECTED, EV_RX_DATA {data,
peer, addr}, EV_DISCONNECTED {reason}) is asserted as a subscriber sees it.
Every DTLS test runs on both backends.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from gobj import EVF, gclass_create, gclass_find, gobj_find_gobj, gobj_read_attr, \
    gobj_send_event, gobj_stop, kernel
from gobj.log import capture_logs
from gobj.runtime import GObj
from gobj.ytls.dtls import YDTLS

from tests.test_listener_matrix import Certs, DtlsClient, command, fingerprint_of, run, \
    serial_of, settle, start_yuno, view_cert
from tests.tls_certs import issue

LIBRARIES = ("openssl", "mbedtls")
LISTENER = "udp"


# A subscriber that records what the listener publishes and echoes data back

C_UDP_PROBE = "C_UDP_PROBE"


def _probe_create(gobj: GObj) -> None:
    gobj.priv = []


def _ac_record(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj.priv.append((event, dict(kw)))
    return 0


def _ac_echo(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj.priv.append((event, dict(kw)))
    return gobj_send_event(src, "EV_TX_DATA", {"data": kw["data"], "addr": kw["addr"]}, gobj)


_PROBE_EVENTS = [("EV_RX_DATA", EVF.NONE), ("EV_CONNECTED", EVF.NONE),
                 ("EV_DISCONNECTED", EVF.NONE)]
_PROBE_STATES = [("ST_IDLE", [("EV_RX_DATA", _ac_echo, None),
                              ("EV_CONNECTED", _ac_record, None),
                              ("EV_DISCONNECTED", _ac_record, None)])]


def register_probe() -> None:
    if gclass_find(C_UDP_PROBE) is None:
        gclass_create(C_UDP_PROBE, event_types=_PROBE_EVENTS, states=_PROBE_STATES,
                      methods={"mt_create": _probe_create},
                      description="Test subscriber: records events, echoes data")


def events_of(probe: GObj, event: str) -> list[dict[str, Any]]:
    return [kw for name, kw in probe.priv if name == event]


async def start_udp(url: str, *, probe: bool = True, **kw: Any) -> tuple[GObj, GObj]:
    """A yuno with one C_UDP_S under a probe (or C_ECHO); returns (listener, parent)."""
    register_probe()
    parent = {"name": "probe", "gclass": C_UDP_PROBE} if probe else None
    await start_yuno({LISTENER: ("C_UDP_S", {"url": url, **kw})}, parent=parent)
    listener = gobj_find_gobj(LISTENER)
    assert listener is not None and listener.parent is not None
    return listener, listener.parent


async def dtls_listener(library: str, certs: Certs, **kw: Any) -> tuple[GObj, GObj]:
    return await start_udp("udps://127.0.0.1:0", crypto=certs.crypto(library), **kw)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def msgids(records: list[dict[str, Any]]) -> list[str]:
    return [r["msgid"] for r in records]


async def recv(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, Any]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), timeout)


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# Plain UDP

def test_plain_udp_echo_publishes_rx_data_with_the_peer() -> None:
    async def body() -> None:
        listener, probe = await start_udp("udp://127.0.0.1:0")
        assert gobj_read_attr(listener, "use_ssl") is False
        port = gobj_read_attr(listener, "lPort")
        sock = raw_socket()
        try:
            sock.sendto(b"hello", ("127.0.0.1", port))
            data, source = await recv(sock)
            assert data == b"hello" and source[1] == port
            (kw,) = events_of(probe, "EV_RX_DATA")
            here = sock.getsockname()
            assert kw["data"] == b"hello"
            assert kw["peer"] == f"127.0.0.1:{here[1]}"
            assert tuple(kw["addr"]) == here
            assert gobj_read_attr(listener, "rxMsgs") == 1
            assert gobj_read_attr(listener, "txMsgs") == 1
            assert gobj_read_attr(listener, "txBytes") == 5
            assert gobj_read_attr(listener, "peers") == 0       # plain UDP keeps no peers
        finally:
            sock.close()

    run(body)


def test_tx_data_outside_the_table_is_refused_and_the_state_stays() -> None:
    async def body() -> None:
        listener, _ = await start_udp("udp://127.0.0.1:0")
        with capture_logs() as records:
            assert gobj_send_event(listener, "EV_TX_DATA", {"data": b"x"}, None) == -1
        assert "udp_s.tx.no_peer" in msgids(records)
        gobj_stop(listener)
        assert listener.state == "ST_STOPPED"
        assert gobj_send_event(listener, "EV_TX_DATA",
                               {"data": b"x", "addr": ("127.0.0.1", 9)}, None) == -1
        assert listener.state == "ST_STOPPED"

    run(body)


# DTLS: the stateless cookie gate

@pytest.mark.parametrize("library", LIBRARIES)
def test_client_that_never_answers_the_hello_verify_request_leaves_nothing(
        library: str, certs: Certs) -> None:
    async def body() -> None:
        listener, probe = await dtls_listener(library, certs)
        port = gobj_read_attr(listener, "lPort")
        client_side = YDTLS({"library": library, "ssl_trusted_certificate":
                             str(certs.root.cert_path), "ssl_server_name": "localhost"},
                            server=False)
        hellos = []
        for _ in range(4):
            session = client_side.new_session(("127.0.0.1", port))
            hellos.append(session.outgoing()[0])
            session.free()
        socks = [raw_socket() for _ in range(10)]
        try:
            socks[0].sendto(hellos[0], ("127.0.0.1", port))
            reply, _ = await recv(socks[0])
            assert reply[0] == 22 and reply[13] == 3          # a HelloVerifyRequest
            assert gobj_read_attr(listener, "cookies_sent") == 1
            assert gobj_read_attr(listener, "peers") == 0

            # In bursts of 20: a loopback socket's default receive buffer holds
            # some 160 small datagrams, and a burst beyond that is lost in the kernel.
            for i in range(1, 200):
                socks[i % len(socks)].sendto(hellos[i % len(hellos)], ("127.0.0.1", port))
                if i % 20 == 19 or i == 199:
                    await settle(lambda: gobj_read_attr(listener, "cookies_sent") == i + 1)
                    assert gobj_read_attr(listener, "peers") == 0
        finally:
            for sock in socks:
                sock.close()
        assert gobj_read_attr(listener, "peers") == 0
        assert listener.priv.peers == {}
        assert listener.priv.ytls.live_sessions() == 0
        assert events_of(probe, "EV_CONNECTED") == []
        client_side.cleanup()

    run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_max_peers_refuses_the_extra_peer(library: str, certs: Certs) -> None:
    async def body() -> None:
        listener, probe = await dtls_listener(library, certs, max_peers=1)
        port = gobj_read_attr(listener, "lPort")
        first = DtlsClient(library, certs.root.cert_path)
        await first.open(port)
        second = DtlsClient(library, certs.root.cert_path)
        with capture_logs() as records:
            await second.open(port, wait=False)
            await settle(lambda: "udp_s.dtls.peers_full" in msgids(records))
            await asyncio.sleep(0.2)
        assert not second.handshake_done
        (refusal,) = [r for r in records if r["msgid"] == "udp_s.dtls.peers_full"]
        assert refusal["level"] == "warning" and refusal["max_peers"] == 1
        assert refusal["peer"] == f"127.0.0.1:{second.local_addr[1]}"
        assert gobj_read_attr(listener, "peers") == 1
        assert listener.priv.ytls.live_sessions() == 1
        assert len(events_of(probe, "EV_CONNECTED")) == 1
        assert await first.echo(b"first still served") == b"first still served"
        await second.close(notify=False)
        await first.close()

    run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_idle_peer_is_forgotten_and_the_subscriber_told(library: str, certs: Certs) -> None:
    async def body() -> None:
        listener, probe = await dtls_listener(library, certs, timeout_idle=300)
        port = gobj_read_attr(listener, "lPort")
        client = DtlsClient(library, certs.root.cert_path)
        await client.open(port)
        assert await client.echo(b"once") == b"once"
        (connected,) = events_of(probe, "EV_CONNECTED")
        assert connected["peer"] == f"127.0.0.1:{client.local_addr[1]}"

        # The sweep runs every max(timeout_idle / 2, 1 s).
        await settle(lambda: bool(events_of(probe, "EV_DISCONNECTED")), timeout=4)
        (gone,) = events_of(probe, "EV_DISCONNECTED")
        assert gone["reason"] == "idle timeout" and gone["peer"] == connected["peer"]
        assert gobj_read_attr(listener, "peers") == 0
        assert listener.priv.ytls.live_sessions() == 0
        await client.close(notify=False)

    run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_peer_close_notify_ends_the_session(library: str, certs: Certs) -> None:
    async def body() -> None:
        listener, probe = await dtls_listener(library, certs)
        client = DtlsClient(library, certs.root.cert_path)
        await client.open(gobj_read_attr(listener, "lPort"))
        assert gobj_read_attr(listener, "peers") == 1
        await client.close()
        await settle(lambda: gobj_read_attr(listener, "peers") == 0)
        (gone,) = events_of(probe, "EV_DISCONNECTED")
        assert gone["reason"] == "peer sent close_notify"

    run(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_lost_server_flight_is_retransmitted_by_the_loop_timer(library: str,
                                                               certs: Certs) -> None:
    async def body() -> None:
        listener, _ = await dtls_listener(library, certs)
        # The client drops whatever arrives in the 0.5 s after the
        # HelloVerifyRequest (the server's first flight) and never retransmits
        # itself: only the listener's own timer can finish the handshake.
        client = DtlsClient(library, certs.root.cert_path, drive_timer=False,
                            drop_after_hvr=0.5)
        await client.open(gobj_read_attr(listener, "lPort"), wait=False)
        await client.until(lambda: client.handshake_done, timeout=5)
        assert client.dropped >= 1
        assert await client.echo(b"after a lost flight") == b"after a lost flight"
        await client.close()

    run(body)


# Yuno-level commands see the UDP listener beside the TCP one

@pytest.mark.parametrize("library", LIBRARIES)
def test_yuno_reload_certs_and_expiry_status_include_the_udp_listener(
        library: str, certs: Certs) -> None:
    async def body() -> None:
        yuno = await start_yuno({
            "tls": ("C_TCP_S", {"url": "tcps://127.0.0.1:0", "crypto": certs.crypto(library)}),
            LISTENER: ("C_UDP_S", {"url": "udps://127.0.0.1:0",
                                   "crypto": certs.crypto(library)}),
        })
        names = {gobj_find_gobj("tls").full_name, gobj_find_gobj(LISTENER).full_name}

        status = command(yuno, "cert-expiry-status")
        assert status["result"] == 0 and status["data"]["listeners"] == 2
        assert {d["gobj"] for d in status["data"]["details"]} == names
        assert {d["serial"] for d in status["data"]["details"]} == {serial_of(certs.a)}

        certs.install(certs.b)
        answer = command(yuno, "reload-certs")
        assert answer["result"] == 0
        assert answer["comment"].endswith("reloaded 2 TLS listener(s), 0 failed")
        assert {d["gobj"] for d in answer["data"]["details"]} == names
        assert view_cert(gobj_find_gobj(LISTENER))["serial"] == serial_of(certs.b)

        # A certificate about to expire: the reload's own scan reports both listeners.
        short = issue(certs.inter, certs.base, "short", days=1)
        certs.install(short)
        with capture_logs() as records:
            assert command(yuno, "reload-certs")["result"] == 0
        critical = [r for r in records if r["msgid"] == "cert.expiry.critical"]
        assert {r["listener"] for r in critical} == names
        status = command(yuno, "cert-expiry-status")
        assert status["data"]["min_days_remaining"] == 0

    run(body)


# Writing crypto reloads a running DTLS listener; a bad one is vetoed

@pytest.mark.parametrize("library", LIBRARIES)
def test_write_attr_crypto_reloads_and_a_bad_crypto_is_vetoed(library: str,
                                                              certs: Certs) -> None:
    async def body() -> None:
        listener, _ = await dtls_listener(library, certs)
        yuno = kernel.yuno
        port = gobj_read_attr(listener, "lPort")

        crypto_b = certs.b.crypto(library=library)
        answer = command(yuno, f"write-attr attribute=crypto value='{json.dumps(crypto_b)}' "
                               f"gobj={LISTENER}")
        assert answer["result"] == 0, answer["comment"]
        assert gobj_read_attr(listener, "crypto") == crypto_b
        assert gobj_read_attr(listener, "reloads") == 1
        assert view_cert(listener)["serial"] == serial_of(certs.b)
        client = DtlsClient(library, certs.root.cert_path)
        await client.open(port)
        assert client.peer_fingerprint == fingerprint_of(certs.b.leaf)

        missing = str(certs.base / "no-such.key")
        bad = {**crypto_b, "ssl_certificate_key": missing}
        answer = command(yuno, f"write-attr attribute=crypto value='{json.dumps(bad)}' "
                               f"gobj={LISTENER}")
        assert answer["result"] == -1 and missing in answer["comment"], answer["comment"]
        assert gobj_read_attr(listener, "crypto") == crypto_b
        assert gobj_read_attr(listener, "reload_failures") == 1
        assert view_cert(listener)["serial"] == serial_of(certs.b)
        assert await client.echo(b"unharmed") == b"unharmed"
        await client.close()

    run(body)


# A datagram too big for one record is refused; the session lives on

@pytest.mark.parametrize("library", LIBRARIES)
def test_datagram_too_big_is_refused_and_the_session_survives(library: str,
                                                              certs: Certs) -> None:
    async def body() -> None:
        listener, _ = await dtls_listener(library, certs)
        client = DtlsClient(library, certs.root.cert_path)
        await client.open(gobj_read_attr(listener, "lPort"))
        with capture_logs() as records:
            result = gobj_send_event(listener, "EV_TX_DATA",
                                     {"data": b"x" * 5000, "addr": client.local_addr}, None)
        assert result == -1
        (refusal,) = [r for r in records if r["msgid"] == "udp_s.tx.too_big"]
        assert "5000" in refusal["error"] and "split it" in refusal["error"]
        assert refusal["peer"] == f"127.0.0.1:{client.local_addr[1]}"
        assert gobj_read_attr(listener, "peers") == 1
        assert gobj_read_attr(listener, "txMsgs") == 0
        assert await client.echo(b"small enough") == b"small enough"
        await client.close()

    run(body)
