"""C_UDP_S: a UDP listener, plain (``udp://``) or DTLS 1.2 (``udps://``).

Plain: each datagram is published as EV_RX_DATA {data, peer}; EV_TX_DATA
{data, peer} sends one.

DTLS: a peer gets no state until it has answered the cookie exchange
(``YDTLS.accept`` is stateless before that, so spoofed sources cost nothing and
get only a small HelloVerifyRequest back: no amplification). Then one session
per peer address, with its retransmission timer driven by the event loop, an
idle timeout that forgets a silent peer, and a bound (``max_peers``) on how many
are kept. EV_CONNECTED {peer} when a handshake completes, EV_RX_DATA {data,
peer} per cleartext datagram, EV_DISCONNECTED {peer, reason} when a session ends.
``reload-certs``/``view-cert`` and writing ``crypto`` behave as on C_TCP_S:
sessions alive at a reload keep the context they were born with.

States: ST_STOPPED, ST_IDLE (listening); EV_TX_DATA is accepted while
listening. Datagrams, retransmissions and idle sweeps come from the loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find,
                  gobj_change_state, gobj_publish_event, kernel,
                  log_debug, log_error, log_info, log_warning, gobj_subscribe_owner)
from gobj.ytls import TLSSessionError
from gclasses.c_tcp_s import CERT_COMMANDS, mt_writing, prepare_listener

__all__ = ["C_UDP_S", "register_c_udp_s"]

C_UDP_S = "C_UDP_S"

ST_STOPPED = "ST_STOPPED"
ST_IDLE = "ST_IDLE"

ATTRS = [
    SDATA(DTP.STRING, "url", SDF.RD | SDF.WR | SDF.PERSIST, "", "udp://host:port or udps://..."),
    SDATA(DTP.DICT, "crypto", SDF.RD | SDF.WR | SDF.PERSIST, None,
          "DTLS config; writing it on a running DTLS listener reloads"),
    SDATA(DTP.BOOLEAN, "use_ssl", SDF.RD, False, "DTLS, from the url scheme"),
    SDATA(DTP.STRING, "lHost", SDF.RD, "", "Listening host"),
    SDATA(DTP.INTEGER, "lPort", SDF.RD, 0, "Listening port"),
    # 10,000 peers: at a few KiB each, a bound that a flood of completed
    # handshakes cannot turn into unbounded memory.
    SDATA(DTP.INTEGER, "max_peers", SDF.RD | SDF.WR, 10000, "DTLS sessions kept at most"),
    SDATA(DTP.INTEGER, "timeout_idle", SDF.RD | SDF.WR, 300000,
          "ms of silence after which a DTLS peer is forgotten"),
    SDATA(DTP.INTEGER, "mtu", SDF.RD | SDF.WR, 1400, "Largest ciphertext datagram"),
    SDATA(DTP.INTEGER, "peers", SDF.RD | SDF.STATS, 0, "DTLS sessions now"),
    SDATA(DTP.INTEGER, "txBytes", SDF.RD | SDF.RSTATS, 0, "Bytes sent (cleartext)"),
    SDATA(DTP.INTEGER, "rxBytes", SDF.RD | SDF.RSTATS, 0, "Bytes received (cleartext)"),
    SDATA(DTP.INTEGER, "txMsgs", SDF.RD | SDF.RSTATS, 0, "Datagrams sent (cleartext)"),
    SDATA(DTP.INTEGER, "rxMsgs", SDF.RD | SDF.RSTATS, 0, "Datagrams received (cleartext)"),
    SDATA(DTP.INTEGER, "cookies_sent", SDF.RD | SDF.RSTATS, 0, "HelloVerifyRequests sent"),
    SDATA(DTP.INTEGER, "peers_refused", SDF.RD | SDF.RSTATS, 0, "Peers refused by max_peers"),
    SDATA(DTP.INTEGER, "reloads", SDF.RD | SDF.STATS, 0, "Successful certificate reloads"),
    SDATA(DTP.INTEGER, "reload_failures", SDF.RD | SDF.STATS, 0, "Refused reloads"),
    SDATA(DTP.POINTER, "subscriber", SDF.NONE, None, "Who gets the events (default: parent)"),
]


class _Peer:
    __slots__ = ("session", "last_seen", "timer", "connected")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.last_seen = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.connected = False


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, gobj: GObj) -> None:
        self.gobj = gobj

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.gobj.destroyed:
            _on_datagram(self.gobj, data, addr)

    def error_received(self, exc: Exception) -> None:
        log_debug(self.gobj, "udp_s.socket_error", "socket error", error=str(exc))


class _Priv:
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.ytls: Any = None
        self.peers: dict[Any, _Peer] = {}
        self.sweep: asyncio.TimerHandle | None = None


def _loop() -> asyncio.AbstractEventLoop:
    return kernel.loop or asyncio.get_event_loop()


def _peer_name(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def mt_create(gobj: GObj) -> None:
    gobj.priv = _Priv()
    gobj_subscribe_owner(gobj)


def mt_start(gobj: GObj) -> int:
    from gobj.ytls.dtls import YDTLS

    where = prepare_listener(gobj, "udp_s", lambda crypto: YDTLS(
        crypto, server=True, mtu=gobj.read("mtu")))
    if where is None:
        return -1
    host, port = where
    use_ssl = gobj.read("use_ssl")
    priv: _Priv = gobj.priv
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_DGRAM)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        log_error(gobj, "udp_s.listen.failed", "cannot listen", url=gobj.read("url"),
                  error=str(exc))
        priv.ytls = None
        return -1
    bound = sock.getsockname()
    gobj._av[gobj.gclass.attr_index["lHost"]] = bound[0]
    gobj._av[gobj.gclass.attr_index["lPort"]] = bound[1]
    task = asyncio.ensure_future(
        _loop().create_datagram_endpoint(lambda: _Proto(gobj), sock=sock), loop=_loop())
    task.add_done_callback(lambda t: _ready(gobj, t))
    gobj_change_state(gobj, ST_IDLE)
    _arm_sweep(gobj)
    log_info(gobj, "udp_s.listening", "listening", url=gobj.read("url"), host=bound[0],
             port=bound[1], dtls=use_ssl)
    return 0


def _ready(gobj: GObj, task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        log_error(gobj, "udp_s.listen.failed", "cannot serve",
                  error=str(task.exception()) if not task.cancelled() else "cancelled")
        return
    transport, _ = task.result()
    if gobj.destroyed or not gobj.running:
        transport.close()
        return
    gobj.priv.transport = transport


def mt_stop(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    for addr in list(priv.peers):
        _forget(gobj, addr, "listener stopped", notify=True)
    if priv.sweep is not None:
        priv.sweep.cancel()
        priv.sweep = None
    if priv.transport is not None:
        priv.transport.close()
        priv.transport = None
    gobj_change_state(gobj, ST_STOPPED)


# ---------------------------------------------------------------------------
# Receive path (outside the table)
# ---------------------------------------------------------------------------
def _on_datagram(gobj: GObj, data: bytes, addr: Any) -> None:
    priv: _Priv = gobj.priv
    if priv.ytls is None:
        _deliver(gobj, data, addr)
        return
    peer = priv.peers.get(addr)
    if peer is None:
        _admit(gobj, data, addr)
        return
    peer.last_seen = time.monotonic()
    was_done = peer.session.handshake_done
    try:
        cleartexts = peer.session.incoming(data)
    except TLSSessionError as exc:
        log_info(gobj, "udp_s.dtls.session_failed", "DTLS session failed", peer=_peer_name(addr),
                 error=str(exc))
        _forget(gobj, addr, str(exc), notify=True)
        return
    _flush(gobj, addr, peer)
    if not was_done and peer.session.handshake_done:
        peer.connected = True
        gobj_publish_event(gobj, "EV_CONNECTED", {"peer": _peer_name(addr), "addr": addr})
    for clear in cleartexts:
        _deliver(gobj, clear, addr)
    if getattr(peer.session, "peer_closed", False):
        _forget(gobj, addr, "peer sent close_notify", notify=True)


def _admit(gobj: GObj, data: bytes, addr: Any) -> None:
    priv: _Priv = gobj.priv
    try:
        session, replies = priv.ytls.accept(addr, data)
    except TLSSessionError as exc:
        log_debug(gobj, "udp_s.dtls.bad_hello", "ClientHello refused", peer=_peer_name(addr),
                  error=str(exc))
        return
    for reply in replies:
        _sendto(gobj, reply, addr)
        gobj._av[gobj.gclass.attr_index["cookies_sent"]] += 1
    if session is None:
        return
    if len(priv.peers) >= gobj.read("max_peers"):
        session.free()
        idx = gobj.gclass.attr_index["peers_refused"]
        gobj._av[idx] += 1
        refused = gobj._av[idx]
        # A full listener sees each refused client retransmit: log the 1st,
        # 10th, 100th... refusal, and let the stat count the rest.
        if str(refused).rstrip("0") == "1":
            log_warning(gobj, "udp_s.dtls.peers_full", "DTLS peer refused: too many peers",
                        max_peers=gobj.read("max_peers"), peer=_peer_name(addr),
                        refused_so_far=refused)
        return
    peer = _Peer(session)
    priv.peers[addr] = peer
    gobj._av[gobj.gclass.attr_index["peers"]] = len(priv.peers)
    _flush(gobj, addr, peer)


def _deliver(gobj: GObj, data: bytes, addr: Any) -> None:
    idx = gobj.gclass.attr_index
    gobj._av[idx["rxBytes"]] += len(data)
    gobj._av[idx["rxMsgs"]] += 1
    gobj_publish_event(gobj, "EV_RX_DATA", {"data": data, "peer": _peer_name(addr),
                                            "addr": addr})


def _sendto(gobj: GObj, data: bytes, addr: Any) -> None:
    transport = gobj.priv.transport
    if transport is not None:
        transport.sendto(data, addr)


def _flush(gobj: GObj, addr: Any, peer: _Peer) -> None:
    for datagram in peer.session.outgoing():
        _sendto(gobj, datagram, addr)
    _arm_retransmit(gobj, addr, peer)


def _arm_retransmit(gobj: GObj, addr: Any, peer: _Peer) -> None:
    if peer.timer is not None:
        peer.timer.cancel()
        peer.timer = None
    wait = peer.session.next_timeout() if peer.session.bundle is not None else None
    if wait is not None:
        peer.timer = _loop().call_later(max(wait, 0.0), _retransmit, gobj, addr)


def _retransmit(gobj: GObj, addr: Any) -> None:
    peer = gobj.priv.peers.get(addr)
    if peer is None:
        return
    peer.timer = None
    try:
        peer.session.handle_timeout()
    except TLSSessionError as exc:
        _forget(gobj, addr, f"handshake gave up: {exc}", notify=True)
        return
    _flush(gobj, addr, peer)


def _forget(gobj: GObj, addr: Any, reason: str, *, notify: bool) -> None:
    priv: _Priv = gobj.priv
    peer = priv.peers.pop(addr, None)
    if peer is None:
        return
    if peer.timer is not None:
        peer.timer.cancel()
    peer.session.free()
    gobj._av[gobj.gclass.attr_index["peers"]] = len(priv.peers)
    if notify and peer.connected and not gobj.destroyed:
        gobj_publish_event(gobj, "EV_DISCONNECTED", {"peer": _peer_name(addr), "addr": addr,
                                                     "reason": reason})


def _arm_sweep(gobj: GObj) -> None:
    period = max(gobj.read("timeout_idle") / 2000.0, 1.0)
    gobj.priv.sweep = _loop().call_later(period, _sweep, gobj)


def _sweep(gobj: GObj) -> None:
    """Forget silent peers; rotate the cookie secret when it is due."""
    if gobj.destroyed or not gobj.running:
        return
    limit = gobj.read("timeout_idle") / 1000.0
    now = time.monotonic()
    for addr, peer in list(gobj.priv.peers.items()):
        if now - peer.last_seen >= limit:
            log_debug(gobj, "udp_s.dtls.idle", "silent DTLS peer forgotten",
                      peer=_peer_name(addr))
            _forget(gobj, addr, "idle timeout", notify=True)
    if gobj.priv.ytls is not None:
        gobj.priv.ytls.cookies.tick()
    _arm_sweep(gobj)


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def ac_tx_data(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    data = kw.get("data", b"")
    if isinstance(data, str):
        data = data.encode()
    addr = kw.get("addr")
    if addr is None:
        log_warning(gobj, "udp_s.tx.no_peer", "datagram to send names no peer address")
        return -1
    addr = tuple(addr)
    idx = gobj.gclass.attr_index
    priv: _Priv = gobj.priv
    if priv.ytls is None:
        _sendto(gobj, data, addr)
    else:
        peer = priv.peers.get(addr)
        if peer is None:
            log_debug(gobj, "udp_s.tx.unknown_peer", "no DTLS session with that peer",
                      peer=_peer_name(addr))
            return -1
        try:
            peer.session.send(data)
        except ValueError as exc:
            log_warning(gobj, "udp_s.tx.too_big", "datagram not sent", error=str(exc),
                        peer=_peer_name(addr))
            return -1
        except TLSSessionError as exc:
            _forget(gobj, addr, str(exc), notify=True)
            return -1
        _flush(gobj, addr, peer)
    gobj._av[idx["txBytes"]] += len(data)
    gobj._av[idx["txMsgs"]] += 1
    return 0


EVENT_TYPES = [
    ("EV_TX_DATA", EVF.NONE),
    ("EV_RX_DATA", EVF.OUTPUT),
    ("EV_CONNECTED", EVF.OUTPUT | EVF.NO_WARN_SUBS),
    ("EV_DISCONNECTED", EVF.OUTPUT | EVF.NO_WARN_SUBS),
]

STATES = [
    (ST_STOPPED, []),
    (ST_IDLE, [("EV_TX_DATA", ac_tx_data, None)]),
]

def register_c_udp_s() -> None:
    if gclass_find(C_UDP_S) is not None:
        return
    gclass_create(C_UDP_S, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  commands=CERT_COMMANDS,
                  methods={"mt_create": mt_create, "mt_start": mt_start, "mt_stop": mt_stop,
                           "mt_writing": mt_writing},
                  description="UDP listener, plain or DTLS 1.2, with zero-drop reload")
