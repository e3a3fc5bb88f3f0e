"""C_TIMER: writing msec arms, 0 disarms; pure child vs publish; periodic re-arm."""

from __future__ import annotations

import asyncio

from gobj import EVF, gclass_create, gobj_create, gobj_create_pure_child, gobj_subscribe_event
from gobj.gclass import gclass_unregister
from gclasses.c_timer import C_TIMER, clear_timeout, register_c_timer, set_timeout, \
    set_timeout_periodic
from tests.kernel_helpers import make_yuno, unique


def _owner_class(log):
    name = unique("C_OWNER")

    def ac(gobj, event, kw, src):
        log.append((event, src.name, asyncio.get_running_loop().time()))
        return 0

    return gclass_create(name, event_types=[("EV_TIMEOUT", EVF.NONE),
                                            ("EV_TIMEOUT_PERIODIC", EVF.NONE)],
                         states=[("ST", [("EV_TIMEOUT", ac, None),
                                         ("EV_TIMEOUT_PERIODIC", ac, None)])])


def test_one_shot_pure_child_periodic_publish_and_disarm():
    log = []
    register_c_timer()
    owner_gc = _owner_class(log)

    async def main():
        y = make_yuno()
        owner = gobj_create("owner", owner_gc, {}, y)
        child = gobj_create_pure_child("once", C_TIMER, {}, owner)
        pub = gobj_create("tick", C_TIMER, {}, owner)
        gobj_subscribe_event(pub, None, {}, owner)
        t0 = asyncio.get_running_loop().time()
        set_timeout(child, 50)
        set_timeout_periodic(pub, 30)
        await asyncio.sleep(0.2)
        clear_timeout(pub)
        n = len(log)
        await asyncio.sleep(0.1)
        assert len(log) == n  # disarmed: nothing more
        return t0

    try:
        t0 = asyncio.run(main())
    finally:
        gclass_unregister(owner_gc.name)
    once = [e for e in log if e[1] == "once"]
    ticks = [e for e in log if e[1] == "tick"]
    assert [e[0] for e in once] == ["EV_TIMEOUT"]
    assert 0.045 <= once[0][2] - t0 < 0.15
    assert all(e[0] == "EV_TIMEOUT_PERIODIC" for e in ticks)
    assert 5 <= len(ticks) <= 7
