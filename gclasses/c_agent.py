"""C_AGENT: the per-host supervisor. It launches yunos from their JSON configs,
tracks them by the identity cards their channels present, restarts the ones
that die, relays commands to them, and runs renewal layer 2 (cert sync).

Registry: ``<data>/yunos.json``, written atomically; each record names a yuno
(id, role, name, config files, enabled, must_play). Runtime facts (pid,
channel, restarts) live in memory only.

Launch: ``python -m yunos.<role> -f '[<config files>..., <agent file>]'``. The
agent file (0600, it holds the credential) comes last so the identity the agent
assigned (yuno_id, yuno_name, launch_id) and its ``agent_client`` channel win.

Relay: ``command-yuno`` sends the line to every running yuno that matches its
filters and returns no answer itself; each yuno's answer is forwarded to the
caller as it arrives, tagged ``__relay__ {index, total, yuno}`` so a client
knows how many to wait for. A relay the agent makes for itself (the cert-sync
broadcast) collects its answers internally.

Cert sync (layer 2): every ``cert_sync_interval_sec`` (floor 30) run the copy
command without blocking the loop, fingerprint the store (content, through
symlinks), and when anything changed since the last good baseline, broadcast
``reload-certs`` to every running yuno and to the agent's own yuno. A change
whose reload failed anywhere is retried on every tick until it succeeds.

Not in the table: process exits come from asyncio subprocess watchers, and the
cert-sync tick is the EV_TIMEOUT_PERIODIC of a pure-child C_TIMER.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import secrets
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gobj import (DTP, EVF, SDATA, SDATAPM, SDF, Cmd, GObj, build_command_response,
                  gclass_create, gclass_find, gobj_command, gobj_create_pure_child,
                  gobj_find_service, gobj_subscribe_event, gobj_write_attr, gobj_yuno,
                  kernel, log_error, log_info, log_warning)
from gobj import msg_ievent as iev
from gobj.fsutil import atomic_write
from gclasses.c_ievent_srv import channel_md_yuno, send_answer, send_iev
from gclasses.c_iogate import gate_channels, gate_url, register_c_iogate
from gclasses.c_timer import C_TIMER, clear_timeout, register_c_timer, set_timeout_periodic

__all__ = ["C_AGENT", "register_c_agent"]

C_AGENT = "C_AGENT"

# Roles whose channels are control clients, not yunos of the registry.
CONTROL_ROLES = {"ycommand", "yuneta_cli", "ycli", "ybatch", "ystats", "ytests", "yuneta_gui"}

# The guide's floor: a copy every few seconds would fork sudo/cp in a loop for
# nothing, since certbot renews at most twice a day.
CERT_SYNC_FLOOR_SEC = 30
RELAY_TIMEOUT_SEC = 15.0
RESTART_MAX_SEC = 30.0
STABLE_SEC = 60.0
# A yuno stops in well under a second; five covers a loaded box before SIGKILL.
STOP_GRACE_SEC = 5.0

_RWP = SDF.RD | SDF.WR | SDF.PERSIST

ATTRS = [
    SDATA(DTP.STRING, "python", SDF.RD | SDF.WR, "", "Interpreter for yunos (default: ours)"),
    SDATA(DTP.JSON, "yunos", SDF.RD, None,
          "Yunos to register at first start: [{yuno_role, yuno_name, config, must_play}]"),
    SDATA(DTP.STRING, "jwt_file", SDF.RD, "", "Credential file (default <data>/agent.token)"),
    SDATA(DTP.BOOLEAN, "cert_sync_enabled", _RWP, True, "Run the cert-sync timer"),
    SDATA(DTP.INTEGER, "cert_sync_interval_sec", _RWP, 900,
          "Seconds between cert syncs (floor 30)"),
    SDATA(DTP.STRING, "cert_sync_store_dir", _RWP, "/yuneta/store/certs", "Watched store"),
    SDATA(DTP.STRING, "cert_sync_copy_cmd", _RWP,
          "/usr/bin/sudo -n /yuneta/store/certs/copy-certs.sh", "Privileged copy command"),
    SDATA(DTP.STRING, "deploy_hook_last_run_file", SDF.RD | SDF.WR | SDF.PERSIST,
          "/var/lib/yuneta/last-deploy-hook-run", "Timestamp file the deploy hook writes"),
    SDATA(DTP.INTEGER, "cert_sync_last_check", SDF.RD | SDF.RSTATS, 0, "Last tick (Unix s)"),
    SDATA(DTP.INTEGER, "cert_sync_last_action", SDF.RD | SDF.RSTATS, 0,
          "Last broadcast (Unix s)"),
    SDATA(DTP.STRING, "cert_sync_last_result", SDF.RD | SDF.RSTATS, "", "Outcome of last tick"),
    SDATA(DTP.INTEGER, "cert_sync_failures", SDF.RD | SDF.RSTATS, 0,
          "Ticks whose copy or reload failed"),
    SDATA(DTP.INTEGER, "yunos_running", SDF.RD | SDF.STATS, 0, "Yunos with a live channel"),
    SDATA(DTP.INTEGER, "relayed_commands", SDF.RD | SDF.RSTATS, 0, "Commands relayed"),
]


@dataclass
class _Yuno:
    id: str
    yuno_role: str
    yuno_name: str
    config_files: list[str]
    enabled: bool = True
    must_play: bool = True
    # runtime only
    proc: asyncio.subprocess.Process | None = None
    channel: GObj | None = None
    playing: bool = False
    restarts: int = 0
    started_at: float = 0.0
    killing: bool = False
    restart_handle: asyncio.TimerHandle | None = None
    launch_id: int = 0

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "yuno_role": self.yuno_role, "yuno_name": self.yuno_name,
                "config_files": self.config_files, "enabled": self.enabled,
                "must_play": self.must_play}

    def row(self) -> dict[str, Any]:
        return {**self.record(), "pid": self.proc.pid if self.alive() else 0,
                "running": self.channel is not None, "playing": self.playing,
                "restarts": self.restarts}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@dataclass
class _Relay:
    """Answers the agent collects for a broadcast it made itself."""
    total: int
    answers: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Future[list[dict[str, Any]]] | None = None


class _Priv:
    def __init__(self) -> None:
        self.yunos: dict[str, _Yuno] = {}
        self.timer: GObj | None = None
        self.gate: GObj | None = None
        self.token = ""
        self.data_dir = ""
        self.relays: dict[str, _Relay] = {}
        self.relay_seq = itertools.count(1)
        self.launch_seq = itertools.count(1)
        self.baseline: dict[str, str] | None = None
        self.retry_pending = False
        self.sync_task: asyncio.Task[Any] | None = None
        self.served: dict[str, Any] = {"at": 0, "details": []}


def _loop() -> asyncio.AbstractEventLoop:
    return kernel.loop or asyncio.get_event_loop()


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------
def mt_create(gobj: GObj) -> None:
    register_c_timer()
    priv = _Priv()
    gobj.priv = priv
    yuno = gobj_yuno()
    work_dir = yuno.read("work_dir") if yuno else os.path.abspath("var")
    domain_dir = yuno.read("domain_dir") if yuno else "realms/agent"
    priv.data_dir = os.path.join(work_dir, domain_dir, "data")
    os.makedirs(priv.data_dir, exist_ok=True)
    priv.token = _ensure_token(gobj, gobj.read("jwt_file") or
                               os.path.join(priv.data_dir, "agent.token"))
    priv.timer = gobj_create_pure_child("cert_sync", C_TIMER, {}, gobj)
    _load_registry(gobj)


def _ensure_token(gobj: GObj, path: str) -> str:
    """The credential: made at the agent's first start, readable by its user only."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
                log_warning(gobj, "agent.token.mode_fixed", "credential file was readable by "
                            "others; mode set to 0600", path=path)
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    atomic_write(path, token.encode() + b"\n", 0o600)
    log_info(gobj, "agent.token.created", "agent credential created", path=path)
    return token


def mt_start(gobj: GObj) -> int:
    priv: _Priv = gobj.priv
    gate = gobj_find_service("__input_side__")
    if gate is None:
        log_error(gobj, "agent.no_gate", "no __input_side__ service: no control plane")
        return -1
    priv.gate = gate
    gobj_write_attr(gate, "jwt", priv.token)
    gobj_subscribe_event(gate, None, {}, gobj)
    # The baseline is what the yunos load at start. It is taken even when the
    # timer is disabled, so that a change made while it was off (a deploy hook
    # that copied but could not broadcast) is still seen by cert-sync-now or
    # by the timer once enabled; re-arming the timer never resets it.
    priv.baseline = fingerprint_store(gobj.read("cert_sync_store_dir"))
    _arm_cert_sync(gobj)
    return 0


def mt_play(gobj: GObj) -> int:
    # Yunos need the gate's real port, known once the listener is up.
    _loop().call_soon(_launch_all, gobj)
    return 0


def mt_stop(gobj: GObj) -> None:
    clear_timeout(gobj.priv.timer)
    stopping = []
    for y in gobj.priv.yunos.values():
        if y.restart_handle is not None:
            y.restart_handle.cancel()
            y.restart_handle = None
        if _kill(gobj, y, on_purpose=True) and y.proc is not None:
            stopping.append(y.proc)
    _wait_for_exit(gobj, stopping)


def _wait_for_exit(gobj: GObj, procs: list[asyncio.subprocess.Process]) -> None:
    """At shutdown the loop has already stopped, so the 5 s SIGKILL timer of
    ``_kill`` would never fire and the agent would exit with its yunos still
    running. Wait for them here (SIGKILL after STOP_GRACE_SEC). While the loop
    runs (the agent service stopped by a command) the timers do that job."""
    loop = _loop()
    live = [p for p in procs if p.returncode is None]
    if not live or loop.is_running() or loop.is_closed():
        return

    async def wait_all() -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), STOP_GRACE_SEC)
        except asyncio.TimeoutError:
            for p in live:
                if p.returncode is None:
                    log_warning(gobj, "agent.yuno.kill_forced",
                                "yuno ignored SIGTERM at shutdown; SIGKILL sent", pid=p.pid)
                    p.kill()
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), STOP_GRACE_SEC)

    try:
        loop.run_until_complete(wait_all())
    except (asyncio.TimeoutError, RuntimeError) as exc:
        log_error(gobj, "agent.stop.wait_failed", "could not wait for the yunos to exit",
                  error=repr(exc), pids=[p.pid for p in live if p.returncode is None])


def mt_writing(gobj: GObj, name: str) -> None:
    if gobj.running and name in ("cert_sync_enabled", "cert_sync_interval_sec"):
        _arm_cert_sync(gobj)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------
def _registry_path(gobj: GObj) -> str:
    return os.path.join(gobj.priv.data_dir, "yunos.json")


def _load_registry(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    path = _registry_path(gobj)
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        records = []
    except ValueError as exc:
        aside = f"{path}.corrupt-{int(time.time())}"
        os.replace(path, aside)
        log_error(gobj, "agent.registry.corrupt", "yuno registry does not parse; moved aside",
                  path=path, moved_to=aside, error=str(exc))
        records = []
    for r in records:
        y = _Yuno(r["id"], r["yuno_role"], r["yuno_name"], list(r.get("config_files", [])),
                  bool(r.get("enabled", True)), bool(r.get("must_play", True)))
        priv.yunos[y.id] = y
    for spec in gobj.read("yunos") or []:
        if not _find(gobj, spec.get("yuno_role", ""), spec.get("yuno_name", "")):
            _add(gobj, spec.get("yuno_role", ""), spec.get("yuno_name", ""),
                 [spec["config"]] if spec.get("config") else [], spec.get("must_play", True))


def _save_registry(gobj: GObj) -> None:
    records = [y.record() for y in gobj.priv.yunos.values()]
    atomic_write(_registry_path(gobj), json.dumps(records, indent=2).encode())


def _find(gobj: GObj, role: str, name: str) -> _Yuno | None:
    for y in gobj.priv.yunos.values():
        if y.yuno_role == role and y.yuno_name == name:
            return y
    return None


def _add(gobj: GObj, role: str, name: str, files: list[str], must_play: bool) -> _Yuno:
    y = _Yuno(str(uuid.uuid4()), role, name, files, True, must_play)
    gobj.priv.yunos[y.id] = y
    _save_registry(gobj)
    log_info(gobj, "agent.yuno.created", "yuno registered", target=f"{role}^{name}",
             id=y.id, config_files=files)
    return y


def _matching(gobj: GObj, kw: dict[str, Any]) -> list[_Yuno]:
    out = []
    for y in gobj.priv.yunos.values():
        if kw.get("id") and y.id != kw["id"]:
            continue
        if kw.get("yuno_role") and y.yuno_role != kw["yuno_role"]:
            continue
        if kw.get("yuno_name") and y.yuno_name != kw["yuno_name"]:
            continue
        out.append(y)
    return out


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------
def _launch_all(gobj: GObj) -> None:
    for y in gobj.priv.yunos.values():
        _reap_orphan(gobj, y)
        if y.enabled and not y.alive():
            _launch(gobj, y)


def _reap_orphan(gobj: GObj, y: _Yuno) -> None:
    """Stop a yuno left running by a previous agent that died without stopping
    it (SIGKILL, OOM): otherwise the new agent would launch a second copy that
    cannot bind its ports while the orphan serves unsupervised."""
    folder = os.path.join(gobj.priv.data_dir, "yunos", f"{y.yuno_role}^{y.yuno_name}")
    try:
        with open(os.path.join(folder, "yuno.pid"), encoding="utf-8") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return
    if os.path.join(folder, "agent-launch.json").encode() not in cmdline:
        return  # the pid was reused by an unrelated process
    log_warning(gobj, "agent.yuno.orphan", "yuno left by a previous agent; stopping it",
                target=f"{y.yuno_role}^{y.yuno_name}", pid=pid)
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.05)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _agent_file(gobj: GObj, y: _Yuno) -> str:
    yuno = gobj_yuno()
    work_dir = yuno.read("work_dir") if yuno else os.path.abspath("var")
    folder = os.path.join(gobj.priv.data_dir, "yunos", f"{y.yuno_role}^{y.yuno_name}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    y.launch_id = (int(time.time()) << 16) + next(gobj.priv.launch_seq)
    config = {
        # The yuno's own defaults derive paths (its certificate store among them)
        # from __default_work_dir__: make that the agent's work dir, not whatever
        # the environment of the agent's caller said.
        "__json_config_variables__": {"__default_work_dir__": work_dir},
        "environment": {
            "work_dir": work_dir, "domain_dir": f"realms/{y.yuno_role}/{y.yuno_name}",
            "console_log_handlers": {},
            "daemon_log_handlers": {"file": {"handler_type": "file", "filename": "yuno.log",
                                             "level": "info"}},
        },
        "yuno": {"yuno_role": y.yuno_role, "yuno_name": y.yuno_name, "yuno_id": y.id,
                 "launch_id": y.launch_id, "agent_url": gate_url(gobj.priv.gate)},
        "services": [{"name": "agent_client", "gclass": "C_IEVENT_CLI", "as_service": True,
                      "autostart": True,
                      "kw": {"url": gate_url(gobj.priv.gate), "jwt": gobj.priv.token,
                             "remote_role": gobj_yuno().read("yuno_role") if gobj_yuno()
                             else "yuneta_agent", "remote_service": gobj.name,
                             "timeout_between_connections": 1000}}],
    }
    path = os.path.join(folder, "agent-launch.json")
    atomic_write(path, json.dumps(config, indent=2).encode(), 0o600)
    return path


def _launch(gobj: GObj, y: _Yuno) -> None:
    agent_file = _agent_file(gobj, y)
    files = [os.path.abspath(f) for f in y.config_files] + [agent_file]
    python = gobj.read("python") or sys.executable
    argv = [python, "-m", f"yunos.{y.yuno_role}", "-f", json.dumps(files)]
    y.killing = False
    y.started_at = time.monotonic()
    folder = os.path.dirname(agent_file)
    task = asyncio.ensure_future(_spawn(gobj, y, argv, folder), loop=_loop())
    task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


async def _spawn(gobj: GObj, y: _Yuno, argv: list[str], folder: str) -> None:
    errlog = open(os.path.join(folder, "stderr.log"), "ab")  # crashes land here
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=errlog, stderr=errlog,
            start_new_session=True)
    except OSError as exc:
        errlog.close()
        log_error(gobj, "agent.yuno.launch_failed", "cannot launch yuno",
                  target=f"{y.yuno_role}^{y.yuno_name}", argv=argv, error=str(exc))
        _schedule_restart(gobj, y)
        return
    errlog.close()
    y.proc = proc
    atomic_write(os.path.join(folder, "yuno.pid"), f"{proc.pid}\n".encode())
    log_info(gobj, "agent.yuno.launched", "yuno launched", target=f"{y.yuno_role}^{y.yuno_name}",
             pid=proc.pid, launch_id=y.launch_id)
    rc = await proc.wait()
    _on_exit(gobj, y, rc)


def _on_exit(gobj: GObj, y: _Yuno, rc: int) -> None:
    ran = time.monotonic() - y.started_at
    who = f"{y.yuno_role}^{y.yuno_name}"
    if y.killing or not gobj.running:
        log_info(gobj, "agent.yuno.stopped", "yuno stopped", target=who, exit_code=rc)
        return
    log_warning(gobj, "agent.yuno.died", "yuno died unexpectedly", target=who, exit_code=rc,
                ran_sec=round(ran, 1), stderr_log=os.path.join(
                    gobj.priv.data_dir, "yunos", f"{y.yuno_role}^{y.yuno_name}", "stderr.log"),
                yuno_log=_yuno_log(gobj, y))
    if ran > STABLE_SEC:
        y.restarts = 0
    _schedule_restart(gobj, y)


def _yuno_log(gobj: GObj, y: _Yuno) -> str:
    yuno = gobj_yuno()
    work_dir = yuno.read("work_dir") if yuno else os.path.abspath("var")
    return os.path.join(work_dir, "realms", y.yuno_role, y.yuno_name, "logs", "yuno.log")


def _schedule_restart(gobj: GObj, y: _Yuno) -> None:
    if not y.enabled or not gobj.running:
        return
    delay = min(RESTART_MAX_SEC, 0.5 * (2 ** y.restarts))
    y.restarts += 1
    log_info(gobj, "agent.yuno.restart_scheduled", "yuno restart scheduled",
             target=f"{y.yuno_role}^{y.yuno_name}", delay_sec=delay, restarts=y.restarts)

    def go() -> None:
        y.restart_handle = None
        if y.enabled and gobj.running and not y.alive():
            _launch(gobj, y)

    y.restart_handle = _loop().call_later(delay, go)


def _kill(gobj: GObj, y: _Yuno, *, on_purpose: bool) -> bool:
    if not y.alive():
        return False
    y.killing = on_purpose
    assert y.proc is not None
    try:
        y.proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return False
    proc = y.proc

    def force() -> None:
        if proc.returncode is None:
            log_warning(gobj, "agent.yuno.kill_forced", "yuno ignored SIGTERM; SIGKILL sent",
                        target=f"{y.yuno_role}^{y.yuno_name}", pid=proc.pid)
            proc.kill()

    _loop().call_later(5.0, force)
    return True


# ---------------------------------------------------------------------------
# Channels (from the gate)
# ---------------------------------------------------------------------------
def ac_on_open(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    channel: GObj = kw["channel"]
    role = channel.read("client_role")
    if role in CONTROL_ROLES:
        return 0
    y = gobj.priv.yunos.get(channel.read("client_id"))
    if y is None or not y.enabled:
        log_warning(gobj, "agent.yuno.unknown", "a yuno not in the registry (or disabled) "
                    "connected; channel dropped", client_role=role,
                    client_id=channel.read("client_id"), pid=channel.read("client_pid"))
        gobj_command_drop(channel, "unknown yuno")
        return -1
    pid = channel.read("client_pid")
    others = y.channel is not None and y.channel is not channel and not y.channel.destroyed
    if others or (y.alive() and y.proc is not None and pid != y.proc.pid):
        log_warning(gobj, "agent.yuno.duplicate", "a second process claims this yuno's "
                    "identity; channel dropped", target=f"{y.yuno_role}^{y.yuno_name}",
                    pid=pid, launched_pid=y.proc.pid if y.proc else 0)
        gobj_command_drop(channel, "duplicate yuno")
        return -1
    y.channel = channel
    y.playing = bool((channel.read("identity") or {}).get("playing"))
    _count_running(gobj)
    log_info(gobj, "agent.yuno.connected", "yuno connected", target=f"{y.yuno_role}^{y.yuno_name}",
             pid=channel.read("client_pid"), channel=channel.name)
    if y.must_play and not y.playing:
        send_iev(channel, iev.EV_PLAY_YUNO, {})
        y.playing = True
    return 0


def gobj_command_drop(channel: GObj, reason: str) -> None:
    from gobj import gobj_send_event

    if channel.children:
        gobj_send_event(channel.children[0], "EV_DROP", {"reason": reason}, channel)


def ac_on_close(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    channel = kw["channel"]
    for y in gobj.priv.yunos.values():
        if y.channel is channel:
            y.channel = None
            y.playing = False
            log_info(gobj, "agent.yuno.disconnected", "yuno channel closed",
                     target=f"{y.yuno_role}^{y.yuno_name}")
    _count_running(gobj)
    return 0


def _count_running(gobj: GObj) -> None:
    gobj._av[gobj.gclass.attr_index["yunos_running"]] = sum(
        1 for y in gobj.priv.yunos.values() if y.channel is not None)


def ac_channel_answer(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    """A yuno answered a relayed command: hand it to whoever asked."""
    answer = kw["kw"]
    channel: GObj = kw["channel"]
    try:
        relay = dict(((answer.get(iev.MD_IEV) or {}).get(iev.COMMAND_STACK) or [{}])[0]
                     .get("kw", {}).get("__relay__") or {})
    except (AttributeError, IndexError):
        relay = {}
    relay["yuno"] = f"{channel.read('client_role')}^{channel.read('client_name')}"
    pending = gobj.priv.relays.get(relay.get("id", ""))
    if pending is not None:
        pending.answers.append({**{k: answer.get(k) for k in ("result", "comment", "data")},
                                "yuno": relay["yuno"]})
        if len(pending.answers) >= pending.total and pending.done and not pending.done.done():
            pending.done.set_result(pending.answers)
        return 0
    try:
        _, back = iev.unrelay_answer(answer)
        out = iev.answer_back(back, channel_md_yuno())
    except iev.IEventError as exc:
        log_warning(gobj, "agent.relay.bad_answer", "answer cannot be routed back",
                    error=str(exc), channel=channel.name)
        return -1
    hop = iev.top_gate(back)
    caller = gate_channels(gobj.priv.gate).get(hop.get("input_channel", ""))
    if caller is None:
        return 0  # the caller left before the answer came
    out.kw["__relay__"] = {k: relay.get(k) for k in ("index", "total", "yuno")}
    return send_iev(caller, out.event, out.kw)


def _relay(gobj: GObj, yunos: list[_Yuno], line: str, extra: dict[str, Any],
           request_kw: dict[str, Any] | None, relay_id: str = "") -> int:
    """Send ``line`` to each yuno's channel; answers come back as EV_CHANNEL_ANSWER."""
    me = channel_md_yuno()
    sent = 0
    total = len(yunos)
    for i, y in enumerate(yunos):
        if y.channel is None:
            continue
        md_command = {"__relay__": {"id": relay_id, "index": i, "total": total}}
        if request_kw is not None:
            base = {k: v for k, v in request_kw.items() if k == iev.MD_IEV}
        else:
            hop0 = iev.gate_entry(me["yuno_role"], gobj.name, me["yuno_role"], gobj.name,
                                  "", "", me["yuno_name"], me["yuno_name"])
            base = {iev.MD_IEV: {iev.GATE_STACK: [hop0], iev.COMMAND_STACK: []}}
        hop = iev.gate_entry(y.yuno_role, extra.get("service", "__yuno__"), me["yuno_role"],
                             gobj.name, "", "", y.yuno_name, me["yuno_name"])
        kw = iev.relay_command(base, line, hop, md_command)
        kw[iev.MSG_TYPE] = iev.MSG_COMMAND
        kw.update(extra)
        if send_iev(y.channel, iev.EV_MT_COMMAND, kw) >= 0:
            sent += 1
    gobj._av[gobj.gclass.attr_index["relayed_commands"]] += sent
    return sent


async def broadcast(gobj: GObj, line: str, extra: dict[str, Any],
                    timeout: float = RELAY_TIMEOUT_SEC) -> list[dict[str, Any]]:
    """Relay to every running yuno and gather their answers (the agent's own use)."""
    yunos = [y for y in gobj.priv.yunos.values() if y.enabled and y.channel is not None]
    if not yunos:
        return []
    rid = f"r{next(gobj.priv.relay_seq)}"
    pending = _Relay(total=len(yunos), done=_loop().create_future())
    gobj.priv.relays[rid] = pending
    try:
        if _relay(gobj, yunos, line, extra, None, rid) == 0:
            return []
        try:
            return await asyncio.wait_for(asyncio.shield(pending.done), timeout)
        except asyncio.TimeoutError:
            answered = {a["yuno"] for a in pending.answers}
            missing = [f"{y.yuno_role}^{y.yuno_name}" for y in yunos
                       if f"{y.yuno_role}^{y.yuno_name}" not in answered]
            return pending.answers + [{"result": -1, "comment": "no answer in time", "yuno": m}
                                      for m in missing]
    finally:
        gobj.priv.relays.pop(rid, None)


# ---------------------------------------------------------------------------
# Cert sync (layer 2)
# ---------------------------------------------------------------------------
def _arm_cert_sync(gobj: GObj) -> None:
    timer = gobj.priv.timer
    if not gobj.read("cert_sync_enabled"):
        clear_timeout(timer)
        log_info(gobj, "cert_sync.disabled", "cert-sync timer disarmed")
        return
    interval = max(CERT_SYNC_FLOOR_SEC, gobj.read("cert_sync_interval_sec"))
    set_timeout_periodic(timer, interval * 1000)
    log_info(gobj, "cert_sync.armed", "cert-sync timer armed", interval_sec=interval,
             store_dir=gobj.read("cert_sync_store_dir"))


def fingerprint_store(store: str) -> dict[str, str]:
    """``{relative path: sha256 of content}`` of every cert, chain and key in the
    store, read through symlinks. Content, not size+mtime: a renewal that keeps
    both (or a directory or symlink swap) is still a change."""
    out: dict[str, str] = {}
    for sub in ("", "private"):
        folder = os.path.join(store, sub)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".crt", ".chain", ".key", ".pem")):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    out[os.path.join(sub, name)] = hashlib.sha256(f.read()).hexdigest()
            except OSError as exc:
                out[os.path.join(sub, name)] = f"unreadable: {exc.strerror}"
    return out


def ac_cert_sync_tick(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    start_sync(gobj, None, None)
    return 0


def start_sync(gobj: GObj, channel: GObj | None, request_kw: dict[str, Any] | None) -> bool:
    """Run one sync in the background; answer ``channel`` when done. False if one runs."""
    priv: _Priv = gobj.priv
    if priv.sync_task is not None and not priv.sync_task.done():
        return False
    priv.sync_task = asyncio.ensure_future(_sync(gobj, channel, request_kw), loop=_loop())
    return True


async def _run_copy(gobj: GObj) -> tuple[int, str]:
    cmd = gobj.read("cert_sync_copy_cmd")
    if not cmd.strip():
        return 0, ""
    try:
        proc = await asyncio.create_subprocess_shell(
            cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except asyncio.TimeoutError:
        proc.kill()
        return -1, "copy command timed out after 120 s"
    except OSError as exc:
        return -1, str(exc)
    return proc.returncode or 0, out.decode(errors="replace")[-2000:]


async def _sync(gobj: GObj, channel: GObj | None, request_kw: dict[str, Any] | None) -> None:
    priv: _Priv = gobj.priv
    idx = gobj.gclass.attr_index
    store = gobj.read("cert_sync_store_dir")
    gobj._av[idx["cert_sync_last_check"]] = int(time.time())
    before = fingerprint_store(store)
    rc, output = await _run_copy(gobj)
    copy_ok = rc == 0
    if not copy_ok:
        log_warning(gobj, "cert_sync.copy_failed", "cert-sync copy command failed",
                    cmd=gobj.read("cert_sync_copy_cmd"), exit_code=rc, output=output[-500:])
    after = fingerprint_store(store)
    changed = after != before or (priv.baseline is not None and after != priv.baseline)
    details: list[dict[str, Any]] = []
    if changed or priv.retry_pending:
        details = await _broadcast_reload(gobj)
        failed = [d for d in details if d.get("result", -1) < 0]
        priv.retry_pending = bool(failed)
        gobj._av[idx["cert_sync_last_action"]] = int(time.time())
        if failed:
            result = f"reload-failed ({len(failed)} of {len(details)})"
            gobj._av[idx["cert_sync_failures"]] += 1
            log_error(gobj, "cert_sync.reload_failed", "cert-sync reload failed; retried next "
                      "tick", failed=[f"{d['yuno']}: {d.get('comment')}" for d in failed])
        else:
            result = "reloaded" if copy_ok else "reloaded (copy script reported error)"
            log_info(gobj, "cert_sync.reloaded",
                     "cert-sync detected a certificate change; reload-certs broadcast",
                     changed_files=sorted(k for k in set(after) | set(before or {})
                                          if after.get(k) != (priv.baseline or {}).get(k)),
                     yunos=len(details))
        priv.baseline = after
    elif not copy_ok:
        result = "copy-script-failed"
        gobj._av[idx["cert_sync_failures"]] += 1
    else:
        result = "no-change"
    gobj._av[idx["cert_sync_last_result"]] = result
    await _refresh_served(gobj)
    if channel is not None and request_kw is not None and not channel.destroyed:
        send_answer(channel, request_kw, build_command_response(
            0 if not result.startswith("reload-failed") else -1,
            f"cert-sync tick done: {result}", None,
            {"result": result, "changed": changed, "store_dir": store, "details": details}))


async def _broadcast_reload(gobj: GObj) -> list[dict[str, Any]]:
    answers = await broadcast(gobj, "reload-certs", {"service": "__yuno__"})
    yuno = gobj_yuno()
    if yuno is not None:
        own = gobj_command(yuno, "reload-certs", {}, gobj) or {}
        if own.get("data", {}).get("reloaded", 0) or own.get("result", 0) < 0:
            answers.append({"result": own.get("result"), "comment": own.get("comment"),
                            "yuno": f"{yuno.read('yuno_role')}^{yuno.name}"})
    return answers


async def _refresh_served(gobj: GObj) -> None:
    """Remember what each listener serves, for cert-sync-status's drift report."""
    answers = await broadcast(gobj, "cert-expiry-status", {"service": "__yuno__"}, timeout=5.0)
    details = []
    for a in answers:
        for d in (a.get("data") or {}).get("details", []) if isinstance(a.get("data"), dict) \
                else []:
            details.append({**d, "yuno": a.get("yuno")})
    gobj.priv.served = {"at": int(time.time()), "details": details}


def _drift(gobj: GObj) -> list[dict[str, Any]]:
    from gobj.ytls.material import cert_info_of
    from cryptography import x509

    out = []
    for d in gobj.priv.served.get("details", []):
        path = d.get("ssl_certificate") or ""
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                leaf = x509.load_pem_x509_certificate(f.read())
            on_disk = cert_info_of(leaf)["fingerprint"]
        except (OSError, ValueError) as exc:
            on_disk = f"unreadable: {exc}"
        if on_disk != d.get("fingerprint"):
            out.append({"yuno": d.get("yuno"), "listener": d.get("gobj"), "file": path,
                        "served_serial": d.get("serial"), "served_fingerprint":
                        d.get("fingerprint"), "file_fingerprint": on_disk})
    return out


def _deploy_hook_last_run(gobj: GObj) -> int:
    try:
        with open(gobj.read("deploy_hook_last_run_file"), encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def _yuno_schema() -> list[dict[str, Any]]:
    cols = [("id", "Id", "string"), ("yuno_role", "Role", "string"),
            ("yuno_name", "Name", "string"), ("enabled", "Enabled", "boolean"),
            ("running", "Running", "boolean"), ("playing", "Playing", "boolean"),
            ("pid", "Pid", "integer"), ("restarts", "Restarts", "integer"),
            ("config_files", "Configs", "list")]
    return [{"id": c, "header": h, "type": t} for c, h, t in cols]


def cmd_list_yunos(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    rows = [y.row() for y in _matching(gobj, kw)]
    return build_command_response(0, f"{len(rows)} yuno(s)", _yuno_schema(), rows)


def cmd_create_yuno(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
    config = kw["config"]
    if not os.path.isfile(config):
        return build_command_response(-1, f"config file not found: {config!r}")
    try:
        with open(config, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError) as exc:
        return build_command_response(-1, f"config file {config!r} is not valid JSON: {exc}")
    yuno_sec = content.get("yuno", {}) if isinstance(content, dict) else {}
    role = kw.get("yuno_role") or yuno_sec.get("yuno_role")
    name = kw.get("yuno_name") or yuno_sec.get("yuno_name") or role
    if not role:
        return build_command_response(-1, "yuno_role not given and not in the config's yuno")
    if _find(gobj, role, name):
        return build_command_response(-1, f"yuno {role}^{name} already exists")
    y = _add(gobj, role, name, [os.path.abspath(config)], bool(kw.get("must_play", True)))
    if kw.get("run", True):
        _launch(gobj, y)
    return build_command_response(0, f"yuno {role}^{name} created", _yuno_schema(), [y.row()])


def _select(gobj: GObj, kw: dict[str, Any]) -> tuple[list[_Yuno], dict[str, Any] | None]:
    if not any(kw.get(k) for k in ("id", "yuno_role", "yuno_name")):
        return [], build_command_response(-1, "say which yuno: id=, yuno_role= or yuno_name=")
    found = _matching(gobj, kw)
    if not found:
        return [], build_command_response(-1, "Yuno not found")
    return found, None


def _lifecycle(action: str):  # type: ignore[no-untyped-def]
    def handler(gobj: GObj, cmd: str, kw: dict[str, Any], src: GObj | None) -> dict[str, Any]:
        found, error = _select(gobj, kw)
        if error is not None:
            return error
        done = []
        for y in found:
            who = f"{y.yuno_role}^{y.yuno_name}"
            if action == "run" and y.enabled and not y.alive():
                _launch(gobj, y)
                done.append(who)
            elif action == "kill" and _kill(gobj, y, on_purpose=True):
                done.append(who)
            elif action in ("play", "pause") and y.channel is not None:
                send_iev(y.channel, iev.EV_PLAY_YUNO if action == "play" else iev.EV_PAUSE_YUNO,
                         {})
                y.playing = action == "play"
                y.must_play = action == "play"
                done.append(who)
            elif action in ("enable", "disable"):
                y.enabled = action == "enable"
                if not y.enabled:
                    _kill(gobj, y, on_purpose=True)
                done.append(who)
        if action in ("enable", "disable", "play", "pause"):
            _save_registry(gobj)
        log_info(gobj, f"agent.yuno.{action}", f"{action}-yuno", yunos=done)
        return build_command_response(0, f"{action}-yuno: {len(done)} yuno(s)", _yuno_schema(),
                                      [y.row() for y in found])

    return handler


def cmd_command_yuno(gobj: GObj, cmd: str, kw: dict[str, Any],
                     src: GObj | None) -> dict[str, Any] | None:
    line = kw.get("command") or ""
    if not line:
        return build_command_response(-1, "command-yuno needs command=")
    filters = {k: kw.get(k) for k in ("id", "yuno_role", "yuno_name") if kw.get(k)}
    yunos = [y for y in _matching(gobj, filters) if y.enabled and y.channel is not None]
    if not yunos:
        return build_command_response(-1, "Yuno not found")
    extra = {k: v for k, v in kw.items()
             if not k.startswith("__") and k not in ("command", "id", "yuno_role", "yuno_name")}
    extra.setdefault("service", "__yuno__")
    request_kw = kw if kw.get(iev.MD_IEV) and kw.get("__channel__") is not None else None
    if request_kw is None:
        # Called from inside this yuno: gather the answers and return them together.
        start = asyncio.ensure_future(broadcast(gobj, line, extra), loop=_loop())
        start.add_done_callback(lambda t: None)
        return build_command_response(0, f"relayed to {len(yunos)} yuno(s)")
    _relay(gobj, yunos, line, extra, request_kw)
    return None  # each yuno answers on its own


def cmd_stats_yuno(gobj: GObj, cmd: str, kw: dict[str, Any],
                   src: GObj | None) -> dict[str, Any] | None:
    kw = dict(kw)
    kw["command"] = f"stats stats={kw.pop('stats', '')}" if kw.get("stats") else "stats"
    return cmd_command_yuno(gobj, cmd, kw, src)


def cmd_cert_sync_now(gobj: GObj, cmd: str, kw: dict[str, Any],
                      src: GObj | None) -> dict[str, Any] | None:
    channel = kw.get("__channel__")
    request_kw = kw if kw.get(iev.MD_IEV) and channel is not None else None
    if not start_sync(gobj, channel, request_kw):
        return build_command_response(-1, "a cert-sync tick is already running; try again")
    if request_kw is None:
        return build_command_response(0, "cert-sync tick started")
    return None


def cmd_cert_sync_status(gobj: GObj, cmd: str, kw: dict[str, Any],
                         src: GObj | None) -> dict[str, Any]:
    interval = gobj.read("cert_sync_interval_sec")
    data = {
        "enabled": gobj.read("cert_sync_enabled"),
        "interval_sec": interval,
        "effective_interval_sec": max(CERT_SYNC_FLOOR_SEC, interval),
        "store_dir": gobj.read("cert_sync_store_dir"),
        "copy_cmd": gobj.read("cert_sync_copy_cmd"),
        "last_check": gobj.read("cert_sync_last_check"),
        "last_action": gobj.read("cert_sync_last_action"),
        "last_result": gobj.read("cert_sync_last_result"),
        "failures": gobj.read("cert_sync_failures"),
        "retry_pending": gobj.priv.retry_pending,
        "deploy_hook_last_run": _deploy_hook_last_run(gobj),
        "served_checked_at": gobj.priv.served.get("at", 0),
        "drift": _drift(gobj),
    }
    return build_command_response(0, "cert-sync status", None, data)


_FILTERS = [
    SDATAPM(DTP.STRING, "id", SDF.NONE, None, "Yuno id"),
    SDATAPM(DTP.STRING, "yuno_role", SDF.NONE, None, "Yuno role", aliases=("role",)),
    SDATAPM(DTP.STRING, "yuno_name", SDF.NONE, None, "Yuno name", aliases=("name",)),
]

COMMANDS = [
    Cmd("list-yunos", cmd_list_yunos, _FILTERS, aliases=("1",), description="The yunos"),
    Cmd("create-yuno", cmd_create_yuno, [
        SDATAPM(DTP.STRING, "config", SDF.REQUIRED, None, "Config file of the yuno"),
        SDATAPM(DTP.STRING, "yuno_role", SDF.NONE, None, "Role (default: the config's)"),
        SDATAPM(DTP.STRING, "yuno_name", SDF.NONE, None, "Name (default: the config's)"),
        SDATAPM(DTP.BOOLEAN, "must_play", SDF.NONE, True, "Play it once running"),
        SDATAPM(DTP.BOOLEAN, "run", SDF.NONE, True, "Launch it now")],
        description="Register a yuno from a config file (and launch it)"),
    Cmd("run-yuno", _lifecycle("run"), _FILTERS, description="Launch yunos"),
    Cmd("kill-yuno", _lifecycle("kill"), _FILTERS, description="Stop yunos (SIGTERM)"),
    Cmd("play-yuno", _lifecycle("play"), _FILTERS, description="Play yunos"),
    Cmd("pause-yuno", _lifecycle("pause"), _FILTERS, description="Pause yunos"),
    Cmd("enable-yuno", _lifecycle("enable"), _FILTERS, description="Enable yunos"),
    Cmd("disable-yuno", _lifecycle("disable"), _FILTERS,
        description="Disable yunos (stops them; no restarts)"),
    Cmd("command-yuno", cmd_command_yuno, [
        SDATAPM(DTP.STRING, "command", SDF.NONE, None, "Command line for the yunos"),
        SDATAPM(DTP.STRING, "service", SDF.NONE, "__yuno__", "Service that runs it"),
        *_FILTERS], wild=True,
        description="Run a command in every matching running yuno; each answers"),
    Cmd("stats-yuno", cmd_stats_yuno, [
        SDATAPM(DTP.STRING, "stats", SDF.NONE, "", "Stats filter"),
        SDATAPM(DTP.STRING, "service", SDF.NONE, "__yuno__", "Service"), *_FILTERS], wild=True,
        description="Stats of every matching running yuno"),
    Cmd("cert-sync-now", cmd_cert_sync_now, [], description="Run a cert-sync tick now"),
    Cmd("cert-sync-status", cmd_cert_sync_status, [],
        description="Cert-sync state, the deploy hook's last run, served-vs-store drift"),
]

EVENT_TYPES = [
    ("EV_ON_OPEN", EVF.NONE),
    ("EV_ON_CLOSE", EVF.NONE),
    ("EV_CHANNEL_ANSWER", EVF.NONE),
    ("EV_TIMEOUT_PERIODIC", EVF.NONE),
]

STATES = [("ST_IDLE", [
    ("EV_ON_OPEN", ac_on_open, None),
    ("EV_ON_CLOSE", ac_on_close, None),
    ("EV_CHANNEL_ANSWER", ac_channel_answer, None),
    ("EV_TIMEOUT_PERIODIC", ac_cert_sync_tick, None),
])]


def register_c_agent() -> None:
    if gclass_find(C_AGENT) is not None:
        return
    register_c_iogate()
    register_c_timer()
    gclass_create(C_AGENT, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  commands=COMMANDS,
                  methods={"mt_create": mt_create, "mt_start": mt_start, "mt_play": mt_play,
                           "mt_stop": mt_stop, "mt_writing": mt_writing},
                  description="Per-host supervisor: launches yunos, relays commands, cert sync")
