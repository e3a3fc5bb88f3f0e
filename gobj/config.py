"""Yuno configuration: JSON pieces merged in order, with ``(^^var^^)`` variables.

Assembly: the yuno's embedded default, then each ``-f`` file in order (one path
or a JSON list of paths), then an optional JSON string; later pieces override
earlier ones key by key (dicts merge deeply, lists are joined without repeats,
``services`` merge by name). Lines starting with ``#^^`` are comments.
Variables come from every piece's ``__json_config_variables__`` plus built-ins
(``__hostname__``, ``__yuno_role__``, ``__yuno_name__``, ``__default_work_dir__``,
``__work_dir__`` = the config's environment.work_dir);
a string that is exactly one placeholder takes the variable's typed value.

Every error is a :class:`ConfigError` that names the file, the key and the problem.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from typing import Any

from gobj.gclass import gclass_find
from gobj.runtime import ConfigError

__all__ = ["assemble_config", "parse_config_arg", "read_config_file", "validate_config",
           "ConfigError", "default_work_dir"]

_VAR = re.compile(r"\(\^\^(.+?)\^\^\)")
_SECTIONS = {"environment": dict, "yuno": dict, "global": dict, "services": list,
             "__json_config_variables__": dict}
ORIGIN = "__origin__"


def default_work_dir() -> str:
    """Where the embedded defaults keep their state: $YUNETA_WORK_DIR or ./var."""
    return os.environ.get("YUNETA_WORK_DIR") or os.path.abspath("var")


def parse_config_arg(arg: str) -> list[str]:
    """``-f`` takes one path or a JSON list of paths."""
    text = arg.strip()
    if text.startswith("["):
        try:
            paths = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"-f {arg!r}: not a JSON list of paths ({exc})") from None
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ConfigError(f"-f {arg!r}: expected a JSON list of path strings")
        return paths
    return [text]


def _strip_comments(text: str) -> str:
    # Keep line count so that JSON error positions still point at the right line.
    return "\n".join("" if line.lstrip().startswith("#^^") else line
                     for line in text.split("\n"))


def read_config_text(text: str, origin: str) -> dict[str, Any]:
    try:
        data = json.loads(_strip_comments(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be an object, got {type(data).__name__}")
    for section, kind in _SECTIONS.items():
        if section in data and not isinstance(data[section], kind):
            raise ConfigError(f"{origin}: key '{section}' must be a {kind.__name__}, "
                              f"got {type(data[section]).__name__}")
    for i, node in enumerate(data.get("services", [])):
        if isinstance(node, dict):
            node.setdefault(ORIGIN, origin)
        else:
            raise ConfigError(f"{origin}: services[{i}] must be an object")
    return data


def read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file not readable by uid {os.geteuid()}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return read_config_text(text, path)


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if key == "services" and isinstance(value, list) and isinstance(dst.get(key), list):
            _merge_services(dst[key], value)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        elif isinstance(value, list) and isinstance(dst.get(key), list):
            for item in value:
                if item not in dst[key]:
                    dst[key].append(copy.deepcopy(item))
        else:
            dst[key] = copy.deepcopy(value)


def _merge_services(dst: list[Any], src: list[Any]) -> None:
    by_name = {n.get("name"): n for n in dst if isinstance(n, dict)}
    for node in src:
        name = node.get("name") if isinstance(node, dict) else None
        if name is not None and name in by_name:
            _merge(by_name[name], {k: v for k, v in node.items() if k != ORIGIN})
        else:
            dst.append(copy.deepcopy(node))


def _substitute(value: Any, variables: dict[str, Any], origin: str, path: str) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), variables, origin, path)
        return _VAR.sub(lambda m: str(_lookup(m.group(1), variables, origin, path)), value)
    if isinstance(value, dict):
        return {_substitute(k, variables, origin, path): _substitute(v, variables, origin,
                                                                      f"{path}.{k}" if path else k)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, origin, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _substitute_known(value: Any, variables: dict[str, Any]) -> Any:
    """Like _substitute, but leaves unknown placeholders for the real pass to report."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return _VAR.sub(lambda m: str(variables[m.group(1)]) if m.group(1) in variables
                        else m.group(0), value)
    if isinstance(value, dict):
        return {k: _substitute_known(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_known(v, variables) for v in value]
    return value


def _lookup(name: str, variables: dict[str, Any], origin: str, path: str) -> Any:
    if name not in variables:
        raise ConfigError(f"{origin}: key '{path}': unknown variable (^^{name}^^)")
    return variables[name]


def assemble_config(pieces: list[tuple[str, dict[str, Any]]], *,
                    fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``(origin, piece)`` pairs in order, substitute variables, merge the
    fixed config over the result (fixed keys cannot be overridden)."""
    variables: dict[str, Any] = {"__hostname__": socket.gethostname(),
                                 "__default_work_dir__": default_work_dir()}
    yuno: dict[str, Any] = {}
    work_dir = ""
    for _, piece in pieces:
        variables.update(piece.get("__json_config_variables__", {}))
        yuno.update(piece.get("yuno", {}))
        work_dir = piece.get("environment", {}).get("work_dir", work_dir)
    # __work_dir__ follows environment.work_dir, so paths built on it move when
    # a config moves the work dir.
    variables.setdefault("__work_dir__", work_dir or variables["__default_work_dir__"])
    variables.setdefault("__yuno_role__", yuno.get("yuno_role", ""))
    variables.setdefault("__yuno_name__", yuno.get("yuno_name", ""))
    # A variable may use others ("(^^__work__^^)/certs"); a few passes settle
    # any sensible nesting, and a cycle ends up reported as unresolved.
    for _ in range(5):
        resolved = {k: _substitute_known(v, variables) for k, v in variables.items()}
        if resolved == variables:
            break
        variables = resolved
    merged: dict[str, Any] = {}
    for origin, piece in pieces:
        _merge(merged, _substitute(piece, variables, origin, ""))
    if fixed:
        _merge(merged, fixed)
    return merged


def validate_config(config: dict[str, Any]) -> None:
    """Check what creation relies on: each service node names a registered gclass."""
    seen: set[str] = set()
    for i, node in enumerate(config.get("services", [])):
        _validate_node(node, f"services[{i}]", seen)


def _validate_node(node: dict[str, Any], where: str, seen: set[str]) -> None:
    origin = node.get(ORIGIN, "config")
    name = node.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{origin}: {where}: 'name' is required (a non-empty string)")
    gclass = node.get("gclass")
    if not isinstance(gclass, str) or not gclass:
        raise ConfigError(f"{origin}: {where} ({name}): 'gclass' is required")
    if gclass_find(gclass) is None:
        raise ConfigError(f"{origin}: {where} ({name}): unknown gclass {gclass!r}")
    if "kw" in node and not isinstance(node["kw"], dict):
        raise ConfigError(f"{origin}: {where} ({name}): 'kw' must be an object")
    prio = node.get("priority", 5)
    if not isinstance(prio, int) or not 0 <= prio <= 9:
        raise ConfigError(f"{origin}: {where} ({name}): 'priority' must be an integer 0..9")
    children = node.get("children", [])
    if not isinstance(children, list):
        raise ConfigError(f"{origin}: {where} ({name}): 'children' must be a list")
    for j, child in enumerate(children):
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {where}.children[{j}] must be an object")
        child.setdefault(ORIGIN, origin)
        _validate_node(child, f"{where}.children[{j}]", seen)


def strip_origins(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_origins(v) for k, v in node.items() if k != ORIGIN}
    if isinstance(node, list):
        return [strip_origins(v) for v in node]
    return node
