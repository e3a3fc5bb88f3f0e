"""C_TIMER: a timer gobj armed by writing its ``msec`` attr.

Writing ``msec`` is the single control point: a positive value arms the timer
(one-shot, or periodic when ``periodic`` is true), zero disarms it. Each timer
owns one event-loop timer handle, so it is as precise as the loop. A pure child
sends ``EV_TIMEOUT``/``EV_TIMEOUT_PERIODIC`` straight to its parent; any other
timer publishes them to its subscribers.

The FSM has one state and no input events: expiry comes from the loop, not from
another gobj, so nothing outside the table moves this machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gobj import (DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find, gobj_publish_event,
                  gobj_send_event, gobj_write_attr, kernel)

__all__ = ["C_TIMER", "register_c_timer", "set_timeout", "set_timeout_periodic", "clear_timeout"]

C_TIMER = "C_TIMER"

EV_TIMEOUT = "EV_TIMEOUT"
EV_TIMEOUT_PERIODIC = "EV_TIMEOUT_PERIODIC"

ATTRS = [
    SDATA(DTP.BOOLEAN, "periodic", SDF.RD | SDF.WR, False, "Re-arm after each expiry"),
    SDATA(DTP.INTEGER, "msec", SDF.RD | SDF.WR, 0, "Timeout in ms; writing >0 arms, 0 disarms"),
    SDATA(DTP.INTEGER, "fired", SDF.RD | SDF.STATS, 0, "Expiries so far"),
]

EVENT_TYPES = [
    (EV_TIMEOUT, EVF.OUTPUT),
    (EV_TIMEOUT_PERIODIC, EVF.OUTPUT),
]

STATES = [("ST_IDLE", [])]


class _Priv:
    __slots__ = ("handle", "deadline")

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0


def _loop() -> asyncio.AbstractEventLoop:
    if kernel.loop is not None:
        return kernel.loop
    return asyncio.get_event_loop()


def mt_create(gobj: GObj) -> None:
    if gobj.priv is None:
        gobj.priv = _Priv()


def mt_writing(gobj: GObj, name: str) -> None:
    if name != "msec":
        return
    if gobj.priv is None:
        gobj.priv = _Priv()
    _disarm(gobj)
    msec = gobj.read("msec")
    if msec > 0:
        _arm(gobj, msec)


def mt_destroy(gobj: GObj) -> None:
    if gobj.priv is not None:
        _disarm(gobj)


def _arm(gobj: GObj, msec: int) -> None:
    loop = _loop()
    priv: _Priv = gobj.priv
    # Periodic deadlines advance from the previous deadline, not from "now",
    # so a late callback does not make every later tick late too.
    priv.deadline = loop.time() + msec / 1000.0
    priv.handle = loop.call_at(priv.deadline, _expired, gobj)


def _disarm(gobj: GObj) -> None:
    priv: _Priv = gobj.priv
    if priv.handle is not None:
        priv.handle.cancel()
        priv.handle = None


def _expired(gobj: GObj) -> None:
    if gobj.destroyed:
        return
    priv: _Priv = gobj.priv
    priv.handle = None
    periodic = gobj.read("periodic")
    if periodic:
        msec = gobj.read("msec")
        if msec > 0:
            loop = _loop()
            priv.deadline = max(priv.deadline + msec / 1000.0, loop.time())
            priv.handle = loop.call_at(priv.deadline, _expired, gobj)
    else:
        gobj._av[gobj.gclass.attr_index["msec"]] = 0  # spent; no mt_writing needed
    gobj._av[gobj.gclass.attr_index["fired"]] += 1
    event = EV_TIMEOUT_PERIODIC if periodic else EV_TIMEOUT
    kw: dict[str, Any] = {}
    if gobj.pure_child and gobj.parent is not None:
        gobj_send_event(gobj.parent, event, kw, gobj)
    else:
        gobj_publish_event(gobj, event, kw)


def set_timeout(timer: GObj, msec: int) -> None:
    """Arm a one-shot timeout (sugar over writing ``periodic`` then ``msec``)."""
    gobj_write_attr(timer, "periodic", False)
    gobj_write_attr(timer, "msec", msec)


def set_timeout_periodic(timer: GObj, msec: int) -> None:
    gobj_write_attr(timer, "periodic", True)
    gobj_write_attr(timer, "msec", msec)


def clear_timeout(timer: GObj) -> None:
    gobj_write_attr(timer, "msec", 0)


def register_c_timer() -> None:
    if gclass_find(C_TIMER) is not None:
        return
    gclass_create(
        C_TIMER,
        event_types=EVENT_TYPES,
        states=STATES,
        attrs=ATTRS,
        methods={"mt_create": mt_create, "mt_writing": mt_writing, "mt_destroy": mt_destroy},
        description="Timer armed by writing msec; precise to the event loop",
    )
