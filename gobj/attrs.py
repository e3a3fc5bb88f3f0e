"""Attribute descriptors, flags and write coercion.

A gclass declares its attrs as a table of :class:`SData` rows. Writes coerce
the value to the declared type the way an operator typing ``write-attr`` would
expect ("0x10" to 16, "true" to True, a JSON string to a list); a value that
cannot be coerced raises :class:`AttrError` and the caller keeps the old value.
"""

from __future__ import annotations

import copy
import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DTP", "SDF", "SData", "AttrError", "coerce", "SDATA", "SDATAPM"]


class DTP(enum.Enum):
    STRING = "string"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    REAL = "real"
    LIST = "list"
    DICT = "dict"
    JSON = "json"
    POINTER = "pointer"


class SDF(enum.IntFlag):
    NONE = 0
    NOTACCESS = 0x1
    RD = 0x2
    WR = 0x4
    REQUIRED = 0x8
    PERSIST = 0x10
    VOLATIL = 0x20
    STATS = 0x40
    RSTATS = 0x80
    PSTATS = 0x100
    WILD_CMD = 0x200
    AUTHZ_X = 0x400

    # Masks used by commands: what write-attr may write, what view-attrs shows.
    @classmethod
    def writable(cls) -> SDF:
        return cls.WR | cls.PERSIST

    @classmethod
    def public(cls) -> SDF:
        return cls.RD | cls.WR | cls.STATS | cls.PERSIST | cls.VOLATIL | cls.RSTATS | cls.PSTATS


class AttrError(ValueError):
    """A value that does not fit the attr's type; the message says expected vs got."""


@dataclass(frozen=True, slots=True)
class SData:
    """One attr (or command parameter) row."""

    type: DTP
    name: str
    flag: SDF = SDF.NONE
    default: Any = None
    description: str = ""
    aliases: tuple[str, ...] = field(default=())

    def default_value(self) -> Any:
        """The default, coerced to the type; containers are fresh copies."""
        if self.default is None:
            return _EMPTY[self.type]() if self.type in _EMPTY else None
        if isinstance(self.default, (list, dict)):
            return copy.deepcopy(self.default)
        return coerce(self.type, self.default, self.name)


def SDATA(type: DTP, name: str, flag: SDF, default: Any, description: str) -> SData:  # noqa: N802
    """Table-row constructor in Yuneta's column order."""
    return SData(type, name, flag, default, description)


def SDATAPM(  # noqa: N802
    type: DTP, name: str, flag: SDF, default: Any, description: str, aliases: tuple[str, ...] = ()
) -> SData:
    """A command parameter row; REQUIRED rows that lead the table are positional."""
    return SData(type, name, flag, default, description, tuple(aliases))


_EMPTY = {
    DTP.STRING: str,
    DTP.BOOLEAN: bool,
    DTP.INTEGER: int,
    DTP.REAL: float,
    DTP.LIST: list,
    DTP.DICT: dict,
}

_TRUE = {"true", "yes", "on", "t", "y"}
_FALSE = {"false", "no", "off", "f", "n", ""}


def _to_int(text: str) -> int:
    s = text.strip().replace("_", "")
    try:
        return int(s, 0)  # 0x10, 0o17, 0b101
    except ValueError:
        return int(s, 10)  # "010": int(x, 0) refuses leading zeros


def coerce(dtp: DTP, value: Any, name: str = "") -> Any:
    """Coerce ``value`` to ``dtp`` or raise AttrError naming what was expected."""
    try:
        return _COERCE[dtp](value)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        where = f"attr {name!r}: " if name else ""
        raise AttrError(f"{where}expected {dtp.value}, got {shown} ({exc})") from None


def _c_string(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def _c_boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, str):
        low = v.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return _to_int(low) != 0
    raise TypeError(f"{type(v).__name__} is not a boolean")


def _c_integer(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("a real with a fraction is not an integer")
        return int(v)
    if isinstance(v, str):
        return _to_int(v)
    raise TypeError(f"{type(v).__name__} is not an integer")


def _c_real(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError("a boolean is not a real")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        return float(v.strip())
    raise TypeError(f"{type(v).__name__} is not a real")


def _c_container(kind: type, label: str):  # type: ignore[no-untyped-def]
    def conv(v: Any) -> Any:
        if v is None:
            return kind()  # "no value" for a container is the empty one
        if isinstance(v, str):
            v = json.loads(v)
        if kind is list and isinstance(v, tuple):
            v = list(v)
        if not isinstance(v, kind):
            raise TypeError(f"{type(v).__name__} is not a {label}")
        return v

    return conv


def _c_json(v: Any) -> Any:
    json.dumps(v)  # raises TypeError for what JSON cannot carry
    return v


_COERCE = {
    DTP.STRING: _c_string,
    DTP.BOOLEAN: _c_boolean,
    DTP.INTEGER: _c_integer,
    DTP.REAL: _c_real,
    DTP.LIST: _c_container(list, "list"),
    DTP.DICT: _c_container(dict, "dict"),
    DTP.JSON: _c_json,
    DTP.POINTER: lambda v: v,
}
