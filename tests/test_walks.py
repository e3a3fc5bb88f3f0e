"""Tree walks checked against a plain reference over random trees."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gobj import (WALK_BOTTOM2TOP, WALK_BYLEVEL, WALK_TOP2BOTTOM, gobj_create, gobj_destroy,
                  gobj_create_yuno, gobj_end, gobj_walk_gobj_children_tree)
from gobj.gclass import gclass_unregister
from tests.kernel_helpers import node_gclass

# A tree shape is a list of parent indexes: node i+1 hangs from parents[i] (< i+1).
shapes = st.integers(1, 40).flatmap(
    lambda n: st.tuples(*[st.integers(0, i) for i in range(n)]) if n else st.just(()))


@pytest.fixture(scope="module")
def gc():
    gc = node_gclass()
    yield gc
    gclass_unregister(gc.name)


def _build(gc, parents):
    gobj_end()
    yuno = gobj_create_yuno("root", gc, {})
    nodes = [yuno]
    for i, p in enumerate(parents):
        nodes.append(gobj_create(f"n{i + 1}", gc, {}, nodes[p]))
    # reference tree: name -> ordered child names
    ref = {n.name: [c.name for c in n.children] for n in nodes}
    return yuno, nodes, ref


def _ref_pre(ref, root, skip=frozenset(), stop=None):
    out = []

    def rec(name):
        for c in ref[name]:
            out.append(c)
            if c == stop:
                return True
            if c not in skip and rec(c):
                return True
        return False

    rec(root)
    return out


def _ref_post(ref, root):
    out = []

    def rec(name):
        for c in reversed(ref[name]):
            rec(c)
            out.append(c)

    rec(root)
    return out


def _ref_level(ref, root):
    out, q = [], deque(ref[root])
    while q:
        c = q.popleft()
        out.append(c)
        q.extend(ref[c])
    return out


@settings(max_examples=60, deadline=None)
@given(parents=shapes)
def test_orders_match_reference(gc, parents):
    yuno, nodes, ref = _build(gc, parents)
    for kind, expected in ((WALK_TOP2BOTTOM, _ref_pre(ref, yuno.name)),
                           (WALK_BOTTOM2TOP, _ref_post(ref, yuno.name)),
                           (WALK_BYLEVEL, _ref_level(ref, yuno.name))):
        got = []
        assert gobj_walk_gobj_children_tree(yuno, kind, lambda g: got.append(g.name) or 0) == 0
        assert got == expected, kind
    assert yuno.name not in got  # the root itself is not visited


@settings(max_examples=60, deadline=None)
@given(parents=shapes, data=st.data())
def test_abort_and_skip(gc, parents, data):
    yuno, nodes, ref = _build(gc, parents)
    names = [n.name for n in nodes[1:]]
    stop = data.draw(st.sampled_from(names))
    skip = frozenset(data.draw(st.lists(st.sampled_from(names), max_size=5)))
    got = []

    def cb(g):
        got.append(g.name)
        if g.name == stop:
            return -7
        return 1 if g.name in skip else 0

    ret = gobj_walk_gobj_children_tree(yuno, WALK_TOP2BOTTOM, cb)
    expected = _ref_pre(ref, yuno.name, skip=skip, stop=stop)
    assert got == expected
    assert ret == (-7 if stop in expected else 0)


@settings(max_examples=60, deadline=None)
@given(parents=shapes, data=st.data())
def test_callback_may_destroy_the_node_it_is_given(gc, parents, data):
    yuno, nodes, ref = _build(gc, parents)
    names = [n.name for n in nodes[1:]]
    doomed = frozenset(data.draw(st.lists(st.sampled_from(names), max_size=6)))
    got = []

    def cb(g):
        got.append(g.name)
        if g.name in doomed:
            gobj_destroy(g)
        return 0

    assert gobj_walk_gobj_children_tree(yuno, WALK_TOP2BOTTOM, cb) == 0
    # Reference: a destroyed node is visited but its subtree is not.
    assert got == _ref_pre(ref, yuno.name, skip=doomed)
    for n in nodes[1:]:
        if n.name in doomed:
            assert n.destroyed


@settings(max_examples=40, deadline=None)
@given(parents=shapes, data=st.data())
def test_bottom_up_destroy_every_visited_node(gc, parents, data):
    yuno, nodes, ref = _build(gc, parents)
    got = []

    def cb(g):
        got.append(g.name)
        gobj_destroy(g)  # children were visited (and destroyed) first
        return 0

    gobj_walk_gobj_children_tree(yuno, WALK_BOTTOM2TOP, cb)
    assert got == _ref_post(ref, yuno.name)
    assert yuno.children == []
