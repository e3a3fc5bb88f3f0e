"""C_IEVENT_CLI: the client side of an inter-event channel.

A yuno launched by the agent has one (service ``agent_client``) and ycommand
uses one. It connects (C_WEBSOCKET -> C_TCP children, reconnecting while the
server is away), presents its identity card with the credential (``jwt``),
and once acknowledged:

* runs the commands the server sends (EV_MT_COMMAND) on the service they name
  (``service``, default ``__yuno__``); when ``gobj=NAME`` is given and that
  service has no such command, on that gobj (a listener's ``view-cert``);
* publishes the answers to its own requests (EV_MT_COMMAND_ANSWER) to its
  subscriber; requests leave through :func:`send_command`;
* plays or pauses the yuno on EV_PLAY_YUNO / EV_PAUSE_YUNO.

States: ST_DISCONNECTED, ST_WAIT_IDACK, ST_SESSION. The identity-ack deadline
is a pure-child C_TIMER (EV_TIMEOUT in the table).
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, build_command_response, gclass_create,
                  gclass_find, gobj_change_state, gobj_command, gobj_create,
                  gobj_create_pure_child, gobj_find_gobj, gobj_find_service, gobj_pause,
                  gobj_play, gobj_publish_event, gobj_send_event, gobj_start, gobj_stats,
                  gobj_stop, gobj_subscribe_event, gobj_yuno, log_info, log_warning)
from gobj import msg_ievent as iev
from gclasses.c_ievent_srv import channel_md_yuno
from gclasses.c_timer import C_TIMER, clear_timeout, register_c_timer, set_timeout
from gclasses.c_websocket import C_WEBSOCKET, register_c_websocket

__all__ = ["C_IEVENT_CLI", "register_c_ievent_cli", "send_command", "send_stats"]

C_IEVENT_CLI = "C_IEVENT_CLI"

ST_DISCONNECTED = "ST_DISCONNECTED"
ST_WAIT_IDACK = "ST_WAIT_IDACK"
ST_SESSION = "ST_SESSION"

ATTRS = [
    SDATA(DTP.STRING, "url", SDF.RD | SDF.WR, "ws://127.0.0.1:1991", "Server url"),
    SDATA(DTP.STRING, "jwt", SDF.NONE, "", "Credential for the identity card"),
    SDATA(DTP.STRING, "jwt_file", SDF.RD | SDF.WR, "", "File holding the credential"),
    SDATA(DTP.STRING, "remote_role", SDF.RD | SDF.WR, "yuneta_agent", "Server's role"),
    SDATA(DTP.STRING, "remote_service", SDF.RD | SDF.WR, "__default_service__",
          "Server service that runs our commands"),
    SDATA(DTP.STRING, "role", SDF.RD | SDF.WR, "", "Role in the card (default: the yuno's)"),
    SDATA(DTP.JSON, "crypto", SDF.RD | SDF.WR, None, "TLS config for wss://"),
    SDATA(DTP.BOOLEAN, "binary", SDF.RD | SDF.WR, False, "Speak msgpack (binary frames)"),
    SDATA(DTP.INTEGER, "timeout_idack", SDF.RD | SDF.WR, 5000, "ms to wait for the ack"),
    SDATA(DTP.INTEGER, "timeout_between_connections", SDF.RD | SDF.WR, 2000,
          "ms before reconnecting; 0 none"),
    SDATA(DTP.DICT, "extra_info", SDF.RD | SDF.WR, None, "Extra keys for the card"),
    SDATA(DTP.POINTER, "subscriber", SDF.NONE, None, "Who gets answers and open/close"),
    SDATA(DTP.INTEGER, "commands_run", SDF.RD | SDF.RSTATS, 0, "Commands run for the server"),
]


class _Priv:
    def __init__(self) -> None:
        self.ws: GObj | None = None
        self.timer: GObj | None = None


def mt_create(gobj: GObj) -> None:
    register_c_timer()
    register_c_websocket()
    gobj.priv = _Priv()
    subscriber = gobj.read("subscriber")
    if subscriber is not None:
        gobj_subscribe_event(gobj, None, {}, subscriber)
    gobj.priv.timer = gobj_create_pure_child("idack", C_TIMER, {}, gobj)
    gobj.priv.ws = gobj_create("ws", C_WEBSOCKET, {
        "url": gobj.read("url"), "crypto": gobj.read("crypto"),
        "timeout_between_connections": gobj.read("timeout_between_connections")}, gobj)


def mt_start(gobj: GObj) -> int:
    if not gobj.read("jwt") and gobj.read("jwt_file"):
        try:
            with open(gobj.read("jwt_file"), encoding="utf-8") as f:
                gobj.write("jwt", f.read().strip())
        except OSError as exc:
            log_warning(gobj, "ievent_cli.jwt_file_unreadable",
                        "credential file unreadable; connecting without it",
                        path=gobj.read("jwt_file"), error=str(exc))
    return gobj_start(gobj.priv.ws)


def mt_stop(gobj: GObj) -> None:
    clear_timeout(gobj.priv.timer)
    if gobj.priv.ws.running:
        gobj_stop(gobj.priv.ws)


def _send(gobj: GObj, event: str, kw: dict[str, Any]) -> int:
    data = iev.encode(event, kw, binary=gobj.read("binary"))
    return gobj_send_event(gobj.priv.ws, "EV_SEND_MESSAGE", {"data": data}, gobj)


def _identity(gobj: GObj) -> iev.IEvent:
    yuno = gobj_yuno()
    role = gobj.read("role") or (yuno.read("yuno_role") if yuno else "")
    name = yuno.name if yuno else ""
    return iev.identity_card(
        yuno_role=role, yuno_name=name, yuno_id=yuno.read("yuno_id") if yuno else "",
        pid=os.getpid(), jwt=gobj.read("jwt"), dst_role=gobj.read("remote_role"),
        dst_service=gobj.read("remote_service"), src_service=gobj.name,
        username=_username(), host=socket.gethostname(),
        yuno_version=yuno.read("yuno_version") if yuno else "",
        playing=bool(yuno and yuno.playing), launch_id=yuno.read("launch_id") if yuno else 0,
        extra_info=gobj.read("extra_info") or {})


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def ac_on_open(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    card = _identity(gobj)
    set_timeout(gobj.priv.timer, gobj.read("timeout_idack"))
    return _send(gobj, card.event, card.kw)


def ac_on_close(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    clear_timeout(gobj.priv.timer)
    was_session = gobj.last_state == ST_SESSION
    if was_session:
        log_info(gobj, "ievent_cli.closed", "channel closed", url=gobj.read("url"),
                 reason=kw.get("reason"))
    gobj_publish_event(gobj, "EV_ON_CLOSE", {"reason": kw.get("reason", "")})
    return 0


def ac_idack_timeout(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    log_warning(gobj, "ievent_cli.no_ack", "no identity ack in time; reconnecting",
                url=gobj.read("url"), timeout_ms=gobj.read("timeout_idack"))
    gobj_send_event(gobj.priv.ws, "EV_DROP", {"reason": "no identity ack"}, gobj)
    return 0


def _decode(gobj: GObj, data: Any) -> iev.IEvent | None:
    try:
        return iev.decode(data)
    except iev.IEventError as exc:
        log_warning(gobj, "ievent_cli.bad_message", "malformed message from server; dropped",
                    error=str(exc))
        gobj_send_event(gobj.priv.ws, "EV_DROP", {"reason": "malformed message"}, gobj)
        return None


def ac_wait_ack(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    msg = _decode(gobj, kw["data"])
    if msg is None:
        return -1
    if msg.event != iev.EV_IDENTITY_CARD_ACK:
        log_info(gobj, "ievent_cli.early_message", "message before the ack; ignored",
                 event=msg.event)
        return -1
    clear_timeout(gobj.priv.timer)
    result = int(msg.kw.get("result", -1))
    if result < 0:
        log_warning(gobj, "ievent_cli.refused", "server refused our identity card",
                    url=gobj.read("url"), comment=msg.kw.get("comment"))
        gobj_publish_event(gobj, "EV_ON_ID_NAK", {"comment": msg.kw.get("comment", "")})
        gobj_send_event(gobj.priv.ws, "EV_DROP", {"reason": "identity refused"}, gobj)
        return -1
    gobj_change_state(gobj, ST_SESSION)
    gobj_publish_event(gobj, "EV_ON_OPEN", {"url": gobj.read("url"),
                                            "md_yuno": msg.kw.get(iev.MD_YUNO)})
    return 0


def ac_session_message(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    msg = _decode(gobj, kw["data"])
    if msg is None:
        return -1
    if msg.event in (iev.EV_MT_COMMAND_ANSWER, iev.EV_MT_STATS_ANSWER):
        return gobj_publish_event(gobj, msg.event, msg.kw)
    if msg.event == iev.EV_MT_COMMAND:
        return _run_command(gobj, msg.kw)
    if msg.event == iev.EV_MT_STATS:
        return _run_stats(gobj, msg.kw)
    if msg.event in (iev.EV_PLAY_YUNO, iev.EV_PAUSE_YUNO):
        yuno = gobj_yuno()
        if yuno is not None:
            (gobj_play if msg.event == iev.EV_PLAY_YUNO else gobj_pause)(yuno)
        return 0
    log_info(gobj, "ievent_cli.unknown_event", "inter-event not handled here; ignored",
             event=msg.event)
    return -1


def _run_command(gobj: GObj, kw: dict[str, Any]) -> int:
    gobj._av[gobj.gclass.attr_index["commands_run"]] += 1
    line = str(kw.get(iev.MSG_COMMAND) or "")
    service = kw.get("service") or "__yuno__"
    target = gobj_find_service(service)
    name = line.split(None, 1)[0] if line.strip() else ""
    if kw.get("gobj") and (target is None or target.gclass.find_command(name) is None):
        target = gobj_find_gobj(str(kw["gobj"]))
        if target is None:
            response = build_command_response(-1, f"gobj not found: {kw['gobj']!r}")
            return _answer(gobj, kw, response)
    if target is None:
        return _answer(gobj, kw, build_command_response(-1, f"service not found: {service!r}"))
    cmd_kw = {k: v for k, v in kw.items() if k not in (iev.MD_IEV, iev.MSG_COMMAND, "service")}
    response = gobj_command(target, line, cmd_kw, gobj)
    if response is None:
        response = build_command_response(0, "command accepted; no synchronous answer")
    return _answer(gobj, kw, response)


def _answer(gobj: GObj, request_kw: dict[str, Any], response: dict[str, Any]) -> int:
    response = {k: response.get(k) for k in ("result", "comment", "schema", "data")}
    ans = iev.command_answer(request_kw, response, gobj.name, "", channel_md_yuno())
    return _send(gobj, ans.event, ans.kw)


def _run_stats(gobj: GObj, kw: dict[str, Any]) -> int:
    target = gobj_find_service(kw.get("service") or "__yuno__")
    response = gobj_stats(target, str(kw.get(iev.MSG_STATS) or ""), {}, gobj) if target else \
        build_command_response(-1, f"service not found: {kw.get('service')!r}")
    ans = iev.stats_answer(kw, response, gobj.name, "", channel_md_yuno())
    return _send(gobj, ans.event, ans.kw)


def send_command(gobj: GObj, line: str, kw: dict[str, Any] | None = None) -> int:
    """Send a command line to the server; its answer(s) arrive as EV_MT_COMMAND_ANSWER."""
    if gobj.state != ST_SESSION:
        return -1
    yuno = gobj_yuno()
    msg = iev.command(line, kw, gobj.read("remote_role"), gobj.read("remote_service"),
                      gobj.read("role") or (yuno.read("yuno_role") if yuno else ""),
                      gobj.name, _username(), socket.gethostname(),
                      src_yuno=yuno.name if yuno else "")
    return _send(gobj, msg.event, msg.kw)


def send_stats(gobj: GObj, name: str, kw: dict[str, Any] | None = None) -> int:
    if gobj.state != ST_SESSION:
        return -1
    msg = iev.stats(name, kw, gobj.read("remote_role"), gobj.read("remote_service"),
                    gobj.read("role"), gobj.name, _username(), socket.gethostname())
    return _send(gobj, msg.event, msg.kw)


EVENT_TYPES = [
    ("EV_ON_OPEN", EVF.OUTPUT),
    ("EV_ON_CLOSE", EVF.OUTPUT | EVF.NO_WARN_SUBS),
    ("EV_ON_MESSAGE", EVF.NONE),
    ("EV_TIMEOUT", EVF.NONE),
    ("EV_ON_ID_NAK", EVF.OUTPUT | EVF.NO_WARN_SUBS),
    (iev.EV_MT_COMMAND_ANSWER, EVF.OUTPUT),
    (iev.EV_MT_STATS_ANSWER, EVF.OUTPUT),
]

STATES = [
    (ST_DISCONNECTED, [("EV_ON_OPEN", ac_on_open, ST_WAIT_IDACK),
                       ("EV_ON_CLOSE", ac_on_close, None)]),
    (ST_WAIT_IDACK, [("EV_ON_MESSAGE", ac_wait_ack, None),
                     ("EV_TIMEOUT", ac_idack_timeout, None),
                     ("EV_ON_CLOSE", ac_on_close, ST_DISCONNECTED)]),
    (ST_SESSION, [("EV_ON_MESSAGE", ac_session_message, None),
                  ("EV_ON_CLOSE", ac_on_close, ST_DISCONNECTED)]),
]


def register_c_ievent_cli() -> None:
    if gclass_find(C_IEVENT_CLI) is not None:
        return
    register_c_websocket()
    register_c_timer()
    gclass_create(C_IEVENT_CLI, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  methods={"mt_create": mt_create, "mt_start": mt_start, "mt_stop": mt_stop},
                  description="Client side of an inter-event channel (yunos, ycommand)")
