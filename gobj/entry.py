"""A yuno's process: ``python -m yunos.NAME -f CONFIG``.

Boot order: register gclasses; assemble and validate the config (a bad one
exits with status 2 and a message naming the file, the key and the problem,
before anything starts); install log handlers; create the event loop (uvloop
when installed, unless ``environment.use_uvloop`` is false); create the C_YUNO
root and the ``services`` trees; check required attrs; then start autostart
services by priority (0 first), play the yuno, play autoplay services.
SIGTERM/SIGINT shut it down gracefully: pause, stop in priority order (9 first),
destroy, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gobj.config import (ORIGIN, assemble_config, parse_config_arg, read_config_file,
                         read_config_text, strip_origins, validate_config)
from gobj.gclass import GCF
from gobj.log import log_critical, log_info, set_identity, setup_handlers
from gobj.persist import PersistStore
from gobj.runtime import (ConfigError, GObj, GObjError, gobj_create_tree, gobj_create_yuno, gobj_destroy,
                          gobj_end, gobj_iter_descendants, gobj_pause, gobj_play, gobj_start,
                          gobj_start_tree, gobj_stop, gobj_stop_tree, kernel, _missing_required)

__all__ = ["yuno_main", "yuno_shutdown", "build_config"]

_DEFAULT_CONSOLE = {"to_stdout": {"handler_type": "stdout", "level": "info"}}
_exit_code = {"code": 0}


def build_config(role: str, default_config: dict[str, Any], files: list[str],
                 extra_json: str | None) -> dict[str, Any]:
    pieces: list[tuple[str, dict[str, Any]]] = [
        ("<embedded default>", json.loads(json.dumps(default_config)))]
    for path in files:
        pieces.append((path, read_config_file(path)))
    if extra_json:
        pieces.append(("<command line JSON>", read_config_text(extra_json, "<command line JSON>")))
    config = assemble_config(pieces)
    yuno = config.setdefault("yuno", {})
    yuno.setdefault("yuno_role", role)
    if yuno["yuno_role"] != role:
        raise ConfigError(f"yuno.yuno_role is {yuno['yuno_role']!r} but this program is {role!r}")
    validate_config(config)
    return config


def _use_uvloop(config: dict[str, Any], flag: bool) -> bool:
    if not flag or not config.get("environment", {}).get("use_uvloop", True):
        return False
    try:
        import uvloop  # noqa: F401  (only asking whether it is installed)
    except ImportError:
        return False
    return True


def _new_loop(uv: bool) -> asyncio.AbstractEventLoop:
    if uv:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _create_tree(config: dict[str, Any], yuno_gclass: str) -> GObj:
    env = config.get("environment", {})
    yuno_cfg = dict(config.get("yuno", {}))
    role = yuno_cfg.get("yuno_role", "")
    name = yuno_cfg.get("yuno_name") or role
    work_dir = env.get("work_dir") or os.path.abspath("var")
    domain_dir = env.get("domain_dir") or f"realms/{role}/{name}"
    kernel.global_settings = dict(config.get("global", {}))
    kernel.persist = PersistStore(os.path.join(work_dir, domain_dir, "data"))
    yuno_cfg.update({"yuno_role": role, "yuno_name": name, "work_dir": work_dir,
                     "domain_dir": domain_dir, "pid": os.getpid()})
    yuno = gobj_create_yuno(name, yuno_gclass, yuno_cfg)
    for node in config.get("services", []):
        try:
            gobj_create_tree(yuno, strip_origins(node))
        except (ConfigError, GObjError) as exc:
            raise ConfigError(f"{node.get(ORIGIN, 'config')}: service {node.get('name')!r}: "
                              f"{exc}") from None
    for gobj in [yuno, *gobj_iter_descendants(yuno)]:
        missing = _missing_required(gobj)
        if missing:
            raise ConfigError(f"{gobj.full_name}: required attr(s) missing: {', '.join(missing)}")
    return yuno


def _top_services(yuno: GObj) -> list[GObj]:
    return [c for c in yuno.children if c.is_service]


def run_services(yuno: GObj) -> None:
    gobj_start(yuno)
    services = _top_services(yuno)
    for prio in range(10):
        for svc in services:
            if svc.priority == prio and svc.autostart and not svc.running:
                if "mt_play" in svc.gclass.methods:
                    gobj_start(svc)
                else:
                    gobj_start_tree(svc)
    failed = _not_started(services)
    if failed:
        # A yuno that cannot serve what its config declares (a port in use, a
        # certificate that does not load) stops at once with a non-zero exit,
        # so a supervisor sees the failure instead of a process serving nothing.
        log_critical(yuno, "yuno.start.failed", "services failed to start; yuno exits",
                     gobjs=failed, exit_code=3)
        yuno_shutdown(3)
        return
    gobj_play(yuno)
    for prio in range(10):
        for svc in services:
            if svc.priority == prio and svc.autoplay and not svc.playing:
                gobj_play(svc)


def _not_started(services: list[GObj]) -> list[str]:
    """Autostart gobjs (a service, or its whole tree when it has no mt_play)
    that are not running after the start phase: their mt_start refused."""
    failed: list[str] = []
    for svc in services:
        if not svc.autostart or svc.disabled:
            continue
        nodes = [svc] if "mt_play" in svc.gclass.methods else [svc, *gobj_iter_descendants(svc)]
        skipped: set[int] = set()
        for node in nodes:
            if node.parent is not None and id(node.parent) in skipped:
                skipped.add(id(node))
                continue
            if node.disabled or node.gclass.flags & GCF.MANUAL_START:
                skipped.add(id(node))
                continue
            if not node.running:
                failed.append(node.full_name)
                skipped.add(id(node))
    return failed


def stop_services(yuno: GObj) -> None:
    gobj_pause(yuno)
    services = _top_services(yuno)
    for prio in range(9, -1, -1):
        for svc in services:
            if svc.priority == prio:
                if svc.playing:
                    gobj_pause(svc)
                if svc.running:
                    gobj_stop_tree(svc)
    if yuno.running:
        gobj_stop(yuno)


def yuno_shutdown(exit_code: int = 0) -> None:
    """Ask the running yuno to shut down gracefully on the next loop turn."""
    _exit_code["code"] = exit_code
    loop = kernel.loop
    if loop is not None and loop.is_running():
        loop.call_soon(loop.stop)


def yuno_main(*, role: str, version: str, register: Callable[[], None],
              default_config: dict[str, Any], yuno_gclass: str = "C_YUNO",
              prepare: Callable[[dict[str, Any]], None] | None = None,
              argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=role, description=f"Yuneta-Py yuno '{role}'")
    parser.add_argument("-f", "--config-file", help="a config file or a JSON list of files")
    parser.add_argument("--print-config", action="store_true",
                        help="print the assembled config and exit")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    parser.add_argument("-v", "--version", action="version", version=f"{role} {version}")
    parser.add_argument("--start", action="store_true", help="accepted for Yuneta compatibility")
    parser.add_argument("config_json", nargs="?", help="extra config as a JSON string")
    args = parser.parse_args(argv)

    register()
    try:
        files = parse_config_arg(args.config_file) if args.config_file else []
        config = build_config(role, default_config, files, args.config_json)
    except ConfigError as exc:
        print(f"{role}: config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(strip_origins(config), indent=4))
        return 0
    if prepare is not None:
        prepare(config)  # after validation: a bad config leaves nothing behind
    return _run(config, role, yuno_gclass, not args.no_uvloop)


def _run(config: dict[str, Any], role: str, yuno_gclass: str, uv_flag: bool) -> int:
    env = config.get("environment", {})
    yuno_cfg = config.get("yuno", {})
    set_identity(f"{role}^{yuno_cfg.get('yuno_name') or role}")
    work_dir = env.get("work_dir") or os.path.abspath("var")
    domain_dir = env.get("domain_dir") or f"realms/{role}/{yuno_cfg.get('yuno_name') or role}"
    try:
        setup_handlers(env.get("console_log_handlers", _DEFAULT_CONSOLE),
                       os.path.join(work_dir, domain_dir, "logs"))
        setup_handlers(env.get("daemon_log_handlers", {}),
                       os.path.join(work_dir, domain_dir, "logs"))
    except (ValueError, OSError) as exc:
        print(f"{role}: config error: environment log handlers: {exc}", file=sys.stderr)
        return 2
    uv = _use_uvloop(config, uv_flag)
    loop = _new_loop(uv)
    asyncio.set_event_loop(loop)
    kernel.loop = loop
    try:
        yuno = _create_tree(config, yuno_gclass)
    except ConfigError as exc:
        print(f"{role}: config error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, yuno_shutdown, 0)
    log_info(yuno, "yuno.starting", "yuno starting", pid=os.getpid(),
             loop="uvloop" if uv else "asyncio")
    try:
        loop.call_soon(run_services, yuno)
        loop.run_forever()
        log_info(yuno, "yuno.stopping", "yuno stopping", exit_code=_exit_code["code"])
        stop_services(yuno)
        gobj_destroy(yuno)
        # Let closing transports flush their last bytes.
        loop.run_until_complete(asyncio.sleep(0.05))
    except Exception as exc:  # the loop itself broke: say so, exit non-zero
        log_critical(None, "yuno.crashed", "yuno crashed", error=repr(exc))
        raise
    finally:
        gobj_end()
        loop.close()
    return _exit_code["code"]
