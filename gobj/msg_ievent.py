"""Inter-event messages: ``{"event": "EV_...", "kw": {...}}`` between yunos.

Theory of operation
-------------------
One message is one WebSocket frame: compact JSON in a text frame (Yuneta's own
wire format, see ``reference/yuneta-wire.md``) or msgpack in a binary frame.
Routing metadata rides inside ``kw``:

``kw["__md_iev__"]``
    ``ievent_gate_stack``: list of hops, newest first (LIFO). A hop is
    ``{dst_yuno, dst_role, dst_service, src_yuno, src_role, src_service, user,
    host}``; the server side adds ``input_service``, ``input_channel`` and
    ``__username__`` so that an answer can find the channel it came in on.
    ``__msg_type__``: ``"__identity__"``, ``"__command__"`` or ``"__stats__"``.
    ``command_stack`` / ``stats_stack``: what was asked, echoed on the answer.
``kw["__md_yuno__"]``
    on answers: who answered (``realm_name, yuno_role, yuno_name, yuno_id``).

An answer reverses only the *first* hop (src and dst swapped), so a relay that
pushed its own hop on the way out pops it on the way back and finds the
caller's hop on top again (``relay_command`` / ``unrelay_answer``).

The builders return new dicts and never change what they are given.
"""

from __future__ import annotations

import copy
import json
from typing import Any, NamedTuple

import msgpack

EV_IDENTITY_CARD = "EV_IDENTITY_CARD"
EV_IDENTITY_CARD_ACK = "EV_IDENTITY_CARD_ACK"
EV_MT_COMMAND = "EV_MT_COMMAND"
EV_MT_COMMAND_ANSWER = "EV_MT_COMMAND_ANSWER"
EV_MT_STATS = "EV_MT_STATS"
EV_MT_STATS_ANSWER = "EV_MT_STATS_ANSWER"
EV_PLAY_YUNO = "EV_PLAY_YUNO"
EV_PAUSE_YUNO = "EV_PAUSE_YUNO"

MD_IEV = "__md_iev__"
MD_YUNO = "__md_yuno__"
GATE_STACK = "ievent_gate_stack"
COMMAND_STACK = "command_stack"
STATS_STACK = "stats_stack"
MSG_TYPE = "__msg_type__"
MSG_IDENTITY = "__identity__"
MSG_COMMAND = "__command__"
MSG_STATS = "__stats__"

DEFAULT_MAX_DEPTH = 32
# Bytes that can open a msgpack container: fixmap, fixarray, array16/32, map16/32.
_PACK_OPENERS = bytes(range(0x80, 0xA0)) + bytes(range(0xDC, 0xE0))
_NOT_PACK_OPENERS = bytes(b for b in range(256) if b not in _PACK_OPENERS)
_GATE_KEYS = ("dst_yuno", "dst_role", "dst_service", "src_yuno", "src_role", "src_service")

Kw = dict[str, Any]


class IEventError(ValueError):
    """A message could not be encoded or decoded; ``str()`` names the problem."""


class IEvent(NamedTuple):
    event: str
    kw: Kw


# --------------------------------------------------------------------------- codec
def encode(event: str, kw: Kw, binary: bool = False) -> str | bytes:
    """Compact JSON (a text frame) or msgpack (a binary frame); event first, as on the wire."""
    msg = {"event": event, "kw": kw}
    try:
        if binary:
            return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise IEventError(f"cannot encode {event!r}: {exc}") from None


def decode(data: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> IEvent:
    """Parse one message: str as JSON, bytes as msgpack. Raise IEventError
    naming the problem. ``max_depth`` counts containers, the outer object being 1."""
    if isinstance(data, str):
        obj = _loads_json(data, max_depth)
    else:
        obj = _loads_msgpack(data)
        # Every container has one opener byte, so fewer openers than the limit
        # (counted at C speed) means the walk cannot fail.
        if len(data.translate(None, _NOT_PACK_OPENERS)) > max_depth:
            _check_depth(obj, max_depth)
    return _check_shape(obj)


def _loads_json(text: str, max_depth: int) -> Any:
    try:
        obj = json.loads(text)
    except RecursionError:
        raise IEventError(f"nesting deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise IEventError(f"invalid JSON: {exc}") from None
    # Depth never exceeds the number of opening brackets, so this (C-speed)
    # count lets a usual message skip the walk.
    if text.count("{") + text.count("[") > max_depth:
        _check_depth(obj, max_depth)
    return obj


def _loads_msgpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except msgpack.ExtraData:
        raise IEventError("invalid msgpack: extra data after the message") from None
    except msgpack.StackError:
        raise IEventError("nesting deeper than the msgpack decoder's stack") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IEventError(f"invalid msgpack: {exc or type(exc).__name__}") from None


def _check_depth(obj: Any, max_depth: int) -> None:
    # Iterative, so a hostile depth cannot exhaust Python's stack.
    todo: list[tuple[Any, int]] = [(obj, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise IEventError(f"nesting deeper than {max_depth} levels")
        todo.extend((child, depth + 1) for child in children)


def _check_shape(obj: Any) -> IEvent:
    if not isinstance(obj, dict):
        raise IEventError(f"message is not an object but {type(obj).__name__}")
    if "event" not in obj:
        raise IEventError("message has no 'event'")
    event = obj["event"]
    if not isinstance(event, str) or not event:
        raise IEventError(f"'event' must be a non-empty string, not {event!r:.40}")
    kw = obj.get("kw", {})
    if not isinstance(kw, dict):
        raise IEventError(f"'kw' of {event} must be an object, not {type(kw).__name__}")
    return IEvent(event, kw)


# --------------------------------------------------------------------------- gate hops and stacks
def gate_entry(dst_role: str, dst_service: str, src_role: str, src_service: str,
               user: str, host: str, dst_yuno: str = "", src_yuno: str = "") -> Kw:
    """One hop, keys in the wire's order."""
    return {"dst_yuno": dst_yuno, "dst_role": dst_role, "dst_service": dst_service,
            "src_yuno": src_yuno, "src_role": src_role, "src_service": src_service,
            "user": user, "host": host}


def md_yuno(yuno_role: str, yuno_name: str, yuno_id: str = "", realm_name: str = "") -> Kw:
    return {"realm_name": realm_name, "yuno_role": yuno_role, "yuno_name": yuno_name, "yuno_id": yuno_id}


def _with_md(kw: Kw) -> tuple[Kw, Kw]:
    """A shallow copy of kw whose __md_iev__ is a deep copy we may change."""
    out = dict(kw)
    md = copy.deepcopy(kw.get(MD_IEV, {}))
    if not isinstance(md, dict):
        raise IEventError(f"{MD_IEV} must be an object, not {type(md).__name__}")
    out[MD_IEV] = md
    return out, md


def push_stack(kw: Kw, name: str, item: Kw) -> Kw:
    """Return kw with ``item`` on top (index 0) of __md_iev__[name]."""
    out, md = _with_md(kw)
    md[name] = [item] + list(md.get(name) or [])
    return out


def pop_stack(kw: Kw, name: str) -> tuple[Kw, Kw]:
    """Return (top item of __md_iev__[name], kw without it)."""
    out, md = _with_md(kw)
    stack = list(md.get(name) or [])
    if not stack:
        raise IEventError(f"{MD_IEV}.{name} is empty: nothing to pop")
    md[name] = stack[1:]
    return stack[0], out


def push_gate(kw: Kw, entry: Kw) -> Kw:
    return push_stack(kw, GATE_STACK, entry)


def pop_gate(kw: Kw) -> tuple[Kw, Kw]:
    return pop_stack(kw, GATE_STACK)


def top_gate(kw: Kw) -> Kw:
    stack = (kw.get(MD_IEV) or {}).get(GATE_STACK) or []
    if not stack:
        raise IEventError(f"{MD_IEV}.{GATE_STACK} is empty")
    return dict(stack[0])


def reverse_hop(entry: Kw, src_yuno: str, src_role: str, src_service: str) -> Kw:
    """The hop an answer takes back: dst_* become the asker's src_*, and src_*
    name the answerer (its yuno name, its role, the channel it answers on).
    user, host and any extra keys (input_*, __username__) are kept."""
    out = {"dst_yuno": entry.get("src_yuno", ""), "dst_role": entry.get("src_role", ""),
           "dst_service": entry.get("src_service", ""), "src_yuno": src_yuno,
           "src_role": src_role, "src_service": src_service}
    out.update((k, v) for k, v in entry.items() if k not in _GATE_KEYS)
    return out


def mark_input(kw: Kw, channel_name: str, username: str, input_service: str = "__input_side__") -> Kw:
    """What a server channel notes on the top hop of a request it receives, so
    that the answer (or a relayed one) can go back on the same channel."""
    out, md = _with_md(kw)
    stack = md.get(GATE_STACK) or []
    if not stack:
        raise IEventError(f"{MD_IEV}.{GATE_STACK} is empty: cannot mark the input channel")
    stack[0].update(input_service=input_service, input_channel=channel_name, __username__=username)
    return out


# --------------------------------------------------------------------------- identity card
def identity_card(yuno_role: str, yuno_name: str, yuno_id: str, pid: int, jwt: str,
                  dst_role: str, dst_service: str, src_service: str, username: str,
                  host: str, yuno_version: str, *, yuno_tag: str = "", yuno_release: str = "",
                  yuneta_version: str = "", playing: bool = False, watcher_pid: int = 0,
                  launch_id: int = 0, yuno_startdate: str = "", node_id: str = "",
                  required_services: list[str] | None = None, dst_yuno: str = "",
                  extra_info: Kw | None = None) -> IEvent:
    """The card a client sends on open; ``src_service`` is its own channel name
    (ycommand uses the URL). Keys in the order Yuneta sends them."""
    kw: Kw = {"yuno_role": yuno_role, "yuno_id": yuno_id, "yuno_name": yuno_name,
              "yuno_tag": yuno_tag, "yuno_version": yuno_version, "yuno_release": yuno_release,
              "yuneta_version": yuneta_version or yuno_version, "playing": playing, "pid": pid,
              "watcher_pid": watcher_pid, "jwt": jwt, "username": username,
              "launch_id": launch_id, "yuno_startdate": yuno_startdate, "id": node_id,
              "required_services": list(required_services or [])}
    kw.update(extra_info or {})
    hop = gate_entry(dst_role, dst_service, yuno_role, src_service, username, host,
                     dst_yuno=dst_yuno, src_yuno=yuno_name)
    kw[MD_IEV] = {GATE_STACK: [hop], MSG_TYPE: MSG_IDENTITY}
    return IEvent(EV_IDENTITY_CARD, kw)


def identity_ack(card_kw: Kw, result: int, comment: str, agent_role: str, agent_name: str,
                 channel_name: str, username: str, *, session_id: str = "",
                 services_roles: Kw | None = None, superuser: bool = False,
                 agent_id: str = "", realm_name: str = "") -> IEvent:
    """The server's answer to a card: the card's first hop reversed (src_service
    = the channel, src_yuno = the server's yuno name), plus __md_yuno__."""
    hop = top_gate(card_kw)
    kw: Kw = {"result": result, "comment": comment, "username": username,
              "session_id": session_id, "dst_service": hop.get("dst_service", ""),
              "services_roles": dict(services_roles or {}), "superuser": superuser}
    back = reverse_hop(hop, agent_name, agent_role, channel_name)
    rest = (card_kw[MD_IEV].get(GATE_STACK) or [])[1:]
    kw[MD_IEV] = {GATE_STACK: [back] + copy.deepcopy(rest), MSG_TYPE: MSG_IDENTITY}
    kw[MD_YUNO] = md_yuno(agent_role, agent_name, agent_id, realm_name)
    return IEvent(EV_IDENTITY_CARD_ACK, kw)


# --------------------------------------------------------------------------- commands and stats
def _request(event: str, msg_type: str, stack: str, name_key: str, line: str, kw: Kw | None,
             hop: Kw, md_command: Kw | None) -> IEvent:
    out: Kw = {MD_IEV: {stack: [{name_key: line, "kw": dict(md_command or {})}],
                        GATE_STACK: [hop], MSG_TYPE: msg_type}}
    out.update((k, v) for k, v in (kw or {}).items() if k != MD_IEV)
    out[msg_type] = line  # "__command__": line, "__stats__": name
    return IEvent(event, out)


def command(line: str, kw: Kw | None, dst_role: str, dst_service: str, src_role: str,
            src_service: str, user: str, host: str, *, dst_yuno: str = "", src_yuno: str = "",
            md_command: Kw | None = None) -> IEvent:
    """EV_MT_COMMAND as ycommand sends it: the whole line in ``__command__``."""
    hop = gate_entry(dst_role, dst_service, src_role, src_service, user, host, dst_yuno, src_yuno)
    return _request(EV_MT_COMMAND, MSG_COMMAND, COMMAND_STACK, "command", line, kw, hop, md_command)


def stats(name: str, kw: Kw | None, dst_role: str, dst_service: str, src_role: str,
          src_service: str, user: str, host: str, *, dst_yuno: str = "", src_yuno: str = "",
          md_stats: Kw | None = None) -> IEvent:
    """EV_MT_STATS: the command's shape with stats_stack/__stats__ (by analogy;
    no stats exchange was captured in yuneta-wire.md)."""
    hop = gate_entry(dst_role, dst_service, src_role, src_service, user, host, dst_yuno, src_yuno)
    return _request(EV_MT_STATS, MSG_STATS, STATS_STACK, "stats", name, kw, hop, md_stats)


def _answer(event: str, msg_type: str, stack: str, request_kw: Kw, response: Kw,
            channel_name: str, username: str, md: Kw, input_service: str,
            src_yuno: str | None, src_role: str | None) -> IEvent:
    req_md = request_kw.get(MD_IEV) or {}
    hop = top_gate(request_kw)
    hop.setdefault("input_service", input_service)
    hop.setdefault("input_channel", channel_name)
    hop.setdefault("__username__", username)
    back = reverse_hop(hop, md.get("yuno_name", "") if src_yuno is None else src_yuno,
                       md.get("yuno_role", "") if src_role is None else src_role, channel_name)
    kw: Kw = {"result": response.get("result", 0), "comment": response.get("comment", ""),
              "schema": response.get("schema"), "data": response.get("data")}
    kw[MD_IEV] = {stack: copy.deepcopy(req_md.get(stack) or []),
                  GATE_STACK: [back] + copy.deepcopy((req_md.get(GATE_STACK) or [])[1:]),
                  MSG_TYPE: msg_type}
    kw[MD_YUNO] = dict(md)
    return IEvent(event, kw)


def command_answer(request_kw: Kw, response: Kw, channel_name: str, username: str, md_yuno: Kw, *,
                   input_service: str = "__input_side__", src_yuno: str | None = None,
                   src_role: str | None = None) -> IEvent:
    """EV_MT_COMMAND_ANSWER for a request received on ``channel_name``.
    ``response`` is ``{result, comment, schema, data}``; ``md_yuno`` is the answerer's
    __md_yuno__, whose name and role fill src_yuno/src_role unless given (a relay
    answering on behalf of a yuno passes its own)."""
    return _answer(EV_MT_COMMAND_ANSWER, MSG_COMMAND, COMMAND_STACK, request_kw, response,
                   channel_name, username, md_yuno, input_service, src_yuno, src_role)


def stats_answer(request_kw: Kw, response: Kw, channel_name: str, username: str, md_yuno: Kw, *,
                 input_service: str = "__input_side__", src_yuno: str | None = None,
                 src_role: str | None = None) -> IEvent:
    return _answer(EV_MT_STATS_ANSWER, MSG_STATS, STATS_STACK, request_kw, response,
                   channel_name, username, md_yuno, input_service, src_yuno, src_role)


# --------------------------------------------------------------------------- relays
def relay_command(request_kw: Kw, line: str, hop: Kw, md_command: Kw | None = None) -> Kw:
    """What the agent sends a yuno for a request it received (already
    ``mark_input``-ed): its own hop and the relayed line on top of both stacks."""
    out = push_gate(request_kw, hop)
    out = push_stack(out, COMMAND_STACK, {"command": line, "kw": dict(md_command or {})})
    out[MSG_COMMAND] = line
    return out


def unrelay_answer(answer_kw: Kw) -> tuple[Kw, Kw]:
    """Undo ``relay_command`` on the yuno's answer: pop the relay's hop and
    command. Returns (the yuno's reversed hop, kw whose top hop is the caller's,
    still carrying input_channel so the relay knows where to send it)."""
    hop, out = pop_gate(answer_kw)
    _, out = pop_stack(out, COMMAND_STACK)
    return hop, out


def answer_back(relayed_kw: Kw, relay_md: Kw) -> IEvent:
    """The answer the relay sends its caller for an unrelayed answer: the
    caller's hop reversed by the relay, the answerer's result and __md_yuno__."""
    hop = top_gate(relayed_kw)
    ans = command_answer(relayed_kw, relayed_kw, hop.get("input_channel", ""),
                         hop.get("__username__", ""), relayed_kw.get(MD_YUNO) or relay_md,
                         input_service=hop.get("input_service", "__input_side__"),
                         src_yuno=relay_md.get("yuno_name", ""), src_role=relay_md.get("yuno_role", ""))
    return ans
