"""C_YCOMMAND: the CLI's brain. It owns a C_IEVENT_CLI to the agent, sends the
command lines one by one, prints every answer, and ends the process with the
result of the last one.

A relayed command (``command-yuno``) is answered once per matching yuno; each
answer says ``__relay__ {index, total}``, so the next line is sent once all have
come, or once ``wait`` seconds pass without the rest. A line starting with ``-``
may fail without stopping the chain.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find, gobj_create_service,
                  gobj_start, kernel)
from gobj import msg_ievent as iev
from gclasses.c_ievent_cli import C_IEVENT_CLI, register_c_ievent_cli, send_command

__all__ = ["C_YCOMMAND", "register_c_ycommand", "render_answer"]

C_YCOMMAND = "C_YCOMMAND"

ATTRS = [
    SDATA(DTP.STRING, "url", SDF.RD, "ws://127.0.0.1:1991", "Agent url"),
    SDATA(DTP.STRING, "jwt", SDF.NONE, "", "Credential"),
    SDATA(DTP.STRING, "service", SDF.RD, "__default_service__", "Agent service for commands"),
    SDATA(DTP.LIST, "commands", SDF.RD, None, "Lines to run"),
    SDATA(DTP.REAL, "wait", SDF.RD, 2.0, "Seconds to wait for the remaining answers"),
    SDATA(DTP.REAL, "timeout", SDF.RD, 10.0, "Seconds to wait for the connection"),
    SDATA(DTP.BOOLEAN, "json", SDF.RD, False, "Print raw answers as JSON"),
    SDATA(DTP.BOOLEAN, "binary", SDF.RD, False, "Speak msgpack"),
    SDATA(DTP.BOOLEAN, "interactive", SDF.RD, False, "Read lines from the terminal"),
    SDATA(DTP.INTEGER, "exit_code", SDF.RD, 0, "What the process exits with"),
    SDATA(DTP.POINTER, "on_done", SDF.NONE, None, "Called with the exit code at the end"),
]


class _Priv:
    def __init__(self) -> None:
        self.cli: GObj | None = None
        self.queue: list[str] = []
        self.current = ""
        self.expected = 1
        self.got = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.connect_timer: asyncio.TimerHandle | None = None
        self.results: list[int] = []


def _loop() -> asyncio.AbstractEventLoop:
    return kernel.loop or asyncio.get_event_loop()


def mt_create(gobj: GObj) -> None:
    register_c_ievent_cli()
    priv = _Priv()
    gobj.priv = priv
    priv.queue = list(gobj.read("commands") or [])
    priv.cli = gobj_create_service(gobj.read("url"), C_IEVENT_CLI, {
        "url": gobj.read("url"), "jwt": gobj.read("jwt"), "role": "ycommand",
        "remote_service": gobj.read("service"),
        "binary": gobj.read("binary"), "subscriber": gobj,
        "timeout_between_connections": 0}, gobj)


def mt_start(gobj: GObj) -> int:
    gobj.priv.connect_timer = _loop().call_later(gobj.read("timeout"), _no_connection, gobj)
    return gobj_start(gobj.priv.cli)


def _no_connection(gobj: GObj) -> None:
    print(f"ycommand: cannot reach the agent at {gobj.read('url')} "
          f"(no session after {gobj.read('timeout')} s)", file=sys.stderr)
    _finish(gobj, 1)


def _finish(gobj: GObj, code: int) -> None:
    gobj.write("exit_code", code)
    on_done: Callable[[int], None] | None = gobj.read("on_done")
    if on_done is not None:
        on_done(code)


def ac_on_open(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    priv: _Priv = gobj.priv
    if priv.connect_timer is not None:
        priv.connect_timer.cancel()
        priv.connect_timer = None
    _next(gobj)
    return 0


def ac_on_close(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    if gobj.priv.connect_timer is None:  # the session had been open
        print(f"ycommand: connection closed: {kw.get('reason', '')}", file=sys.stderr)
        _finish(gobj, 1 if gobj.priv.current else gobj.read("exit_code"))
    return 0


def ac_id_nak(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    print(f"ycommand: the agent refused us: {kw.get('comment', '')}", file=sys.stderr)
    _finish(gobj, 1)
    return 0


def _next(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    if priv.deadline is not None:
        priv.deadline.cancel()
        priv.deadline = None
    if not priv.queue:
        if gobj.read("interactive"):
            asyncio.ensure_future(_prompt(gobj), loop=_loop())
            return
        last = priv.results[-1] if priv.results else 0
        _finish(gobj, 0 if last >= 0 else 1)
        return
    line = priv.queue.pop(0).strip()
    if not line:
        _next(gobj)
        return
    priv.current, priv.expected, priv.got = line, 1, 0
    send_command(priv.cli, line.lstrip("-").strip())
    priv.deadline = _loop().call_later(max(gobj.read("wait"), 0.1) + 10.0, _gave_up, gobj)


async def _prompt(gobj: GObj) -> None:
    try:
        line = await _loop().run_in_executor(None, input, "ycommand> ")
    except EOFError:
        _finish(gobj, 0)
        return
    if line.strip() in ("exit", "quit"):
        _finish(gobj, 0)
        return
    gobj.priv.queue.extend(split_lines(line))
    _next(gobj)


def _gave_up(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    priv.deadline = None
    if priv.got == 0:
        print(f"ycommand: no answer to {priv.current!r}", file=sys.stderr)
        priv.results.append(-1)
    elif priv.got < priv.expected:
        print(f"ycommand: {priv.expected - priv.got} of {priv.expected} answers did not come",
              file=sys.stderr)
    _next(gobj)


def ac_answer(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    priv: _Priv = gobj.priv
    relay = kw.get("__relay__") or {}
    priv.expected = int(relay.get("total") or 1)
    priv.got += 1
    result = int(kw.get("result", -1))
    print(render_answer(kw, as_json=gobj.read("json")), flush=True)
    priv.results.append(result)
    failed_chain = result < 0 and not priv.current.startswith("-") and \
        not gobj.read("interactive")
    if priv.got >= priv.expected:
        if failed_chain:
            priv.queue.clear()
        _next(gobj)
    elif priv.deadline is not None:
        # More answers are coming (one per yuno): wait at most ``wait`` s for each.
        priv.deadline.cancel()
        priv.deadline = _loop().call_later(max(gobj.read("wait"), 0.1), _gave_up, gobj)
    return 0


def split_lines(text: str) -> list[str]:
    """Split on ';' outside quotes."""
    out, buf, quote = [], [], ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            out.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    out.append("".join(buf))
    return [line.strip() for line in out if line.strip()]


def render_answer(kw: dict[str, Any], *, as_json: bool = False) -> str:
    """The answer as an operator reads it: comment, then a table from the schema."""
    clean = {k: kw.get(k) for k in ("result", "comment", "schema", "data")}
    md = kw.get(iev.MD_YUNO) or {}
    who = f"{md.get('yuno_role', '')}^{md.get('yuno_name', '')}" if md else ""
    if as_json:
        clean["yuno"] = who
        return json.dumps(clean, indent=2, default=str)
    lines = []
    head = f"[{who}] " if who else ""
    result = clean["result"]
    comment = clean["comment"] or ""
    lines.append(f"{head}{'ERROR ' + str(result) + ': ' if (result or 0) < 0 else ''}{comment}"
                 .rstrip())
    data, schema = clean["data"], clean["schema"]
    if isinstance(schema, list) and isinstance(data, list) and data:
        lines.append(_table(schema, data))
    elif data not in (None, [], {}):
        lines.append(json.dumps(data, indent=2, default=str))
    return "\n".join(line for line in lines if line)


def _table(schema: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    cols = [(c.get("id"), str(c.get("header") or c.get("id"))) for c in schema if c.get("id")]

    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    cells = [[cell(r.get(cid)) for cid, _ in cols] for r in rows if isinstance(r, dict)]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (_, h) in enumerate(cols)]
    out = ["  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


EVENT_TYPES = [
    ("EV_ON_OPEN", EVF.NONE),
    ("EV_ON_CLOSE", EVF.NONE),
    ("EV_ON_ID_NAK", EVF.NONE),
    (iev.EV_MT_COMMAND_ANSWER, EVF.NONE),
    (iev.EV_MT_STATS_ANSWER, EVF.NONE),
]

STATES = [("ST_IDLE", [
    ("EV_ON_OPEN", ac_on_open, None),
    ("EV_ON_CLOSE", ac_on_close, None),
    ("EV_ON_ID_NAK", ac_id_nak, None),
    (iev.EV_MT_COMMAND_ANSWER, ac_answer, None),
    (iev.EV_MT_STATS_ANSWER, ac_answer, None),
])]


def register_c_ycommand() -> None:
    if gclass_find(C_YCOMMAND) is not None:
        return
    register_c_ievent_cli()
    gclass_create(C_YCOMMAND, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  methods={"mt_create": mt_create, "mt_start": mt_start},
                  description="The ycommand CLI: sends lines, prints answers")
