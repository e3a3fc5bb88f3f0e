"""send_event / post_event / state changes, driven through a small FSM."""

from __future__ import annotations

import asyncio

import pytest

from gobj import (EV_STATE_CHANGED, EVF, drain_posted, gclass_create, gobj_create,
                  gobj_destroy, gobj_post_event, gobj_send_event, gobj_subscribe_event)
from gobj.gclass import gclass_unregister
from gobj.log import capture_logs
from tests.kernel_helpers import make_yuno, unique

seen: list[tuple[str, str, str]] = []


def ac_record(gobj, event, kw, src):
    seen.append((gobj.name, event, gobj.state))  # the state as the action sees it
    return kw.get("ret", 0)


@pytest.fixture
def door():
    """ST_CLOSED --EV_OPEN--> ST_OPEN --EV_CLOSE--> ST_CLOSED; EV_KNOCK only when closed."""
    name = unique("C_DOOR")
    gc = gclass_create(
        name,
        event_types=[("EV_OPEN", EVF.NONE), ("EV_CLOSE", EVF.NONE), ("EV_KNOCK", EVF.NONE),
                     ("EV_OPENED", EVF.OUTPUT)],
        states=[("ST_CLOSED", [("EV_OPEN", ac_record, "ST_OPEN"), ("EV_KNOCK", ac_record, None)]),
                ("ST_OPEN", [("EV_CLOSE", ac_record, "ST_CLOSED")])],
    )
    seen.clear()
    yield gc
    gclass_unregister(name)


def test_state_changes_before_the_action_runs(door):
    yuno = make_yuno()
    d = gobj_create("d", door, {}, yuno)
    assert d.state == "ST_CLOSED"
    assert gobj_send_event(d, "EV_OPEN", {"ret": 7}) == 7
    assert seen == [("d", "EV_OPEN", "ST_OPEN")]
    assert d.state == "ST_OPEN" and d.last_state == "ST_CLOSED"


def test_event_not_in_current_state_is_logged_error_and_state_kept(door):
    yuno = make_yuno()
    d = gobj_create("d", door, {}, yuno)
    gobj_send_event(d, "EV_OPEN")
    with capture_logs() as logs:
        assert gobj_send_event(d, "EV_KNOCK", {}, yuno) == -1
    assert d.state == "ST_OPEN"
    err = [r for r in logs if r["msgid"] == "gobj.event.not_defined"]
    assert len(err) == 1
    assert err[0]["level"] == "error" and err[0]["event"] == "EV_KNOCK"
    assert err[0]["state"] == "ST_OPEN" and err[0]["gclass"] == door.name
    assert err[0]["src"] == yuno.full_name


def test_send_to_destroyed_gobj_is_error(door):
    yuno = make_yuno()
    d = gobj_create("d", door, {}, yuno)
    gobj_destroy(d)
    with capture_logs() as logs:
        assert gobj_send_event(d, "EV_OPEN") == -1
    assert [r["msgid"] for r in logs] == ["gobj.event.no_destination"]


def test_state_change_publishes_ev_state_changed_to_subscribers_declaring_it(door):
    yuno = make_yuno()
    got = []
    wname = unique("C_WATCH")
    watcher_gc = gclass_create(
        wname, event_types=[(EV_STATE_CHANGED, EVF.NONE)],
        states=[("ST", [(EV_STATE_CHANGED, lambda g, e, kw, s: got.append(dict(kw)) or 0, None)])])
    try:
        d = gobj_create("d", door, {}, yuno)
        w = gobj_create("w", watcher_gc, {}, yuno)
        gobj_subscribe_event(d, EV_STATE_CHANGED, {}, w)
        gobj_send_event(d, "EV_OPEN")
        gobj_send_event(d, "EV_CLOSE")
        assert got == [{"previous_state": "ST_CLOSED", "current_state": "ST_OPEN"},
                       {"previous_state": "ST_OPEN", "current_state": "ST_CLOSED"}]
    finally:
        gclass_unregister(wname)


def test_post_event_runs_on_next_loop_turn_in_order(door):
    yuno = make_yuno()
    d = gobj_create("d", door, {}, yuno)

    async def main():
        gobj_post_event(d, "EV_OPEN")
        gobj_post_event(d, "EV_CLOSE")
        assert seen == []  # nothing ran synchronously
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return list(seen)

    assert asyncio.run(main()) == [("d", "EV_OPEN", "ST_OPEN"), ("d", "EV_CLOSE", "ST_CLOSED")]


def test_post_event_to_undeclared_event_refused_and_destroyed_dst_dropped(door):
    yuno = make_yuno()
    d = gobj_create("d", door, {}, yuno)
    with capture_logs() as logs:
        assert gobj_post_event(d, "EV_NOPE") == -1
    assert logs[0]["msgid"] == "gobj.event.post_undeclared"
    gobj_post_event(d, "EV_OPEN")
    gobj_destroy(d)
    assert drain_posted() == 0
    assert seen == []
