"""Small throwaway gclasses for kernel tests."""

from __future__ import annotations

import itertools
from typing import Any

from gobj import DTP, EVF, SDATA, SDF, GObj, gclass_create, gobj_create_yuno
from gobj.gclass import gclass_unregister
from gclasses.c_yuno import C_YUNO, register_c_yuno

_seq = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_seq)}"


def node_gclass(**kw: Any):
    """A gclass with one state and no events: tree nodes for walks."""
    name = unique("C_NODE")
    gc = gclass_create(name, event_types=[], states=[("ST_IDLE", [])],
                       attrs=[SDATA(DTP.INTEGER, "n", SDF.RD | SDF.WR, 0, "a number")], **kw)
    return gc


def make_yuno(name: str = "test") -> GObj:
    register_c_yuno()
    return gobj_create_yuno(name, C_YUNO, {"yuno_role": "test", "timeout_cert_check": 0})


def drop(gc) -> None:
    gclass_unregister(gc.name)


# What a reload allocates comes from these files; allocations elsewhere in the
# process (pytest's own bookkeeping, another test's leftover thread) are noise
# that a full-suite run adds and a leak check must not count.
_RELOAD_CODE = ("/gobj/", "/gclasses/", "/ssl.py", "/mbedtls/", "/OpenSSL/",
                "/cryptography/", "/asyncio/", "/json/")


def reload_growth(before, after) -> int:
    """Bytes still held after the window, allocated by the reload path's code."""
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")
               if any(part in stat.traceback[0].filename for part in _RELOAD_CODE))
