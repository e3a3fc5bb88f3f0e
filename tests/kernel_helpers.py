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
