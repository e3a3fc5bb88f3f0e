"""C_TCP_S: a TCP listener, plain (``tcp://``) or TLS (``tcps://``).

Each accepted connection becomes a C_TCP child created at accept time and given
the listener's *current* TLS context. ``reload-certs`` (or writing ``crypto`` on
a running TLS listener) builds a new context from the files, validates it, and
swaps it in; connections alive at that moment keep the context they were born
with until they close. A refused reload changes nothing, and its answer and its
log record name the file and the cause.

States: ST_STOPPED (initial) and ST_IDLE (listening). No input events: accepts
come from the event loop through the server's protocol factory.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

from gobj import (DTP, SDATA, SDF, Cmd, GObj, build_command_response, gclass_create,
                  gclass_find, gobj_change_state, gobj_create, kernel, log_error, log_info,
                  log_warning)
from gobj.ytls import TLSError, ytls_init
from gclasses.c_tcp import C_TCP, SECURE_SCHEMES, _Proto, accept_connection, parse_url, \
    register_c_tcp

__all__ = ["C_TCP_S", "register_c_tcp_s", "CERT_COMMANDS", "connection_closed",
           "mt_writing", "prepare_listener", "reload_certs", "view_cert"]

C_TCP_S = "C_TCP_S"

ST_STOPPED = "ST_STOPPED"
ST_IDLE = "ST_IDLE"

ATTRS = [
    SDATA(DTP.STRING, "url", SDF.RD | SDF.WR | SDF.PERSIST, "", "tcp://host:port or tcps://..."),
    SDATA(DTP.INTEGER, "backlog", SDF.RD | SDF.WR, 4096, "listen() backlog"),
    SDATA(DTP.DICT, "crypto", SDF.RD | SDF.WR | SDF.PERSIST, None,
          "TLS config; writing it on a running TLS listener reloads"),
    SDATA(DTP.BOOLEAN, "use_ssl", SDF.RD, False, "TLS, from the url scheme"),
    SDATA(DTP.STRING, "lHost", SDF.RD, "", "Listening host"),
    SDATA(DTP.INTEGER, "lPort", SDF.RD, 0, "Listening port (the real one when url says 0)"),
    SDATA(DTP.INTEGER, "max_connections", SDF.RD | SDF.WR, 0,
          "Refuse connections beyond this many (0: no limit)"),
    SDATA(DTP.DICT, "clisrv_kw", SDF.RD | SDF.WR, None, "kw for each C_TCP made at accept"),
    SDATA(DTP.INTEGER, "connxs", SDF.RD | SDF.STATS, 0, "Connections now"),
    SDATA(DTP.INTEGER, "tconnxs", SDF.RD | SDF.STATS, 0, "Connections since start"),
    SDATA(DTP.INTEGER, "reloads", SDF.RD | SDF.STATS, 0, "Successful certificate reloads"),
    SDATA(DTP.INTEGER, "reload_failures", SDF.RD | SDF.STATS, 0, "Refused reloads"),
    SDATA(DTP.POINTER, "subscriber", SDF.NONE, None,
          "Who gets the connections' events (default: the parent)"),
]

STATES = [(ST_STOPPED, []), (ST_IDLE, [])]


class _Priv:
    __slots__ = ("server", "ytls", "seq", "sock")

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.ytls: Any = None
        self.seq = itertools.count(1)
        self.sock: socket.socket | None = None


class _AcceptProto(_Proto):
    __slots__ = ("listener",)

    def __init__(self, listener: GObj) -> None:
        super().__init__(None)
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _accept(self.listener, self)


def _loop() -> asyncio.AbstractEventLoop:
    return kernel.loop or asyncio.get_event_loop()


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def mt_create(gobj: GObj) -> None:
    register_c_tcp()
    gobj.priv = _Priv()


def prepare_listener(gobj: GObj, prefix: str,
                     make_ytls: Callable[[dict[str, Any]], Any]) -> tuple[str, int] | None:
    """Parse ``url``, set ``use_ssl`` from its scheme and build the first TLS
    context with ``make_ytls(crypto)``. Returns (host, port), or None after
    logging why the listener cannot start. Shared by C_TCP_S and C_UDP_S."""
    try:
        scheme, host, port = parse_url(gobj.read("url"))
    except ValueError as exc:
        log_error(gobj, f"{prefix}.listen.bad_url", "cannot listen: bad url", error=str(exc))
        return None
    use_ssl = scheme in SECURE_SCHEMES
    gobj._av[gobj.gclass.attr_index["use_ssl"]] = use_ssl
    if not use_ssl:
        return host, port
    try:
        gobj.priv.ytls = make_ytls(gobj.read("crypto") or {})
    except TLSError as exc:
        log_error(gobj, f"{prefix}.tls.init_failed", "cannot listen: TLS configuration refused",
                  error=str(exc), field=exc.field, path=exc.path, url=gobj.read("url"))
        return None
    info = gobj.priv.ytls.cert_info() or {}
    if info.get("not_after", 0) < time.time():
        log_warning(gobj, f"{prefix}.tls.expired_at_start",
                    "listening with an expired certificate", serial=info.get("serial"),
                    not_after=info.get("not_after"))
    return host, port


def mt_start(gobj: GObj) -> int:
    where = prepare_listener(gobj, "tcp_s", lambda crypto: ytls_init(crypto, server=True))
    if where is None:
        return -1
    host, port = where
    priv: _Priv = gobj.priv
    use_ssl = gobj.read("use_ssl")
    try:
        sock = _listen_socket(host, port, gobj.read("backlog"))
    except OSError as exc:
        log_error(gobj, "tcp_s.listen.failed", "cannot listen", url=gobj.read("url"),
                  error=str(exc))
        priv.ytls = None
        return -1
    priv.sock = sock
    bound = sock.getsockname()
    gobj._av[gobj.gclass.attr_index["lHost"]] = bound[0]
    gobj._av[gobj.gclass.attr_index["lPort"]] = bound[1]
    loop = _loop()
    task = asyncio.ensure_future(loop.create_server(lambda: _AcceptProto(gobj), sock=sock),
                                 loop=loop)
    task.add_done_callback(lambda t: _server_ready(gobj, t))
    gobj_change_state(gobj, ST_IDLE)
    log_info(gobj, "tcp_s.listening", "listening", url=gobj.read("url"), host=bound[0],
             port=bound[1], tls=use_ssl)
    return 0


def _listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    # Bound synchronously so that a port in use fails mt_start itself, with the
    # reason, instead of failing later inside a task nobody waits for.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _server_ready(gobj: GObj, task: asyncio.Future[asyncio.AbstractServer]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log_error(gobj, "tcp_s.listen.failed", "cannot serve", error=str(exc))
        return
    server = task.result()
    if gobj.destroyed or not gobj.running:
        server.close()
        return
    gobj.priv.server = server


def mt_stop(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    if priv.server is not None:
        priv.server.close()
        priv.server = None
    elif priv.sock is not None:
        priv.sock.close()
    priv.sock = None
    gobj_change_state(gobj, ST_STOPPED)
    log_info(gobj, "tcp_s.stopped", "listener stopped", url=gobj.read("url"))


def mt_writing(gobj: GObj, name: str) -> str | None:
    """Writing ``crypto`` on a running TLS listener reloads; a refused reload
    vetoes the write (shared with C_UDP_S)."""
    if name == "crypto" and gobj.running and gobj.read("use_ssl"):
        result, comment, _ = reload_certs(gobj, "write-attr")
        if result < 0:
            return comment  # veto: the kernel restores the previous crypto
    return None


# ---------------------------------------------------------------------------
# Accept path (outside the table)
# ---------------------------------------------------------------------------
def _accept(gobj: GObj, proto: _AcceptProto) -> None:
    limit = gobj.read("max_connections")
    if limit and gobj.read("connxs") >= limit or gobj.state != ST_IDLE:
        log_warning(gobj, "tcp_s.accept.refused", "connection refused: listener full",
                    limit=limit, peer=str(proto.transport.get_extra_info("peername")))
        proto.transport.close()
        return
    priv: _Priv = gobj.priv
    kw = dict(gobj.read("clisrv_kw") or {})
    kw["subscriber"] = gobj.read("subscriber") or (
        gobj.parent if gobj.parent is not None and not gobj.parent.is_yuno else None)
    conn = gobj_create(f"clisrv-{next(priv.seq)}", C_TCP, kw, gobj, volatil=True)
    idx = gobj.gclass.attr_index
    gobj._av[idx["connxs"]] += 1
    gobj._av[idx["tconnxs"]] += 1
    accept_connection(conn, proto, gobj, priv.ytls)


def connection_closed(gobj: GObj, conn: GObj) -> None:
    gobj._av[gobj.gclass.attr_index["connxs"]] -= 1


# ---------------------------------------------------------------------------
# Certificates: reload and view (shared with C_UDP_S)
# ---------------------------------------------------------------------------
def reload_certs(gobj: GObj, trigger: str) -> tuple[int, str, dict[str, Any] | None]:
    """Validate-then-swap; returns (result, comment, data). Logs one record."""
    ytls = gobj.priv.ytls
    if not gobj.read("use_ssl") or ytls is None or not gobj.running:
        return -1, f"{gobj.short_name}: listener is not TLS-enabled or not running", None
    crypto = gobj.read("crypto") or {}
    t0 = time.perf_counter()
    try:
        result = ytls.reload(crypto)
    except TLSError as exc:
        gobj._av[gobj.gclass.attr_index["reload_failures"]] += 1
        log_error(gobj, "tls.reload.failed",
                  "TLS reload refused; the previous certificate is still served",
                  error=str(exc), field=exc.field, path=exc.path, trigger=trigger,
                  url=gobj.read("url"))
        return (-1, f"{gobj.short_name}: reload-certs FAILED: {exc}; the previous "
                    "certificate is still served", None)
    ms = round((time.perf_counter() - t0) * 1000, 3)
    old, new = result.get("old") or {}, result.get("new") or {}
    if not result.get("changed"):
        log_info(gobj, "tls.reload.unchanged", "TLS reload: certificate already served",
                 serial=new.get("serial"), trigger=trigger, duration_ms=ms)
        return 0, f"{gobj.short_name}: certificate unchanged (already served)", \
            {"changed": False, "serial": new.get("serial")}
    gobj._av[gobj.gclass.attr_index["reloads"]] += 1
    log_info(gobj, "tls.reload.done", "TLS certificates reloaded", trigger=trigger,
             old_serial=old.get("serial"), new_serial=new.get("serial"),
             old_fingerprint=old.get("fingerprint"), new_fingerprint=new.get("fingerprint"),
             old_not_after=old.get("not_after"), new_not_after=new.get("not_after"),
             key_type=f"{new.get('key_type')}-{new.get('key_size')}",
             live_sessions=gobj.read("connxs" if "connxs" in gobj.gclass.attr_index
                                     else "peers"),
             duration_ms=ms, url=gobj.read("url"))
    return 0, f"{gobj.short_name}: TLS certificates reloaded", \
        {"changed": True, "old_serial": old.get("serial"), "new_serial": new.get("serial"),
         "not_after": new.get("not_after"), "duration_ms": ms}


def view_cert(gobj: GObj) -> dict[str, Any]:
    ytls = gobj.priv.ytls
    if ytls is None:
        return build_command_response(-1, f"{gobj.short_name}: no certificate info available "
                                          "(listener not TLS or not running)")
    info = ytls.cert_info()
    if info is None:
        return build_command_response(-1, f"{gobj.short_name}: no certificate info available")
    data = dict(info)
    not_after = data.get("not_after") or 0
    if not_after > 0:
        # int() truncates toward zero: a certificate that expired 5 hours ago
        # has 0 days remaining, not -1 (floor division would say -1).
        data["days_remaining"] = int((not_after - time.time()) / 86400)
    data["url"] = gobj.read("url")
    data["ssl_certificate"] = (gobj.read("crypto") or {}).get("ssl_certificate", "")
    data["library"] = ytls.library
    data["live_contexts"] = ytls.live_contexts()
    return build_command_response(0, "", None, data)


def cmd_reload_certs(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    result, comment, data = reload_certs(gobj, "command")
    return build_command_response(result, comment, None, data)


def cmd_view_cert(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    return view_cert(gobj)


# The certificate commands every TLS listener answers (C_UDP_S uses them too).
CERT_COMMANDS = [
    Cmd("reload-certs", cmd_reload_certs, [],
        description="Reload this listener's certificate from its crypto files"),
    Cmd("view-cert", cmd_view_cert, [], description="The certificate served now"),
]


def register_c_tcp_s() -> None:
    if gclass_find(C_TCP_S) is not None:
        return
    register_c_tcp()
    gclass_create(
        C_TCP_S,
        event_types=[],
        states=STATES,
        attrs=ATTRS,
        commands=CERT_COMMANDS,
        methods={"mt_create": mt_create, "mt_start": mt_start, "mt_stop": mt_stop,
                 "mt_writing": mt_writing},
        description="TCP/TLS listener with zero-drop certificate reload",
    )
