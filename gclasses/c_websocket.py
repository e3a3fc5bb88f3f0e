"""C_WEBSOCKET: WebSocket framing over one C_TCP (RFC 6455), sans-I/O inside.

Server side: C_IOGATE creates it when a listener accepts a connection and hands
it that C_TCP (``tcp`` attr); the websocket becomes the connection's subscriber.
Client side: it creates its own C_TCP child from ``url`` (``ws://`` plain,
``wss://`` TLS) and sends the opening handshake once TCP (and TLS) is up.

Inputs from below: EV_CONNECTED, EV_RX_DATA, EV_DISCONNECTED, EV_TX_READY (the
C_TCP's outputs). Inputs from above: EV_SEND_MESSAGE {data: str|bytes},
EV_DROP. Outputs: EV_ON_OPEN {path, headers}, EV_ON_MESSAGE {data}, EV_ON_CLOSE
{reason}. Every frame and message is bounded (``max_frame``, ``max_message``):
a peer announcing a bigger one is refused with close code 1009 before its
payload is buffered.
"""

from __future__ import annotations

from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find, gobj_create,
                  gobj_publish_event, gobj_send_event, gobj_start,
                  gobj_subscribe_event, gobj_subscribe_owner, gobj_unsubscribe_event, log_info,
                  log_warning)
from gobj.websocket_proto import (Binary, Closed, Opened, ProtocolError, Text, WSEndpoint,
                                  WSStateError)
from gclasses.c_tcp import C_TCP, parse_url, register_c_tcp

__all__ = ["C_WEBSOCKET", "register_c_websocket"]

C_WEBSOCKET = "C_WEBSOCKET"

ST_DISCONNECTED = "ST_DISCONNECTED"
ST_WAIT_HANDSHAKE = "ST_WAIT_HANDSHAKE"
ST_CONNECTED = "ST_CONNECTED"

ATTRS = [
    SDATA(DTP.BOOLEAN, "iamServer", SDF.RD, False, "Server side (made by a gate)"),
    SDATA(DTP.STRING, "url", SDF.RD | SDF.WR, "", "Client: ws://host:port or wss://..."),
    SDATA(DTP.STRING, "resource", SDF.RD | SDF.WR, "/", "Client: resource in the upgrade"),
    SDATA(DTP.JSON, "crypto", SDF.RD | SDF.WR, None, "Client: TLS config for wss://"),
    # 1 MiB frames, 4 MiB messages: a command answer with a big table fits, and
    # a hostile peer cannot make us hold more than that per connection.
    SDATA(DTP.INTEGER, "max_frame", SDF.RD | SDF.WR, 1 << 20, "Largest frame accepted"),
    SDATA(DTP.INTEGER, "max_message", SDF.RD | SDF.WR, 4 << 20, "Largest message accepted"),
    SDATA(DTP.INTEGER, "timeout_between_connections", SDF.RD | SDF.WR, 2000,
          "Client: ms before reconnecting; 0 none"),
    SDATA(DTP.POINTER, "tcp", SDF.NONE, None, "The C_TCP below"),
    SDATA(DTP.POINTER, "subscriber", SDF.NONE, None, "Who gets the output events"),
    SDATA(DTP.STRING, "peername", SDF.RD | SDF.STATS, "", "Peer address"),
]


class _Priv:
    __slots__ = ("ws", "tcp")

    def __init__(self) -> None:
        self.ws: WSEndpoint | None = None
        self.tcp: GObj | None = None


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def mt_create(gobj: GObj) -> None:
    gobj.priv = _Priv()
    gobj_subscribe_owner(gobj)
    tcp = gobj.read("tcp")
    if tcp is not None:  # server side: adopt the accepted connection
        gobj.priv.tcp = tcp
        if tcp.parent is not None:
            gobj_unsubscribe_event(tcp, None, {}, tcp.read("subscriber") or tcp.parent)
        gobj_subscribe_event(tcp, None, {}, gobj)
        gobj.write("peername", tcp.read("peername"))
    else:
        scheme, _, _ = parse_url(gobj.read("url"))
        tcp_url = gobj.read("url").replace(f"{scheme}://", "tcps://" if scheme == "wss"
                                           else "tcp://", 1)
        kw = {"url": tcp_url,
              "timeout_between_connections": gobj.read("timeout_between_connections")}
        # Only a real TLS config is passed down: C_TCP's crypto is a dict and
        # refuses None, which is what a plain ws:// client has here.
        if isinstance(gobj.read("crypto"), dict):
            kw["crypto"] = gobj.read("crypto")
        gobj.priv.tcp = gobj_create("tcp", C_TCP, kw, gobj)


def mt_start(gobj: GObj) -> int:
    tcp = gobj.priv.tcp
    if not gobj.read("iamServer") and tcp is not None and not tcp.running:
        gobj_start(tcp)
        gobj_send_event(tcp, "EV_CONNECT", {}, gobj)
    return 0


def mt_stop(gobj: GObj) -> None:
    tcp = gobj.priv.tcp
    if tcp is not None and not tcp.destroyed:
        if gobj.read("iamServer"):
            _drop_tcp(gobj, "websocket stopped")
        elif tcp.running:
            from gobj import gobj_stop
            gobj_stop(tcp)


def mt_destroy(gobj: GObj) -> None:
    if gobj.read("iamServer"):
        _drop_tcp(gobj, "websocket destroyed")


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def _new_endpoint(gobj: GObj) -> WSEndpoint:
    return WSEndpoint("server" if gobj.read("iamServer") else "client",
                      max_frame=gobj.read("max_frame"), max_message=gobj.read("max_message"))


_LIVE_TCP = ("ST_WAIT_CONNECTED", "ST_WAIT_HANDSHAKE", "ST_CONNECTED")


def _drop_tcp(gobj: GObj, reason: str) -> None:
    tcp = gobj.priv.tcp
    if tcp is not None and not tcp.destroyed and tcp.state in _LIVE_TCP:
        gobj_send_event(tcp, "EV_DROP", {"reason": reason}, gobj)


def _tx(gobj: GObj, data: bytes) -> None:
    if data and gobj.priv.tcp is not None and not gobj.priv.tcp.destroyed:
        gobj_send_event(gobj.priv.tcp, "EV_TX_DATA", {"data": data}, gobj)


def ac_connected(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    priv: _Priv = gobj.priv
    priv.ws = _new_endpoint(gobj)
    gobj.write("peername", kw.get("peername", ""))
    if not gobj.read("iamServer"):
        _, host, port = parse_url(gobj.read("url"))
        origin = kw.get("sockname") or None
        _tx(gobj, priv.ws.initiate(host, port, gobj.read("resource"), origin=origin))
    return 0


def ac_rx_data(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    ws = gobj.priv.ws
    if ws is None:
        return -1
    events = ws.receive_data(kw["data"])
    _tx(gobj, ws.data_to_send())
    for ev in events:
        if gobj.destroyed:
            break
        _dispatch(gobj, ev)
    return 0


def _dispatch(gobj: GObj, ev: Any) -> None:
    if isinstance(ev, (Text, Binary)):
        gobj_publish_event(gobj, "EV_ON_MESSAGE", {"data": ev.data})
    elif isinstance(ev, Opened):
        from gobj import gobj_change_state

        gobj_change_state(gobj, ST_CONNECTED)
        gobj_publish_event(gobj, "EV_ON_OPEN", {"path": ev.path, "peername":
                                                gobj.read("peername")})
    elif isinstance(ev, ProtocolError):
        log_warning(gobj, "websocket.protocol_error", "peer broke the WebSocket protocol",
                    reason=ev.reason, close_code=ev.close_code, peername=gobj.read("peername"))
        _tx(gobj, gobj.priv.ws.data_to_send())
        _drop_tcp(gobj, ev.reason)
    elif isinstance(ev, Closed):
        _drop_tcp(gobj, f"close {ev.code}")


def ac_disconnected(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    was_open = gobj.state == ST_CONNECTED
    gobj.priv.ws = None
    from gobj import gobj_change_state

    gobj_change_state(gobj, ST_DISCONNECTED)
    if was_open:
        gobj_publish_event(gobj, "EV_ON_CLOSE", {"reason": kw.get("reason", "")})
    return 0


def ac_send_message(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    ws = gobj.priv.ws
    data = kw.get("data")
    if ws is None:
        return -1
    try:
        frame = ws.send_binary(data) if isinstance(data, (bytes, bytearray)) else \
            ws.send_text(str(data))
    except (WSStateError, ValueError) as exc:
        log_info(gobj, "websocket.send_refused", "message not sent", error=str(exc))
        return -1
    _tx(gobj, frame)
    return 0


def ac_drop(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    ws = gobj.priv.ws
    if ws is not None and ws.state == "open":
        _tx(gobj, ws.close())
    _drop_tcp(gobj, kw.get("reason", "drop"))
    return 0


def ac_ignore_tx_ready(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    return 0  # the peer caught up with our writes; nothing is queued at this level


EVENT_TYPES = [
    ("EV_CONNECTED", EVF.NONE),
    ("EV_RX_DATA", EVF.NONE),
    ("EV_DISCONNECTED", EVF.NONE),
    ("EV_TX_READY", EVF.NONE),
    ("EV_SEND_MESSAGE", EVF.NONE),
    ("EV_DROP", EVF.NONE),
    ("EV_ON_OPEN", EVF.OUTPUT),
    ("EV_ON_MESSAGE", EVF.OUTPUT),
    ("EV_ON_CLOSE", EVF.OUTPUT),
]

STATES = [
    (ST_DISCONNECTED, [("EV_CONNECTED", ac_connected, ST_WAIT_HANDSHAKE),
                       ("EV_DISCONNECTED", ac_disconnected, None),
                       ("EV_DROP", ac_drop, None)]),
    (ST_WAIT_HANDSHAKE, [("EV_RX_DATA", ac_rx_data, None),
                         ("EV_DISCONNECTED", ac_disconnected, None),
                         ("EV_TX_READY", ac_ignore_tx_ready, None),
                         ("EV_DROP", ac_drop, None)]),
    (ST_CONNECTED, [("EV_RX_DATA", ac_rx_data, None),
                    ("EV_SEND_MESSAGE", ac_send_message, None),
                    ("EV_DISCONNECTED", ac_disconnected, None),
                    ("EV_TX_READY", ac_ignore_tx_ready, None),
                    ("EV_DROP", ac_drop, None)]),
]


def register_c_websocket() -> None:
    if gclass_find(C_WEBSOCKET) is not None:
        return
    register_c_tcp()
    gclass_create(C_WEBSOCKET, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  methods={"mt_create": mt_create, "mt_start": mt_start, "mt_stop": mt_stop,
                           "mt_destroy": mt_destroy},
                  description="WebSocket framing over a C_TCP, client or server side")
