"""C_TCP: one TCP connection, plain or TLS, server side (made by C_TCP_S at
accept time) or client side (connects to ``url``).

States, in Yuneta's order (the last two are "connected" ones):
ST_STOPPED, ST_DISCONNECTED, ST_WAIT_CONNECTED, ST_WAIT_HANDSHAKE, ST_CONNECTED.

Not in the table: the transport's callbacks (connection made, bytes received,
connection lost) come from the event loop through :class:`_Proto` and move the
machine with ``gobj_change_state``; the handshake and inactivity deadlines are
loop timers owned by the connection, not C_TIMER children, because a listener
may hold thousands of connections and a gobj per timer would double their cost.

Outputs go to subscribers: EV_CONNECTED, EV_RX_DATA {data}, EV_TX_READY,
EV_DISCONNECTED {reason}. A server-side connection gets the TLS context that was
current when it was accepted and keeps it until it closes, whatever reloads
happen meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from gobj import (DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find, gobj_change_state,
                  gobj_destroy, gobj_publish_event, kernel, log_debug, log_error, log_info,
                  log_warning, gobj_subscribe_owner)
from gobj.ytls import SecureFilter, TLSError, TLSSessionError, ytls_init

__all__ = ["C_TCP", "register_c_tcp", "parse_url", "SECURE_SCHEMES"]

C_TCP = "C_TCP"

EV_CONNECT = "EV_CONNECT"
EV_DROP = "EV_DROP"
EV_TX_DATA = "EV_TX_DATA"
EV_CONNECTED = "EV_CONNECTED"
EV_DISCONNECTED = "EV_DISCONNECTED"
EV_RX_DATA = "EV_RX_DATA"
EV_TX_READY = "EV_TX_READY"

ST_STOPPED = "ST_STOPPED"
ST_DISCONNECTED = "ST_DISCONNECTED"
ST_WAIT_CONNECTED = "ST_WAIT_CONNECTED"
ST_WAIT_HANDSHAKE = "ST_WAIT_HANDSHAKE"
ST_CONNECTED = "ST_CONNECTED"

SECURE_SCHEMES = {"tcps", "wss", "https", "tcp4hs", "mqtts", "udps"}

ATTRS = [
    SDATA(DTP.STRING, "url", SDF.RD | SDF.WR | SDF.PERSIST, "", "Client: where to connect"),
    SDATA(DTP.DICT, "crypto", SDF.RD | SDF.WR | SDF.PERSIST, None, "Client TLS config"),
    SDATA(DTP.BOOLEAN, "use_ssl", SDF.RD, False, "TLS on this connection"),
    SDATA(DTP.BOOLEAN, "__clisrv__", SDF.RD | SDF.STATS, False, "Made by a listener"),
    SDATA(DTP.INTEGER, "timeout_handshake", SDF.RD | SDF.WR, 10000,
          "ms to finish the TLS handshake, then drop"),
    SDATA(DTP.INTEGER, "timeout_inactivity", SDF.RD | SDF.WR, -1,
          "ms without traffic before drop; -1 never"),
    SDATA(DTP.INTEGER, "timeout_between_connections", SDF.RD | SDF.WR, 2000,
          "Client: ms before reconnecting; 0 no reconnection"),
    # 4 MiB: a peer that stops reading must not make us buffer without end;
    # past this the connection is dropped and the drop is logged.
    SDATA(DTP.INTEGER, "max_tx_queue", SDF.RD | SDF.WR, 4 * 1024 * 1024,
          "Bytes waiting to be sent before the connection is dropped"),
    SDATA(DTP.STRING, "peername", SDF.RD | SDF.VOLATIL | SDF.STATS, "", "Peer address"),
    SDATA(DTP.STRING, "sockname", SDF.RD | SDF.VOLATIL | SDF.STATS, "", "Local address"),
    SDATA(DTP.INTEGER, "txBytes", SDF.RD | SDF.RSTATS, 0, "Cleartext bytes sent"),
    SDATA(DTP.INTEGER, "rxBytes", SDF.RD | SDF.RSTATS, 0, "Cleartext bytes received"),
    SDATA(DTP.POINTER, "ytls", SDF.NONE, None, "Listener's TLS handle (server side)"),
    SDATA(DTP.POINTER, "subscriber", SDF.NONE, None, "Who gets the output events"),
]


class _Proto(asyncio.Protocol):
    """The loop side of a connection: hands bytes to the gobj, nothing more."""

    __slots__ = ("gobj", "transport")

    def __init__(self, gobj: GObj | None) -> None:
        self.gobj = gobj
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.gobj is not None:
            _on_transport_open(self.gobj, self)

    def data_received(self, data: bytes) -> None:
        gobj = self.gobj
        if gobj is not None:
            _on_rx(gobj, data)

    def connection_lost(self, exc: Exception | None) -> None:
        gobj, self.gobj = self.gobj, None
        if gobj is not None:
            _on_transport_closed(gobj, "peer closed" if exc is None else f"{exc}")

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        if self.gobj is not None and self.gobj.state == ST_CONNECTED:
            gobj_publish_event(self.gobj, EV_TX_READY, {})


class _Priv:
    __slots__ = ("proto", "filter", "hs_timer", "idle_timer", "last_rx", "reconnect",
                 "connect_task", "closing", "idx_tx", "idx_rx", "listener")

    def __init__(self) -> None:
        self.proto: _Proto | None = None
        self.filter: SecureFilter | None = None
        self.hs_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_rx = 0.0
        self.reconnect: asyncio.TimerHandle | None = None
        self.connect_task: asyncio.Future[Any] | None = None
        self.closing = False
        self.idx_tx = 0
        self.idx_rx = 0
        self.listener: GObj | None = None


def _loop() -> asyncio.AbstractEventLoop:
    return kernel.loop or asyncio.get_event_loop()


def parse_url(url: str) -> tuple[str, str, int]:
    """``scheme://host:port`` -> (scheme, host, port); ValueError names what is wrong."""
    parts = urlsplit(url)
    if not parts.scheme or parts.hostname is None:
        raise ValueError(f"url {url!r}: expected scheme://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url!r}: the port is not a number 0..65535") from None
    if port is None:
        raise ValueError(f"url {url!r}: no port")
    return parts.scheme.lower(), parts.hostname, port


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def mt_create(gobj: GObj) -> None:
    priv = _Priv()
    priv.idx_tx = gobj.gclass.attr_index["txBytes"]
    priv.idx_rx = gobj.gclass.attr_index["rxBytes"]
    gobj.priv = priv
    gobj_subscribe_owner(gobj)


def mt_start(gobj: GObj) -> int:
    if gobj.state == ST_STOPPED:
        gobj_change_state(gobj, ST_DISCONNECTED)
    return 0


def mt_stop(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    if priv.reconnect is not None:
        priv.reconnect.cancel()
        priv.reconnect = None
    if priv.connect_task is not None:
        priv.connect_task.cancel()
        priv.connect_task = None
    _close(gobj, "stopped")


def mt_destroy(gobj: GObj) -> None:
    _close(gobj, "destroyed")


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def ac_connect(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    """Client side: open the TCP connection to ``url`` (the state is WAIT_CONNECTED)."""
    try:
        scheme, host, port = parse_url(gobj.read("url"))
    except ValueError as exc:
        log_error(gobj, "tcp.connect.bad_url", "cannot connect: bad url", error=str(exc))
        gobj_change_state(gobj, ST_DISCONNECTED)
        return -1
    gobj.write("use_ssl", scheme in SECURE_SCHEMES)
    proto = _Proto(gobj)
    gobj.priv.connect_task = asyncio.ensure_future(
        _connect(gobj, proto, host, port), loop=_loop())
    return 0


async def _connect(gobj: GObj, proto: _Proto, host: str, port: int) -> None:
    try:
        await _loop().create_connection(lambda: proto, host, port)
    except OSError as exc:
        gobj.priv.connect_task = None
        log_info(gobj, "tcp.connect.failed", "connection refused or unreachable",
                 url=gobj.read("url"), error=str(exc))
        if not gobj.destroyed:
            gobj_change_state(gobj, ST_DISCONNECTED)
            gobj_publish_event(gobj, EV_DISCONNECTED, {"reason": str(exc)})
            _schedule_reconnect(gobj)
        return
    gobj.priv.connect_task = None


def ac_tx_data(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    data = kw.get("data", b"")
    if isinstance(data, str):
        data = data.encode()
    priv: _Priv = gobj.priv
    proto = priv.proto
    if proto is None or proto.transport is None:
        return -1
    gobj._av[priv.idx_tx] += len(data)
    flt = priv.filter
    if flt is not None:
        try:
            flt.send(data)
        except TLSSessionError as exc:
            _drop(gobj, f"TLS send failed: {exc}")
            return -1
        data = flt.outgoing()
        if not data:
            return 0
    transport = proto.transport
    transport.write(data)
    if transport.get_write_buffer_size() > gobj.read("max_tx_queue"):
        log_warning(gobj, "tcp.tx.queue_full", "peer is not reading; connection dropped",
                    queued=transport.get_write_buffer_size(), limit=gobj.read("max_tx_queue"),
                    peername=gobj.read("peername"))
        _drop(gobj, "transmit queue full")
        return -1
    return 0


def ac_drop(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    _drop(gobj, kw.get("reason", "dropped by request"))
    return 0


def ac_reject_tx(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    log_debug(gobj, "tcp.tx.not_connected", "data to send while disconnected, refused")
    return -1


def ac_queue_tx(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    """Before the handshake ends: the filter keeps the cleartext until it can encrypt it."""
    flt = gobj.priv.filter
    data = kw.get("data", b"")
    if flt is None:
        return -1
    flt.send(data.encode() if isinstance(data, str) else data)
    return 0


EVENT_TYPES = [
    (EV_CONNECT, EVF.NONE),
    (EV_TX_DATA, EVF.NONE),
    (EV_DROP, EVF.NONE),
    (EV_CONNECTED, EVF.OUTPUT),
    (EV_DISCONNECTED, EVF.OUTPUT),
    (EV_RX_DATA, EVF.OUTPUT),
    (EV_TX_READY, EVF.OUTPUT | EVF.NO_WARN_SUBS),
]

STATES = [
    (ST_STOPPED, []),
    (ST_DISCONNECTED, [(EV_CONNECT, ac_connect, ST_WAIT_CONNECTED),
                       (EV_TX_DATA, ac_reject_tx, None)]),
    (ST_WAIT_CONNECTED, [(EV_DROP, ac_drop, None), (EV_TX_DATA, ac_reject_tx, None)]),
    (ST_WAIT_HANDSHAKE, [(EV_TX_DATA, ac_queue_tx, None), (EV_DROP, ac_drop, None)]),
    (ST_CONNECTED, [(EV_TX_DATA, ac_tx_data, None), (EV_DROP, ac_drop, None)]),
]


# ---------------------------------------------------------------------------
# Transport callbacks (outside the table, see the module docstring)
# ---------------------------------------------------------------------------
def accept_connection(gobj: GObj, proto: _Proto, listener: GObj, ytls: Any) -> None:
    """Server side: called by C_TCP_S with the protocol of a fresh connection."""
    gobj.priv.listener = listener
    if ytls is not None:
        gobj._av[gobj.gclass.attr_index["use_ssl"]] = True
        gobj._av[gobj.gclass.attr_index["ytls"]] = ytls
    proto.gobj = gobj
    if not gobj.running:
        gobj.running = True
        gobj_change_state(gobj, ST_WAIT_CONNECTED)
    _on_transport_open(gobj, proto)


def _on_transport_open(gobj: GObj, proto: _Proto) -> None:
    priv: _Priv = gobj.priv
    priv.proto = proto
    priv.closing = False
    transport = proto.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    sock = transport.get_extra_info("sockname") if transport is not None else None
    gobj._av[gobj.gclass.attr_index["peername"]] = _addr(peer)
    gobj._av[gobj.gclass.attr_index["sockname"]] = _addr(sock)
    if not gobj.read("use_ssl"):
        gobj_change_state(gobj, ST_CONNECTED)
        _arm_idle(gobj)
        gobj_publish_event(gobj, EV_CONNECTED, _conn_kw(gobj))
        return
    try:
        ytls = gobj.read("ytls")
        if ytls is None:  # client side: a context of its own
            ytls = ytls_init(gobj.read("crypto") or {}, server=False)
            gobj._av[gobj.gclass.attr_index["ytls"]] = ytls
        priv.filter = ytls.new_secure_filter()
    except TLSError as exc:
        log_error(gobj, "tcp.tls.config_failed", "TLS configuration refused", error=str(exc),
                  field=exc.field, path=exc.path)
        _drop(gobj, f"TLS configuration refused: {exc}")
        return
    gobj_change_state(gobj, ST_WAIT_HANDSHAKE)
    priv.hs_timer = _loop().call_later(gobj.read("timeout_handshake") / 1000.0,
                                       _handshake_timeout, gobj)
    priv.filter.start()
    _flush(gobj)


def _on_rx(gobj: GObj, data: bytes) -> None:
    priv: _Priv = gobj.priv
    priv.last_rx = time.monotonic()
    flt = priv.filter
    if flt is not None:
        was_done = flt.handshake_done
        try:
            data = flt.incoming(data)
        except TLSSessionError as exc:
            # A peer failing its handshake is routine network trouble: info, not error.
            log_info(gobj, "tcp.tls.session_failed", "TLS session failed", error=str(exc),
                     peername=gobj.read("peername"))
            _flush(gobj)
            _drop(gobj, str(exc))
            return
        out = flt.outgoing()
        if out and priv.proto is not None and priv.proto.transport is not None:
            priv.proto.transport.write(out)
        if not was_done and flt.handshake_done:
            _handshake_done(gobj)
        # A peer that sent close_notify waits for ours before it lets go of
        # the socket; answer it and close instead of leaving it half open.
        if getattr(flt, "peer_closed", False):
            if data and gobj.state == ST_CONNECTED:
                _publish_rx(gobj, data)
            _drop(gobj, "peer sent close_notify")
            return
        if not data or gobj.state != ST_CONNECTED:
            return
    _publish_rx(gobj, data)


def _publish_rx(gobj: GObj, data: bytes) -> None:
    gobj._av[gobj.priv.idx_rx] += len(data)
    gobj_publish_event(gobj, EV_RX_DATA, {"data": data})


def _handshake_done(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    if priv.hs_timer is not None:
        priv.hs_timer.cancel()
        priv.hs_timer = None
    gobj_change_state(gobj, ST_CONNECTED)
    _arm_idle(gobj)
    gobj_publish_event(gobj, EV_CONNECTED, _conn_kw(gobj))


def _on_transport_closed(gobj: GObj, reason: str) -> None:
    priv: _Priv = gobj.priv
    priv.proto = None
    _release(gobj)
    was_connected = gobj.state in (ST_CONNECTED, ST_WAIT_HANDSHAKE)
    if not gobj.destroyed and gobj.state != ST_STOPPED:
        gobj_change_state(gobj, ST_DISCONNECTED)
    if was_connected and not gobj.destroyed:
        gobj_publish_event(gobj, EV_DISCONNECTED, {"reason": reason})
    listener = priv.listener
    if listener is not None:
        from gclasses.c_tcp_s import connection_closed

        connection_closed(listener, gobj)
        if not gobj.destroying:
            gobj_destroy(gobj)  # server side connections are volatile
        return
    _schedule_reconnect(gobj)


def _release(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    for name in ("hs_timer", "idle_timer"):
        handle = getattr(priv, name)
        if handle is not None:
            handle.cancel()
            setattr(priv, name, None)
    if priv.filter is not None:
        priv.filter.free()
        priv.filter = None


def _flush(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    if priv.filter is None or priv.proto is None or priv.proto.transport is None:
        return
    out = priv.filter.outgoing()
    if out:
        priv.proto.transport.write(out)


def _drop(gobj: GObj, reason: str) -> None:
    _close(gobj, reason)


def _close(gobj: GObj, reason: str) -> None:
    priv: _Priv = gobj.priv
    if priv is None:
        return
    proto = priv.proto
    if proto is None or proto.transport is None or priv.closing:
        _release(gobj)
        return
    priv.closing = True
    if priv.filter is not None and priv.filter.handshake_done:
        try:
            priv.filter.close_notify()
            _flush(gobj)
        except TLSSessionError:
            pass
    log_debug(gobj, "tcp.close", "closing connection", reason=reason,
              peername=gobj.read("peername"))
    proto.transport.close()  # connection_lost follows on a later loop turn


def _handshake_timeout(gobj: GObj) -> None:
    gobj.priv.hs_timer = None
    if gobj.state == ST_WAIT_HANDSHAKE:
        log_info(gobj, "tcp.tls.handshake_timeout", "TLS handshake not finished in time",
                 timeout_ms=gobj.read("timeout_handshake"), peername=gobj.read("peername"))
        _drop(gobj, "handshake timeout")


def _arm_idle(gobj: GObj) -> None:
    ms = gobj.read("timeout_inactivity")
    if ms is None or ms <= 0:
        return
    priv: _Priv = gobj.priv
    priv.last_rx = time.monotonic()
    priv.idle_timer = _loop().call_later(ms / 1000.0, _idle_check, gobj)


def _idle_check(gobj: GObj) -> None:
    # One timer per connection, re-armed for the remaining time: cheaper than
    # cancelling and re-creating a timer on every received packet.
    priv: _Priv = gobj.priv
    priv.idle_timer = None
    if gobj.state != ST_CONNECTED:
        return
    ms = gobj.read("timeout_inactivity")
    idle = time.monotonic() - priv.last_rx
    if idle * 1000.0 >= ms:
        log_info(gobj, "tcp.inactivity_timeout", "no traffic in time; connection dropped",
                 timeout_ms=ms, peername=gobj.read("peername"))
        _drop(gobj, "inactivity timeout")
        return
    priv.idle_timer = _loop().call_later(ms / 1000.0 - idle, _idle_check, gobj)


def _schedule_reconnect(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    wait = gobj.read("timeout_between_connections")
    if gobj.destroyed or not gobj.running or wait <= 0 or not gobj.read("url"):
        return
    if priv.reconnect is None:
        priv.reconnect = _loop().call_later(wait / 1000.0, _reconnect, gobj)


def _reconnect(gobj: GObj) -> None:
    from gobj import gobj_send_event

    gobj.priv.reconnect = None
    if gobj.running and gobj.state == ST_DISCONNECTED:
        gobj_send_event(gobj, EV_CONNECT, {}, gobj)


def _conn_kw(gobj: GObj) -> dict[str, Any]:
    kw = {"peername": gobj.read("peername"), "sockname": gobj.read("sockname")}
    flt = gobj.priv.filter
    if flt is not None:
        kw["tls"] = flt.info()
    return kw


def _addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr or "")


def register_c_tcp() -> None:
    if gclass_find(C_TCP) is not None:
        return
    gclass_create(
        C_TCP,
        event_types=EVENT_TYPES,
        states=STATES,
        attrs=ATTRS,
        methods={"mt_create": mt_create, "mt_start": mt_start, "mt_stop": mt_stop,
                 "mt_destroy": mt_destroy},
        description="A TCP connection, plain or TLS, client or server side",
    )
