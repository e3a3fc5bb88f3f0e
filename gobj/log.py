"""JSON-lines logging: one record per thing an operator would want to know.

Every record carries ``timestamp`` (ISO 8601 with zone), ``level``, ``msgid``
(a stable, greppable topic such as ``tls.reload.failed``), a fixed ``msg``, the
``yuno`` (role^name), and, when a gobj is given, its ``gclass``, full name
(``gobj``) and ``state``; then the record's own fields. What varies goes into
fields, never into ``msg``, so records can be grepped and counted.

Fields whose names look secret (passwords, passphrases, tokens, private keys)
are masked before any handler sees them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gobj.runtime import GObj

__all__ = [
    "LEVELS",
    "add_handler",
    "capture_logs",
    "clear_handlers",
    "log_counters",
    "log_critical",
    "log_debug",
    "log_error",
    "log_info",
    "log_warning",
    "reset_log_counters",
    "set_identity",
    "setup_handlers",
]

LEVELS = ("critical", "error", "warning", "info", "debug")
_RANK = {name: i for i, name in enumerate(LEVELS)}

# Names (or name fragments) whose values never reach a log line.
_SECRET_MARKS = ("password", "passphrase", "private_key", "key_pem", "secret", "jwt", "token")

Sink = Callable[[dict[str, Any], str], None]

_lock = threading.Lock()
_sinks: list[tuple[int, Sink]] = []  # (max rank accepted, sink)
_counters: dict[str, int] = {name: 0 for name in LEVELS}
_identity = {"yuno": ""}
_verbose_gclasses: set[str] = set()


def set_identity(yuno: str) -> None:
    """Set the ``role^name`` stamped on every record of this process."""
    _identity["yuno"] = yuno


def _mask(fields: dict[str, Any]) -> dict[str, Any]:
    for key in list(fields):
        low = key.lower()
        if any(mark in low for mark in _SECRET_MARKS):
            fields[key] = "***"
        elif isinstance(fields[key], dict) and key == "crypto":
            fields[key] = _mask(dict(fields[key]))
    return fields


def _emit(level: str, gobj: GObj | None, msgid: str, msg: str, fields: dict[str, Any]) -> None:
    _counters[level] += 1
    record: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).astimezone().isoformat(timespec="microseconds"),
        "level": level,
        "msgid": msgid,
        "msg": msg,
        "yuno": _identity["yuno"],
    }
    if gobj is not None:
        record["gclass"] = gobj.gclass.name
        record["gobj"] = gobj.full_name
        record["state"] = gobj.state
    if fields:
        for key, value in _mask(fields).items():
            # The header (yuno, gobj, state, ...) is who logged; a field that
            # reuses one of its names is kept beside it, never over it.
            record[f"{key}_" if key in record else key] = value
    line = json.dumps(record, default=str, ensure_ascii=False)
    rank = _RANK[level]
    with _lock:
        sinks = list(_sinks)
    for max_rank, sink in sinks:
        if rank <= max_rank:
            sink(record, line)


def log_critical(gobj: GObj | None, msgid: str, msg: str, **fields: Any) -> None:
    _emit("critical", gobj, msgid, msg, fields)


def log_error(gobj: GObj | None, msgid: str, msg: str, **fields: Any) -> None:
    _emit("error", gobj, msgid, msg, fields)


def log_warning(gobj: GObj | None, msgid: str, msg: str, **fields: Any) -> None:
    _emit("warning", gobj, msgid, msg, fields)


def log_info(gobj: GObj | None, msgid: str, msg: str, **fields: Any) -> None:
    _emit("info", gobj, msgid, msg, fields)


def log_debug(gobj: GObj | None, msgid: str, msg: str, **fields: Any) -> None:
    _emit("debug", gobj, msgid, msg, fields)


def log_counters() -> dict[str, int]:
    return dict(_counters)


def reset_log_counters() -> None:
    for name in LEVELS:
        _counters[name] = 0


def add_handler(sink: Sink, level: str = "debug") -> Sink:
    """Add a sink receiving (record, json_line) for records at ``level`` or worse."""
    if level not in _RANK:
        raise ValueError(f"unknown log level {level!r}; expected one of {LEVELS}")
    with _lock:
        _sinks.append((_RANK[level], sink))
    return sink


def remove_handler(sink: Sink) -> None:
    with _lock:
        _sinks[:] = [(r, s) for r, s in _sinks if s is not sink]


def clear_handlers() -> None:
    with _lock:
        _sinks.clear()


def _stdout_sink(record: dict[str, Any], line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _file_sink(path: str, max_bytes: int, backups: int) -> Sink:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))

    def sink(record: dict[str, Any], line: str) -> None:
        handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    return sink


def setup_handlers(handlers: dict[str, dict[str, Any]], logs_dir: str) -> None:
    """Install the handlers of a config's ``*_log_handlers`` section.

    Each entry: ``{"handler_type": "stdout"|"file", "level": "debug"...,
    "filename": "x.log" (under logs_dir), "max_megas": 10, "backups": 5}``.
    Raises ValueError naming the handler and the problem.
    """
    for name, spec in handlers.items():
        kind = spec.get("handler_type", "stdout")
        level = spec.get("level", "info")
        if kind == "stdout":
            add_handler(_stdout_sink, level)
        elif kind == "file":
            filename = spec.get("filename") or f"{name}.log"
            path = os.path.join(logs_dir, filename)
            max_bytes = int(float(spec.get("max_megas", 10)) * 1024 * 1024)
            add_handler(_file_sink(path, max_bytes, int(spec.get("backups", 5))), level)
        else:
            raise ValueError(f"log handler {name!r}: unknown handler_type {kind!r} (stdout, file)")


@contextmanager
def capture_logs(level: str = "debug") -> Iterator[list[dict[str, Any]]]:
    """Collect the records emitted inside the block (for tests and tools)."""
    records: list[dict[str, Any]] = []

    def sink(record: dict[str, Any], line: str) -> None:
        records.append(record)

    add_handler(sink, level)
    try:
        yield records
    finally:
        remove_handler(sink)
