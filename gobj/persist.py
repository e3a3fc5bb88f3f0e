"""Persistent attrs of services, one JSON file per service, saved atomically.

File: ``<work_dir>/<domain_dir>/data/<GCLASS>-<name>-persistent-attrs.json``.
Loading happens at creation, over the config. Saving is explicit and names the
attrs; keys already in the file and not named are kept. A file that does not
parse is never overwritten: it is moved aside (``.corrupt-<time>``) and logged,
so nothing stored is lost.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from gobj.attrs import SDF
from gobj.fsutil import atomic_write
from gobj.log import log_error, log_warning

if TYPE_CHECKING:
    from gobj.runtime import GObj

__all__ = ["PersistStore"]

Keys = str | list[str] | tuple[str, ...] | dict[str, Any] | None


def _key_list(keys: Keys) -> list[str] | None:
    if keys is None or keys == "" or keys == []:
        return None
    if isinstance(keys, str):
        return [k for k in keys.replace(",", " ").split() if k]
    return list(keys)


class PersistStore:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def path_of(self, gobj: GObj) -> str:
        return os.path.join(self.data_dir, f"{gobj.gclass.name}-{gobj.name}-persistent-attrs.json")

    def _read(self, gobj: GObj) -> dict[str, Any]:
        path = self.path_of(gobj)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
            return data
        except ValueError as exc:
            aside = f"{path}.corrupt-{int(time.time())}"
            os.replace(path, aside)
            log_error(gobj, "persist.load.corrupt",
                      "persistent attrs file does not parse; moved aside, defaults used",
                      path=path, moved_to=aside, error=str(exc))
            return {}

    def load(self, gobj: GObj, keys: Keys = None) -> int:
        """Write the stored PERSIST attrs (all, or the named ones) into gobj."""
        from gobj.runtime import gobj_write_attr

        if not gobj.is_service:
            return -1
        wanted = _key_list(keys)
        stored = self._read(gobj)
        for key, value in stored.items():
            if wanted is not None and key not in wanted:
                continue
            row = gobj.gclass.attrs.get(key)
            if row is None or not row.flag & SDF.PERSIST:
                continue
            if gobj_write_attr(gobj, key, value) < 0:
                log_warning(gobj, "persist.load.bad_value", "stored value rejected", attr=key)
        return 0

    def save(self, gobj: GObj, keys: Keys = None) -> int:
        """Save the named PERSIST attrs (all when None); keys already stored stay."""
        if not gobj.is_service:
            log_warning(gobj, "persist.save.not_service", "only services persist attrs")
            return -1
        wanted = _key_list(keys)
        stored = self._read(gobj)
        for i, row in enumerate(gobj.gclass.attrs.values()):
            if not row.flag & SDF.PERSIST:
                continue
            if wanted is not None and row.name not in wanted:
                continue
            stored[row.name] = gobj._av[i]
        atomic_write(self.path_of(gobj), json.dumps(stored, indent=4, sort_keys=True).encode())
        return 0

    def remove(self, gobj: GObj, keys: Keys = None) -> int:
        """Remove the named keys (all when None) from the stored file."""
        wanted = _key_list(keys)
        path = self.path_of(gobj)
        if wanted is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return 0
            return 0
        stored = self._read(gobj)
        for key in wanted:
            stored.pop(key, None)
        atomic_write(path, json.dumps(stored, indent=4, sort_keys=True).encode())
        return 0

    def list(self, gobj: GObj, keys: Keys = None) -> dict[str, Any]:
        wanted = _key_list(keys)
        stored = self._read(gobj)
        if wanted is None:
            return stored
        return {k: v for k, v in stored.items() if k in wanted}
