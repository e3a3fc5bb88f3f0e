"""C_YUNO: the root of every yuno process.

It owns the periodic tick (a pure-child C_TIMER armed with ``timeout_periodic``),
answers the yuno-level commands, and runs the certificate expiry monitor
(renewal layer 3): every ``timeout_cert_check`` seconds it reads ``view-cert``
of every running TLS listener and logs one warning when a listener crosses
``cert_warn_days``, one critical when it crosses ``cert_critical_days``, and an
info record when a listener that was alerting serves a fresh certificate again.
The monitor only alerts; reloading is the other layers' job.

Not in the table: ``EV_TIMEOUT_PERIODIC`` comes from the yuno's own pure-child
timer, and the monitor's schedule is a deadline checked on each tick.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from typing import Any

from gobj import (DTP, EVF, SDATA, SDATAPM, SDF, WALK_TOP2BOTTOM, Cmd, GObj,
                  build_command_response, gclass_create, gclass_find, gobj_command,
                  gobj_create_pure_child, gobj_find_gobj,
                  gobj_play, gobj_publish_event, gobj_read_attr, gobj_read_attrs, gobj_stats,
                  gobj_walk_gobj_children_tree, gobj_write_attr, kernel, log_critical, log_info,
                  log_warning)
from gobj.attrs import coerce, AttrError
from gobj.log import log_counters, reset_log_counters
from gclasses.c_timer import C_TIMER, register_c_timer, set_timeout_periodic

__all__ = ["C_YUNO", "register_c_yuno"]

C_YUNO = "C_YUNO"

EV_TIMEOUT_PERIODIC = "EV_TIMEOUT_PERIODIC"

# Gclasses whose running, use_ssl instances the cert commands and the monitor visit.
TLS_LISTENER_GCLASSES = ("C_TCP_S", "C_UDP_S")

_RW_P = SDF.RD | SDF.WR | SDF.PERSIST

ATTRS = [
    SDATA(DTP.STRING, "yuno_role", SDF.RD, "", "Role of the yuno (the program)"),
    SDATA(DTP.STRING, "yuno_name", SDF.RD, "", "Name of this instance"),
    SDATA(DTP.STRING, "yuno_id", SDF.RD, "", "Id given by the agent"),
    SDATA(DTP.STRING, "yuno_tag", SDF.RD, "", "Tag"),
    SDATA(DTP.STRING, "yuno_version", SDF.RD, "", "Version of the program"),
    SDATA(DTP.STRING, "work_dir", SDF.RD, "", "Root of the yuno's state"),
    SDATA(DTP.STRING, "domain_dir", SDF.RD, "", "The yuno's directory under work_dir"),
    SDATA(DTP.INTEGER, "pid", SDF.RD, 0, "Process id"),
    SDATA(DTP.STRING, "hostname", SDF.RD, "", "Host name"),
    SDATA(DTP.INTEGER, "launch_id", SDF.RD, 0, "Launch id given by the agent"),
    SDATA(DTP.STRING, "start_date", SDF.RD | SDF.STATS, "", "Start time, ISO 8601"),
    SDATA(DTP.INTEGER, "uptime", SDF.RD | SDF.STATS, 0, "Seconds since start"),
    SDATA(DTP.REAL, "cpu", SDF.RD | SDF.STATS, 0.0, "CPU seconds used (user + system)"),
    SDATA(DTP.INTEGER, "max_rss_kb", SDF.RD | SDF.STATS, 0, "Peak resident memory, KiB"),
    SDATA(DTP.INTEGER, "timeout_periodic", SDF.RD | SDF.WR, 1000, "Tick period, ms"),
    SDATA(DTP.INTEGER, "timeout_cert_check", _RW_P, 3600,
          "Seconds between certificate expiry scans; 0 disables the monitor"),
    # 7 and 2 days: Let's Encrypt certificates last 90 days and certbot renews at
    # 30 days left, so a certificate with a week left means renewal has failed
    # for three weeks; two days leaves time to act before clients see errors.
    SDATA(DTP.INTEGER, "cert_warn_days", _RW_P, 7, "Warn when days remaining <= this (0: off)"),
    SDATA(DTP.INTEGER, "cert_critical_days", _RW_P, 2,
          "Critical when days remaining <= this (0: off)"),
    SDATA(DTP.INTEGER, "cert_checks", SDF.RD | SDF.STATS, 0, "Expiry scans run"),
    SDATA(DTP.BOOLEAN, "autoplay", SDF.RD, True, "Play the yuno (and its default service) at start"),
    SDATA(DTP.JSON, "required_services", SDF.RD, None, "Services this yuno needs (informative)"),
    SDATA(DTP.STRING, "agent_url", SDF.RD, "", "URL of the agent that launched this yuno"),
]

_GOBJ = SDATAPM(DTP.STRING, "gobj", SDF.NONE, "", "Gobj name or path (default: the yuno)",
                aliases=("gobj_name",))

COMMANDS = [
    Cmd("help", None, [SDATAPM(DTP.STRING, "cmd", SDF.NONE, "", "Command to explain"), _GOBJ],
        aliases=("h", "?"), description="List the commands, or explain one"),
    Cmd("view-attrs", None, [_GOBJ], aliases=("read-attrs",),
        description="Attrs of a gobj (readable ones)"),
    Cmd("write-attr", None, [
        SDATAPM(DTP.STRING, "attribute", SDF.REQUIRED, None, "Attr name", aliases=("attr",)),
        SDATAPM(DTP.STRING, "value", SDF.REQUIRED, None, "New value"), _GOBJ],
        description="Write (and persist, when PERSIST) one writable attr"),
    Cmd("view-gobj-tree", None, [_GOBJ], description="The gobj tree below a gobj"),
    Cmd("view-gclass", None, [SDATAPM(DTP.STRING, "gclass_name", SDF.NONE, "",
                                      "Gclass (default: that of gobj)", aliases=("gclass",)),
                              _GOBJ],
        description="A gclass's attrs, commands and FSM (also as a Mermaid diagram)"),
    Cmd("stats", None, [SDATAPM(DTP.STRING, "stats", SDF.NONE, "",
                                "Filter; __reset__ resets the resettable stats"), _GOBJ],
        description="Stats of a gobj"),
    Cmd("list-persistent-attrs", None, [
        SDATAPM(DTP.STRING, "attrs", SDF.NONE, "", "Attr names (default: all)"), _GOBJ],
        aliases=("persistent-attrs",), description="Persistent attrs stored for a service"),
    Cmd("remove-persistent-attrs", None, [
        SDATAPM(DTP.STRING, "attrs", SDF.NONE, "", "Attr names (default: all)"), _GOBJ],
        description="Remove stored persistent attrs of a service"),
    Cmd("services", None, [], description="The registered services"),
    Cmd("view-log-counters", None, [SDATAPM(DTP.BOOLEAN, "reset", SDF.NONE, False, "Reset")],
        description="Log records counted per level"),
    Cmd("reload-certs", None, [_GOBJ],
        description="Reload the certificates of every running TLS listener (or of gobj=)"),
    Cmd("cert-expiry-status", None, [_GOBJ],
        description="Certificate facts of every running TLS listener (or of gobj=)"),
    Cmd("set-trace", None, [
        SDATAPM(DTP.STRING, "gclass_name", SDF.REQUIRED, None, "Gclass to trace",
                aliases=("gclass",)),
        SDATAPM(DTP.BOOLEAN, "set", SDF.NONE, True, "On (1) or off (0)")],
        description="Log every event a gclass's gobjs receive (debug level)"),
    Cmd("shutdown", None, [SDATAPM(DTP.INTEGER, "exit_code", SDF.NONE, 0, "Exit code")],
        description="Stop the yuno gracefully"),
]

EVENT_TYPES = [
    (EV_TIMEOUT_PERIODIC, EVF.OUTPUT | EVF.NO_WARN_SUBS),
]


class _Priv:
    def __init__(self) -> None:
        self.timer: GObj | None = None
        self.t0 = time.monotonic()
        self.next_cert_check = 0.0
        self.cert_alerts: dict[str, str] = {}  # listener full name -> "warning"|"critical"


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def mt_create(gobj: GObj) -> None:
    register_c_timer()
    gobj.priv = _Priv()
    if not gobj.read("hostname"):
        gobj.write("hostname", socket.gethostname())
    if not gobj.read("pid"):
        gobj.write("pid", os.getpid())
    gobj.write("start_date", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    gobj.priv.timer = gobj_create_pure_child(gobj.name, C_TIMER, {}, gobj)


def mt_start(gobj: GObj) -> int:
    set_timeout_periodic(gobj.priv.timer, gobj.read("timeout_periodic"))
    _schedule_cert_check(gobj, first=True)
    return 0


def mt_stop(gobj: GObj) -> None:
    gobj_write_attr(gobj.priv.timer, "msec", 0)


def mt_play(gobj: GObj) -> int:
    svc = kernel.default_service
    if svc is not None and not svc.playing:
        gobj_play(svc)
    log_info(gobj, "yuno.playing", "playing yuno")
    return 0


def mt_writing(gobj: GObj, name: str) -> None:
    if gobj.priv is None or not gobj.running:
        return
    if name == "timeout_periodic":
        set_timeout_periodic(gobj.priv.timer, gobj.read("timeout_periodic"))
    elif name == "timeout_cert_check":
        _schedule_cert_check(gobj, first=False)


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def ac_timeout_periodic(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gobj._av[gobj.gclass.attr_index["uptime"]] = int(time.monotonic() - gobj.priv.t0)
    gobj._av[gobj.gclass.attr_index["cpu"]] = round(usage.ru_utime + usage.ru_stime, 3)
    gobj._av[gobj.gclass.attr_index["max_rss_kb"]] = usage.ru_maxrss
    due = gobj.priv.next_cert_check
    if due and time.monotonic() >= due:
        check_cert_expiry(gobj)
        _schedule_cert_check(gobj, first=False)
    gobj_publish_event(gobj, EV_TIMEOUT_PERIODIC, {})
    return 0


STATES = [("ST_IDLE", [(EV_TIMEOUT_PERIODIC, ac_timeout_periodic, None)])]


# ---------------------------------------------------------------------------
# Certificate monitor (layer 3) and the listener walk shared with the commands
# ---------------------------------------------------------------------------
def _schedule_cert_check(gobj: GObj, *, first: bool) -> None:
    period = gobj.read("timeout_cert_check")
    if period <= 0:
        gobj.priv.next_cert_check = 0.0
        return
    # The first scan runs on the first tick after start, so a certificate that
    # is already close to expiry is reported at boot, not an hour later.
    gobj.priv.next_cert_check = time.monotonic() + (0 if first else period)


def tls_listeners(gobj: GObj, target: str = "") -> list[GObj]:
    """Running listeners with use_ssl below the yuno (or the one named ``target``)."""
    if target:
        found = gobj_find_gobj(target)
        return [found] if found is not None else []
    out: list[GObj] = []

    def cb(child: GObj) -> int:
        if (child.gclass.name in TLS_LISTENER_GCLASSES and child.running
                and "use_ssl" in child.gclass.attr_index and gobj_read_attr(child, "use_ssl")):
            out.append(child)
        return 0

    gobj_walk_gobj_children_tree(gobj, WALK_TOP2BOTTOM, cb)
    return out


def _expiry_details(gobj: GObj, listeners: list[GObj]) -> list[dict[str, Any]]:
    details = []
    for listener in listeners:
        answer = gobj_command(listener, "view-cert", {}, gobj) or {}
        entry = dict(answer.get("data") or {})
        entry["gobj"] = listener.full_name
        entry["result"] = answer.get("result", -1)
        if answer.get("result", -1) < 0:
            entry["comment"] = answer.get("comment", "")
        details.append(entry)
    return details


def check_cert_expiry(gobj: GObj) -> list[dict[str, Any]]:
    """One scan: a record only when a listener's alert level changes."""
    gobj._av[gobj.gclass.attr_index["cert_checks"]] += 1
    warn, crit = gobj.read("cert_warn_days"), gobj.read("cert_critical_days")
    details = _expiry_details(gobj, tls_listeners(gobj))
    alerts = gobj.priv.cert_alerts
    for d in details:
        if d.get("result", -1) < 0 or "days_remaining" not in d:
            continue
        days = d["days_remaining"]
        level = ""
        if crit > 0 and days <= crit:
            level = "critical"
        elif warn > 0 and days <= warn:
            level = "warning"
        name = d["gobj"]
        previous = alerts.get(name, "")
        if level == previous:
            continue
        fields = {"listener": name, "subject": d.get("subject"), "serial": d.get("serial"),
                  "not_after": d.get("not_after"), "days_remaining": days,
                  "url": d.get("url")}
        if level == "critical":
            log_critical(gobj, "cert.expiry.critical", "TLS certificate expiring (critical)",
                         threshold_days=crit, **fields)
        elif level == "warning":
            log_warning(gobj, "cert.expiry.warning", "TLS certificate expiring soon",
                        threshold_days=warn, **fields)
        else:
            log_info(gobj, "cert.expiry.recovered", "TLS certificate no longer near expiry",
                     previous_level=previous, **fields)
        if level:
            alerts[name] = level
        else:
            alerts.pop(name, None)
    return details


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def _target(gobj: GObj, kw: dict[str, Any]) -> GObj | None:
    name = kw.get("gobj") or ""
    return gobj if not name else gobj_find_gobj(name)


def _not_found(gobj: GObj, kw: dict[str, Any]) -> dict[str, Any]:
    return build_command_response(-1, f"{gobj.short_name}: gobj not found: {kw.get('gobj')!r}")


def _prefix(gobj: GObj) -> str:
    return f"{gobj.read('yuno_role')}^{gobj.name}"


def cmd_help(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    target = _target(gobj, kw)
    if target is None:
        return _not_found(gobj, kw)
    if kw.get("cmd"):
        found = target.gclass.find_command(kw["cmd"])
        if found is None:
            return build_command_response(-1, f"{target.short_name}: no command {kw['cmd']!r}")
        params = [{"id": p.name, "type": p.type.value, "default": p.default,
                   "required": bool(p.flag & SDF.REQUIRED), "description": p.description,
                   "aliases": list(p.aliases)} for p in found.params]
        text = f"{found.name}: {found.description}"
        return build_command_response(0, text, None, {"command": found.name,
                                                       "aliases": list(found.aliases),
                                                       "parameters": params})
    lines = [f"Commands of {target.short_name}", "=" * 40]
    rows = []
    for c in target.gclass.commands:
        names = ", ".join([c.name, *c.aliases])
        params = " ".join(("<%s>" if p.flag & SDF.REQUIRED else "[%s=?]") % p.name
                          for p in c.params)
        lines.append(f"- {names} {params}".rstrip() + f"  {c.description}")
        rows.append({"command": c.name, "aliases": list(c.aliases), "description": c.description})
    return build_command_response(0, "\n".join(lines), None, rows)


def _attrs_schema() -> list[dict[str, Any]]:
    return [{"id": "name", "header": "Attr", "type": "string"},
            {"id": "type", "header": "Type", "type": "string"},
            {"id": "flag", "header": "Flag", "type": "string"},
            {"id": "value", "header": "Value", "type": "json"}]


def cmd_view_attrs(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    target = _target(gobj, kw)
    if target is None:
        return _not_found(gobj, kw)
    return build_command_response(0, "", None, gobj_read_attrs(target, SDF.public()))


def cmd_write_attr(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    target = _target(gobj, kw)
    if target is None:
        return _not_found(gobj, kw)
    name = kw["attribute"]
    row = target.gclass.attrs.get(name)
    if row is None:
        return build_command_response(-1, f"{target.short_name}: no attr {name!r}")
    if not row.flag & SDF.writable():
        return build_command_response(-1, f"{target.short_name}: attr {name!r} is not writable")
    try:
        coerce(row.type, kw["value"], name)
    except AttrError as exc:
        return build_command_response(-1, f"{target.short_name}: {exc}")
    kernel.last_write_error = ""
    if gobj_write_attr(target, name, kw["value"]) < 0:
        why = kernel.last_write_error or "value refused (see log)"
        return build_command_response(-1, f"{target.short_name}: {name} not written: {why}")
    if row.flag & SDF.PERSIST and target.is_service and kernel.persist is not None:
        kernel.persist.save(target, [name])
    log_info(gobj, "yuno.attr.written", "attr written by command", target=target.full_name,
             attr=name)
    data = gobj_read_attrs(target, SDF.RD | SDF.WR | SDF.PERSIST | SDF.STATS)
    return build_command_response(0, f"{target.short_name}: {name} written", None, data)


def _tree(node: GObj) -> dict[str, Any]:
    return {"name": node.short_name, "state": node.state, "running": node.running,
            "playing": node.playing, "service": node.is_service,
            "children": [_tree(c) for c in node.children]}


def cmd_view_gobj_tree(gobj: GObj, cmd: str, kw: dict[str, Any],
                       src: GObj | None) -> dict[str, Any]:
    target = _target(gobj, kw)
    if target is None:
        return _not_found(gobj, kw)
    return build_command_response(0, "", None, _tree(target))


def _mermaid(gc: Any) -> str:
    """Draw the FSM with the transitions library's Mermaid engine."""
    from transitions.extensions import GraphMachine

    transitions = []
    for state, table in gc.fsm.items():
        for event, (_action, nxt) in table.items():
            transitions.append({"trigger": event, "source": state, "dest": nxt})

    class _Model:
        pass

    model = _Model()
    GraphMachine(model=model, states=list(gc.states), transitions=transitions,
                 initial=gc.states[0], graph_engine="mermaid", auto_transitions=False,
                 title=gc.name, show_conditions=False)
    return str(model.get_graph().draw(None))  # type: ignore[attr-defined]


def cmd_view_gclass(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    if kw.get("gclass_name"):
        gc = gclass_find(kw["gclass_name"])
        if gc is None:
            return build_command_response(-1, f"{gobj.short_name}: no gclass "
                                              f"{kw['gclass_name']!r}")
    else:
        target = _target(gobj, kw)
        if target is None:
            return _not_found(gobj, kw)
        gc = target.gclass
    fsm = {state: [[ev, getattr(a, "__name__", None), nxt] for ev, (a, nxt) in table.items()]
           for state, table in gc.fsm.items()}
    data = {
        "gclass": gc.name,
        "description": gc.description,
        "attrs": [{"name": r.name, "type": r.type.value, "flag": str(r.flag),
                   "default": r.default, "description": r.description}
                  for r in gc.attrs.values()],
        "commands": [{"name": c.name, "aliases": list(c.aliases), "description": c.description}
                     for c in gc.commands],
        "event_types": {ev: str(flags) for ev, flags in gc.event_types.items()},
        "states": list(gc.states),
        "fsm": fsm,
        "mermaid": _mermaid(gc),
    }
    return build_command_response(0, "", None, data)


def cmd_stats(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    target = _target(gobj, kw)
    if target is None:
        return _not_found(gobj, kw)
    return gobj_stats(target, kw.get("stats", ""), {}, src)


def _persist_target(gobj: GObj, kw: dict[str, Any]) -> tuple[GObj | None, dict[str, Any] | None]:
    target = _target(gobj, kw)
    if target is None:
        return None, _not_found(gobj, kw)
    if not target.is_service or kernel.persist is None:
        return None, build_command_response(-1, f"{target.short_name}: not a service; "
                                                "only services keep persistent attrs")
    return target, None


def cmd_list_persistent_attrs(gobj: GObj, cmd: str, kw: dict[str, Any],
                              src: GObj | None) -> dict[str, Any]:
    if not kw.get("gobj"):
        data = {svc.short_name: kernel.persist.list(svc, kw.get("attrs"))
                for svc in kernel.services.values()} if kernel.persist else {}
        return build_command_response(0, "", None, data)
    target, error = _persist_target(gobj, kw)
    if target is None:
        return error  # type: ignore[return-value]
    return build_command_response(0, "", None, kernel.persist.list(target, kw.get("attrs")))


def cmd_remove_persistent_attrs(gobj: GObj, cmd: str, kw: dict[str, Any],
                                src: GObj | None) -> dict[str, Any]:
    target, error = _persist_target(gobj, kw)
    if target is None:
        return error  # type: ignore[return-value]
    kernel.persist.remove(target, kw.get("attrs") or None)
    log_info(gobj, "yuno.persist.removed", "persistent attrs removed", target=target.full_name,
             attrs=kw.get("attrs") or "__all__")
    return build_command_response(0, f"{target.short_name}: persistent attrs removed", None,
                                  kernel.persist.list(target))


def cmd_services(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    data = [{"service": name, "gobj": g.full_name, "state": g.state, "running": g.running,
             "playing": g.playing} for name, g in sorted(kernel.services.items())]
    return build_command_response(0, "", None, data)


def cmd_view_log_counters(gobj: GObj, cmd: str, kw: dict[str, Any],
                          src: GObj | None) -> dict[str, Any]:
    data = log_counters()
    if kw.get("reset"):
        reset_log_counters()
    return build_command_response(0, "", None, data)


def cmd_reload_certs(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    listeners = tls_listeners(gobj, kw.get("gobj") or "")
    if kw.get("gobj") and not listeners:
        return _not_found(gobj, kw)
    details = []
    reloaded = failed = 0
    for listener in listeners:
        answer = gobj_command(listener, "reload-certs", {}, gobj) or {}
        ok = answer.get("result", -1) >= 0
        reloaded += ok
        failed += not ok
        details.append({"gobj": listener.full_name, "result": answer.get("result", -1),
                        "comment": answer.get("comment", ""), "data": answer.get("data")})
    if reloaded:
        check_cert_expiry(gobj)  # a fresh certificate clears a standing alert at once
    comment = f"{_prefix(gobj)}: reloaded {reloaded} TLS listener(s), {failed} failed"
    unchanged = sum(1 for d in details if d["result"] >= 0
                    and isinstance(d["data"], dict) and d["data"].get("changed") is False)
    if unchanged:
        comment += f" ({unchanged} already served these files)"
    if failed:
        comment += ": " + "; ".join(f"{d['gobj']}: {d['comment']}" for d in details
                                    if d["result"] < 0)
    return build_command_response(-1 if failed else 0, comment, None,
                                  {"reloaded": reloaded, "failed": failed, "details": details})


def cmd_cert_expiry_status(gobj: GObj, cmd: str, kw: dict[str, Any],
                           src: GObj | None) -> dict[str, Any]:
    listeners = tls_listeners(gobj, kw.get("gobj") or "")
    if kw.get("gobj") and not listeners:
        return _not_found(gobj, kw)
    details = _expiry_details(gobj, listeners)
    days = [d["days_remaining"] for d in details if "days_remaining" in d]
    data = {"listeners": len(details), "min_days_remaining": min(days) if days else -1,
            "warn_threshold": gobj.read("cert_warn_days"),
            "critical_threshold": gobj.read("cert_critical_days"), "details": details}
    return build_command_response(0, f"{_prefix(gobj)}: {len(details)} TLS listener(s)", None,
                                  data)


def cmd_set_trace(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    gc = gclass_find(kw["gclass_name"])
    if gc is None:
        return build_command_response(-1, f"{gobj.short_name}: no gclass {kw['gclass_name']!r}")
    gc.traced = bool(kw.get("set", True))
    log_info(gobj, "yuno.trace.set", "gclass trace switched", gclass_name=gc.name,
             traced=gc.traced)
    return build_command_response(0, f"{gc.name}: trace {'on' if gc.traced else 'off'}")


def cmd_shutdown(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    from gobj.entry import yuno_shutdown

    log_info(gobj, "yuno.shutdown.requested", "shutdown requested by command")
    loop = kernel.loop
    code = int(kw.get("exit_code", 0))
    if loop is not None:
        # Leave time for the answer to reach the caller before the loop stops.
        loop.call_later(0.2, yuno_shutdown, code)
    return build_command_response(0, f"{_prefix(gobj)}: shutting down")


_HANDLERS = {
    "help": cmd_help, "view-attrs": cmd_view_attrs, "write-attr": cmd_write_attr,
    "view-gobj-tree": cmd_view_gobj_tree, "view-gclass": cmd_view_gclass, "stats": cmd_stats,
    "list-persistent-attrs": cmd_list_persistent_attrs,
    "remove-persistent-attrs": cmd_remove_persistent_attrs, "services": cmd_services,
    "view-log-counters": cmd_view_log_counters, "reload-certs": cmd_reload_certs,
    "cert-expiry-status": cmd_cert_expiry_status, "set-trace": cmd_set_trace,
    "shutdown": cmd_shutdown,
}
COMMANDS = [Cmd(c.name, _HANDLERS[c.name], c.params, c.aliases, c.description, c.wild)
            for c in COMMANDS]


def register_c_yuno() -> None:
    if gclass_find(C_YUNO) is not None:
        return
    register_c_timer()
    # Every yuno may be launched by an agent, whose launch config adds a
    # C_IEVENT_CLI service (agent_client); register it here so any yuno can.
    from gclasses.c_ievent_cli import register_c_ievent_cli

    register_c_ievent_cli()
    gclass_create(
        C_YUNO,
        event_types=EVENT_TYPES,
        states=STATES,
        attrs=ATTRS,
        commands=COMMANDS,
        methods={"mt_create": mt_create, "mt_start": mt_start, "mt_stop": mt_stop,
                 "mt_play": mt_play, "mt_writing": mt_writing},
        description="Root of every yuno: tick, yuno commands, certificate expiry monitor",
    )
