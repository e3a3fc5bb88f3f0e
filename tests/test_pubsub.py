"""Publish/subscribe: filters, rename, global/local kw, snapshot delivery, warnings."""

from __future__ import annotations

import pytest

from gobj import (EVF, gclass_create, gobj_create, gobj_destroy, gobj_publish_event,
                  gobj_subscribe_event, gobj_unsubscribe_event)
from gobj.gclass import gclass_unregister
from gobj.log import capture_logs
from tests.kernel_helpers import make_yuno, unique

inbox: list[tuple[str, str, dict]] = []
hooks: dict[str, object] = {}


def ac_take(gobj, event, kw, src):
    inbox.append((gobj.name, event, dict(kw)))
    hook = hooks.get(gobj.name)
    if callable(hook):
        hook(gobj)
    return 1


@pytest.fixture
def classes():
    pub = unique("C_PUB")
    sub = unique("C_SUB")
    gclass_create(pub, event_types=[("EV_NEWS", EVF.OUTPUT), ("EV_QUIET", EVF.OUTPUT |
                                                                EVF.NO_WARN_SUBS)],
                  states=[("ST", [])])
    gclass_create(sub, event_types=[("EV_NEWS", EVF.NONE), ("EV_RENAMED", EVF.NONE)],
                  states=[("ST", [("EV_NEWS", ac_take, None), ("EV_RENAMED", ac_take, None)])])
    inbox.clear()
    hooks.clear()
    yield pub, sub
    gclass_unregister(pub)
    gclass_unregister(sub)


def test_publish_reaches_subscribers_with_publisher_as_source(classes):
    pub_gc, sub_gc = classes
    y = make_yuno()
    p = gobj_create("p", pub_gc, {}, y)
    a = gobj_create("a", sub_gc, {}, y)
    b = gobj_create("b", sub_gc, {}, y)
    gobj_subscribe_event(p, "EV_NEWS", {}, a)
    gobj_subscribe_event(p, None, {}, b)  # all output events
    assert gobj_publish_event(p, "EV_NEWS", {"x": 1}) == 2
    assert inbox == [("a", "EV_NEWS", {"x": 1}), ("b", "EV_NEWS", {"x": 1})]


def test_filter_rename_global_local(classes):
    pub_gc, sub_gc = classes
    y = make_yuno()
    p = gobj_create("p", pub_gc, {}, y)
    a = gobj_create("a", sub_gc, {}, y)
    gobj_subscribe_event(p, "EV_NEWS", {"__filter__": {"topic": ["tls", "dns"]},
                                        "__config__": {"__rename_event_name__": "EV_RENAMED"},
                                        "__global__": {"added": True}, "__local__": ["secret"]}, a)
    gobj_publish_event(p, "EV_NEWS", {"topic": "weather"})
    gobj_publish_event(p, "EV_NEWS", {"topic": "tls", "secret": "s"})
    assert inbox == [("a", "EV_RENAMED", {"topic": "tls", "added": True})]


def test_unsubscribe_during_delivery_and_destroy_during_delivery(classes):
    pub_gc, sub_gc = classes
    y = make_yuno()
    p = gobj_create("p", pub_gc, {}, y)
    a = gobj_create("a", sub_gc, {}, y)
    b = gobj_create("b", sub_gc, {}, y)
    c = gobj_create("c", sub_gc, {}, y)
    for s in (a, b, c):
        gobj_subscribe_event(p, "EV_NEWS", {}, s)
    hooks["a"] = lambda g: gobj_destroy(b)          # a destroys a later subscriber
    hooks["c"] = lambda g: gobj_unsubscribe_event(p, "EV_NEWS", {}, g)  # c leaves
    gobj_publish_event(p, "EV_NEWS", {})
    assert [n for n, _, _ in inbox] == ["a", "c"]
    inbox.clear()
    gobj_publish_event(p, "EV_NEWS", {})
    assert [n for n, _, _ in inbox] == ["a"]


def test_no_subscriber_warns_unless_flagged_and_non_output_refused(classes):
    pub_gc, sub_gc = classes
    y = make_yuno()
    p = gobj_create("p", pub_gc, {}, y)
    with capture_logs() as logs:
        gobj_publish_event(p, "EV_NEWS", {})
        gobj_publish_event(p, "EV_QUIET", {})
        assert gobj_publish_event(p, "EV_UNDECLARED", {}) == -1
    assert [r["msgid"] for r in logs] == ["gobj.publish.no_subscribers",
                                         "gobj.publish.not_output"]


def test_destroy_removes_subscriptions_both_ways(classes):
    pub_gc, sub_gc = classes
    y = make_yuno()
    p = gobj_create("p", pub_gc, {}, y)
    a = gobj_create("a", sub_gc, {}, y)
    gobj_subscribe_event(p, "EV_NEWS", {}, a)
    gobj_destroy(a)
    assert not p.subscriptions
    a2 = gobj_create("a2", sub_gc, {}, y)
    gobj_subscribe_event(p, "EV_NEWS", {}, a2)
    gobj_destroy(p)
    assert not a2.subscribings


def test_identical_subscription_replaced_not_doubled(classes):
    pub_gc, sub_gc = classes
    y = make_yuno()
    p = gobj_create("p", pub_gc, {}, y)
    a = gobj_create("a", sub_gc, {}, y)
    gobj_subscribe_event(p, "EV_NEWS", {}, a)
    gobj_subscribe_event(p, "EV_NEWS", {}, a)
    gobj_publish_event(p, "EV_NEWS", {})
    assert len(inbox) == 1
