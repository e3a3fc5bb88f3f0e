"""C_IOGATE: the control plane's entry: owns a loopback listener and makes one
C_IEVENT_SRV channel (with its C_WEBSOCKET) per accepted connection.

The listener is a C_TCP_S child declared in the config (``ws://127.0.0.1:PORT``).
Its connections publish to the gate (their listener's parent); on EV_CONNECTED
the gate builds the channel stack and hands the connection over. The gate keeps
the credential (``jwt``) the channels check identity cards against, and tells
its subscriber (the agent) when a channel opens, closes, or brings an answer.

Security: the gate refuses to start on a listener that is not bound to a
loopback address, so the control plane never listens beyond this host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find, gobj_create,
                  gobj_find_child, gobj_publish_event, gobj_send_event, gobj_subscribe_event,
                  kernel, log_error, log_info)
from gclasses.c_ievent_srv import C_IEVENT_SRV, register_c_ievent_srv
from gclasses.c_tcp import parse_url
from gclasses.c_tcp_s import register_c_tcp_s
from gclasses.c_websocket import C_WEBSOCKET

__all__ = ["C_IOGATE", "register_c_iogate", "gate_channels", "gate_url"]

C_IOGATE = "C_IOGATE"

ATTRS = [
    SDATA(DTP.STRING, "jwt", SDF.NONE, "", "Credential every client card must carry"),
    SDATA(DTP.INTEGER, "max_frame", SDF.RD | SDF.WR, 1 << 20, "Largest frame accepted"),
    SDATA(DTP.INTEGER, "max_message", SDF.RD | SDF.WR, 4 << 20, "Largest message accepted"),
    # 10 s: a real client sends its card right after the upgrade; a connection
    # that does not is a stray or a probe, and holding it costs memory.
    SDATA(DTP.INTEGER, "timeout_identity", SDF.RD | SDF.WR, 10000,
          "ms for a new connection to be authenticated, then it is dropped"),
    SDATA(DTP.INTEGER, "channels", SDF.RD | SDF.STATS, 0, "Open channels"),
    SDATA(DTP.POINTER, "subscriber", SDF.NONE, None, "Who gets channel events"),
]


def mt_create(gobj: GObj) -> None:
    register_c_ievent_srv()
    gobj.priv = {"seq": itertools.count(0), "channels": {}}
    subscriber = gobj.read("subscriber")
    if subscriber is not None:
        gobj_subscribe_event(gobj, None, {}, subscriber)


def mt_start(gobj: GObj) -> int:
    for child in gobj.children:
        if child.gclass.name == "C_TCP_S":
            _, host, _ = parse_url(child.read("url"))
            if not _is_loopback(host):
                log_error(gobj, "iogate.not_loopback",
                          "control plane refused: listener must bind a loopback address",
                          url=child.read("url"))
                return -1
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gate_channels(gobj: GObj) -> dict[str, GObj]:
    return gobj.priv["channels"]


def gate_url(gobj: GObj) -> str:
    """The listener's url with the real port (when the config said port 0)."""
    listener = gobj_find_child(gobj, __gclass_name__="C_TCP_S")
    if listener is None:
        return ""
    scheme = listener.read("url").split("://", 1)[0]
    return f"{scheme}://{listener.read('lHost')}:{listener.read('lPort')}"


def ac_connected(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    """A listener accepted src (a C_TCP): build channel -> websocket on top of it."""
    name = f"input-{next(gobj.priv['seq'])}"
    channel = gobj_create(name, C_IEVENT_SRV, {"gate": gobj}, gobj, volatil=True)
    ws = gobj_create("ws", C_WEBSOCKET, {"iamServer": True, "tcp": src,
                                         "max_frame": gobj.read("max_frame"),
                                         "max_message": gobj.read("max_message")}, channel)
    channel.running = ws.running = True
    gobj.priv["channels"][name] = channel
    gobj._av[gobj.gclass.attr_index["channels"]] += 1
    loop = kernel.loop or asyncio.get_event_loop()
    loop.call_later(gobj.read("timeout_identity") / 1000.0, _identity_deadline, gobj, channel)
    return gobj_send_event(ws, "EV_CONNECTED", kw, src)


def _identity_deadline(gobj: GObj, channel: GObj) -> None:
    if channel.destroyed or channel.state == "ST_SESSION":
        return
    log_info(gobj, "iogate.auth.timeout", "connection not authenticated in time; dropped",
             channel=channel.name, peername=channel.read("peername"),
             timeout_ms=gobj.read("timeout_identity"))
    if channel.children:
        gobj_send_event(channel.children[0], "EV_DROP", {"reason": "no identity card"}, channel)


def ac_stray(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    # Connection events that reach the gate after a channel took the
    # connection over (a race at close): nothing left to do.
    return 0


def ac_channel_open(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj_publish_event(gobj, "EV_ON_OPEN", {"channel": kw["channel"]})
    return 0


def ac_channel_closed(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    channel = kw["channel"]
    if gobj.priv["channels"].pop(channel.name, None) is not None:
        gobj._av[gobj.gclass.attr_index["channels"]] -= 1
    gobj_publish_event(gobj, "EV_ON_CLOSE", {"channel": channel, "reason": kw.get("reason")})
    return 0


def ac_channel_answer(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    return gobj_publish_event(gobj, "EV_CHANNEL_ANSWER", kw)


EVENT_TYPES = [
    ("EV_CONNECTED", EVF.NONE),
    ("EV_DISCONNECTED", EVF.NONE),
    ("EV_RX_DATA", EVF.NONE),
    ("EV_TX_READY", EVF.NONE),
    ("EV_CHANNEL_OPEN", EVF.NONE),
    ("EV_CHANNEL_CLOSED", EVF.NONE),
    ("EV_CHANNEL_ANSWER", EVF.OUTPUT),
    ("EV_ON_OPEN", EVF.OUTPUT | EVF.NO_WARN_SUBS),
    ("EV_ON_CLOSE", EVF.OUTPUT | EVF.NO_WARN_SUBS),
]

STATES = [("ST_IDLE", [
    ("EV_CONNECTED", ac_connected, None),
    ("EV_DISCONNECTED", ac_stray, None),
    ("EV_RX_DATA", ac_stray, None),
    ("EV_TX_READY", ac_stray, None),
    ("EV_CHANNEL_OPEN", ac_channel_open, None),
    ("EV_CHANNEL_CLOSED", ac_channel_closed, None),
    ("EV_CHANNEL_ANSWER", ac_channel_answer, None),
])]


def register_c_iogate() -> None:
    if gclass_find(C_IOGATE) is not None:
        return
    register_c_tcp_s()
    register_c_ievent_srv()
    gclass_create(C_IOGATE, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  methods={"mt_create": mt_create, "mt_start": mt_start},
                  description="Control-plane gate: loopback listener, one channel per client")
