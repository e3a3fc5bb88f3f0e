"""C_IEVENT_SRV: the server side of one inter-event channel (one client).

Made by C_IOGATE per accepted connection, with a C_WEBSOCKET child below it.
A client must first present an identity card carrying the gate's credential
(its ``jwt`` field); until then nothing else it sends is acted upon. Commands
(EV_MT_COMMAND) and stats (EV_MT_STATS) run on the service the request names
(``service`` in kw, else the card's ``dst_service``); answers go back on this
channel. Answers from a yuno to a relayed command (EV_MT_COMMAND_ANSWER) are
published to the gate for the relay to forward.

States: ST_WAIT_IDENTITY (until an accepted card), ST_SESSION.
Messages are JSON in text frames (Yuneta's own format) or msgpack in binary
frames; answers use the encoding of the request.
"""

from __future__ import annotations

import hmac
from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, build_command_response, gclass_create,
                  gclass_find, gobj_command, gobj_destroy, gobj_find_service,
                  gobj_send_event, gobj_stats, gobj_yuno, log_info, log_warning)
from gobj import msg_ievent as iev
from gclasses.c_websocket import register_c_websocket

__all__ = ["C_IEVENT_SRV", "register_c_ievent_srv", "send_iev", "channel_md_yuno"]

C_IEVENT_SRV = "C_IEVENT_SRV"

ST_WAIT_IDENTITY = "ST_WAIT_IDENTITY"
ST_SESSION = "ST_SESSION"

ATTRS = [
    SDATA(DTP.STRING, "peername", SDF.RD | SDF.STATS, "", "Peer address"),
    SDATA(DTP.STRING, "client_role", SDF.RD | SDF.STATS, "", "yuno_role from the card"),
    SDATA(DTP.STRING, "client_name", SDF.RD | SDF.STATS, "", "yuno_name from the card"),
    SDATA(DTP.STRING, "client_id", SDF.RD | SDF.STATS, "", "yuno_id from the card"),
    SDATA(DTP.INTEGER, "client_pid", SDF.RD | SDF.STATS, 0, "pid from the card"),
    SDATA(DTP.STRING, "dst_service", SDF.RD, "", "Default target of its commands"),
    SDATA(DTP.BOOLEAN, "binary", SDF.RD, False, "Client speaks msgpack"),
    SDATA(DTP.JSON, "identity", SDF.RD, None, "The accepted identity card"),
    SDATA(DTP.POINTER, "gate", SDF.NONE, None, "The C_IOGATE that made this channel"),
    SDATA(DTP.INTEGER, "rx_msgs", SDF.RD | SDF.RSTATS, 0, "Messages received"),
]


def channel_md_yuno() -> dict[str, Any]:
    yuno = gobj_yuno()
    if yuno is None:
        return iev.md_yuno("", "")
    return iev.md_yuno(yuno.read("yuno_role"), yuno.name, yuno.read("yuno_id"))


def send_iev(channel: GObj, event: str, kw: dict[str, Any]) -> int:
    """Encode and send one inter-event on this channel (text or binary, as the peer)."""
    if channel.destroyed:
        return -1
    data = iev.encode(event, kw, binary=channel.read("binary"))
    ws = channel.children[0] if channel.children else None
    if ws is None:
        return -1
    return gobj_send_event(ws, "EV_SEND_MESSAGE", {"data": data}, channel)


def mt_create(gobj: GObj) -> None:
    gobj.priv = {}


def _decode(gobj: GObj, data: Any) -> iev.IEvent | None:
    try:
        msg = iev.decode(data)
    except iev.IEventError as exc:
        log_warning(gobj, "ievent.bad_message", "malformed inter-event message; channel dropped",
                    error=str(exc), peername=gobj.read("peername"))
        _drop(gobj, f"malformed message: {exc}")
        return None
    gobj._av[gobj.gclass.attr_index["binary"]] = isinstance(data, (bytes, bytearray))
    gobj._av[gobj.gclass.attr_index["rx_msgs"]] += 1
    return msg


def _drop(gobj: GObj, reason: str) -> None:
    if gobj.children:
        gobj_send_event(gobj.children[0], "EV_DROP", {"reason": reason}, gobj)


def ac_on_open(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj.write("peername", kw.get("peername", ""))
    return 0


def ac_on_close(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gate = gobj.read("gate")
    if gate is not None and not gate.destroyed:
        gobj_send_event(gate, "EV_CHANNEL_CLOSED", {"channel": gobj,
                                                    "reason": kw.get("reason", "")}, gobj)
    gobj_destroy(gobj)
    return 0


def ac_card_expected(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    msg = _decode(gobj, kw["data"])
    if msg is None:
        return -1
    if msg.event != iev.EV_IDENTITY_CARD:
        log_warning(gobj, "ievent.auth.no_card", "message before an identity card; dropped",
                    event=msg.event, peername=gobj.read("peername"))
        send_iev(gobj, iev.EV_MT_COMMAND_ANSWER, {
            "result": -1, "comment": "identity card required first", "schema": None,
            "data": None})
        _drop(gobj, "no identity card")
        return -1
    return _check_card(gobj, msg.kw)


def _check_card(gobj: GObj, card: dict[str, Any]) -> int:
    gate = gobj.read("gate")
    token = gate.read("jwt") if gate is not None else ""
    given = str(card.get("jwt") or "")
    role = str(card.get("yuno_role") or "")
    try:
        hop = iev.top_gate(card)
    except iev.IEventError:
        hop = {}
    problem = ""
    if not role or not hop.get("src_service"):
        problem = "identity card without yuno_role or src_service"
    elif not token or not hmac.compare_digest(given.encode(), token.encode()):
        problem = "bad or missing credential"
    me = channel_md_yuno()
    if problem:
        log_warning(gobj, "ievent.auth.refused", "client refused", reason=problem,
                    client_role=role, client_pid=card.get("pid"), peername=gobj.read("peername"))
        ack = iev.identity_ack(card, -1, f"authentication refused: {problem}",
                               me["yuno_role"], me["yuno_name"], gobj.name, "") \
            if hop else iev.IEvent(iev.EV_IDENTITY_CARD_ACK,
                                   {"result": -1, "comment": f"authentication refused: {problem}"})
        send_iev(gobj, ack.event, ack.kw)
        _drop(gobj, problem)
        return -1
    dst_service = hop.get("dst_service") or "__default_service__"
    for name, value in (("client_role", role), ("client_name", card.get("yuno_name") or ""),
                        ("client_id", card.get("yuno_id") or ""),
                        ("client_pid", int(card.get("pid") or 0)),
                        ("dst_service", dst_service)):
        gobj.write(name, value)
    gobj._av[gobj.gclass.attr_index["identity"]] = {k: v for k, v in card.items()
                                                    if k not in ("jwt", iev.MD_IEV)}
    from gobj import gobj_change_state

    gobj_change_state(gobj, ST_SESSION)
    ack = iev.identity_ack(card, 0, "authenticated by credential", me["yuno_role"],
                           me["yuno_name"], gobj.name, str(card.get("username") or ""))
    send_iev(gobj, ack.event, ack.kw)
    log_info(gobj, "ievent.auth.accepted", "client authenticated", client_role=role,
             client_name=card.get("yuno_name"), client_pid=card.get("pid"),
             peername=gobj.read("peername"))
    if gate is not None:
        gobj_send_event(gate, "EV_CHANNEL_OPEN", {"channel": gobj}, gobj)
    return 0


def ac_session_message(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    msg = _decode(gobj, kw["data"])
    if msg is None:
        return -1
    if msg.event == iev.EV_MT_COMMAND:
        return _run_command(gobj, msg.kw)
    if msg.event == iev.EV_MT_STATS:
        return _run_stats(gobj, msg.kw)
    if msg.event in (iev.EV_MT_COMMAND_ANSWER, iev.EV_MT_STATS_ANSWER):
        gate = gobj.read("gate")
        return gobj_send_event(gate, "EV_CHANNEL_ANSWER", {"channel": gobj, "event": msg.event,
                                                           "kw": msg.kw}, gobj)
    log_info(gobj, "ievent.unknown_event", "inter-event not handled here; ignored",
             event=msg.event, peername=gobj.read("peername"))
    return -1


def _target(gobj: GObj, kw: dict[str, Any]) -> GObj | None:
    name = kw.get("service") or gobj.read("dst_service")
    return gobj_find_service(name)


def _run_command(gobj: GObj, kw: dict[str, Any]) -> int:
    line = str(kw.get(iev.MSG_COMMAND) or "")
    try:
        kw = iev.mark_input(kw, gobj.name, gobj.read("client_role"))
    except iev.IEventError as exc:
        return _answer(gobj, kw, build_command_response(-1, f"bad request: {exc}"))
    target = _target(gobj, kw)
    if target is None:
        return _answer(gobj, kw, build_command_response(
            -1, f"service not found: {kw.get('service') or gobj.read('dst_service')!r}"))
    cmd_kw = {k: v for k, v in kw.items() if k not in (iev.MSG_COMMAND, "service")}
    cmd_kw["__channel__"] = gobj
    response = gobj_command(target, line, cmd_kw, gobj)
    if response is None:
        return 0  # asynchronous: the target answers later through send_answer()
    return _answer(gobj, kw, response)


def _run_stats(gobj: GObj, kw: dict[str, Any]) -> int:
    name = str(kw.get(iev.MSG_STATS) or "")
    kw = iev.mark_input(kw, gobj.name, gobj.read("client_role"))
    target = _target(gobj, kw)
    if target is None:
        response = build_command_response(-1, f"service not found: {kw.get('service')!r}")
    else:
        response = gobj_stats(target, name, {}, gobj)
    ans = iev.stats_answer(kw, response, gobj.name, gobj.read("client_role"), channel_md_yuno())
    return send_iev(gobj, ans.event, ans.kw)


def _answer(gobj: GObj, request_kw: dict[str, Any], response: dict[str, Any]) -> int:
    ans = iev.command_answer(request_kw, _jsonable(response), gobj.name,
                             gobj.read("client_role"), channel_md_yuno())
    return send_iev(gobj, ans.event, ans.kw)


def _jsonable(response: dict[str, Any]) -> dict[str, Any]:
    return {k: response.get(k) for k in ("result", "comment", "schema", "data")}


def send_answer(channel: GObj, request_kw: dict[str, Any], response: dict[str, Any]) -> int:
    """Answer, later, a command that returned None (asynchronous)."""
    return _answer(channel, request_kw, response)


EVENT_TYPES = [
    ("EV_ON_OPEN", EVF.NONE),
    ("EV_ON_MESSAGE", EVF.NONE),
    ("EV_ON_CLOSE", EVF.NONE),
]

STATES = [
    (ST_WAIT_IDENTITY, [("EV_ON_OPEN", ac_on_open, None),
                        ("EV_ON_MESSAGE", ac_card_expected, None),
                        ("EV_ON_CLOSE", ac_on_close, None)]),
    (ST_SESSION, [("EV_ON_MESSAGE", ac_session_message, None),
                  ("EV_ON_CLOSE", ac_on_close, None)]),
]


def register_c_ievent_srv() -> None:
    if gclass_find(C_IEVENT_SRV) is not None:
        return
    register_c_websocket()
    gclass_create(C_IEVENT_SRV, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  methods={"mt_create": mt_create},
                  description="Server side of an inter-event channel: identity, commands")
