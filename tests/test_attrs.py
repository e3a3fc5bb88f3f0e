"""Attr coercion as an operator typing write-attr would expect, and its refusals."""

from __future__ import annotations

import pytest

from gobj import DTP, SDATA, SDF, AttrError, gclass_create, gobj_create, gobj_read_attr, \
    gobj_write_attr, ConfigError
from gobj.attrs import coerce
from gobj.gclass import gclass_unregister
from gobj.log import capture_logs
from tests.kernel_helpers import make_yuno, unique

GOOD = [
    (DTP.INTEGER, "0x10", 16), (DTP.INTEGER, "010", 10), (DTP.INTEGER, " 42 ", 42),
    (DTP.INTEGER, 3.0, 3), (DTP.INTEGER, True, 1), (DTP.INTEGER, "1_000", 1000),
    (DTP.BOOLEAN, "true", True), (DTP.BOOLEAN, "FALSE", False), (DTP.BOOLEAN, "1", True),
    (DTP.BOOLEAN, "0", False), (DTP.BOOLEAN, 2, True), (DTP.BOOLEAN, "yes", True),
    (DTP.REAL, "1.5", 1.5), (DTP.REAL, 2, 2.0), (DTP.STRING, 5, "5"),
    (DTP.STRING, {"a": 1}, '{"a":1}'), (DTP.LIST, "[1, 2]", [1, 2]), (DTP.LIST, (1,), [1]),
    (DTP.DICT, '{"k": "v"}', {"k": "v"}), (DTP.JSON, [1, {"a": None}], [1, {"a": None}]),
]
BAD = [
    (DTP.INTEGER, "ten"), (DTP.INTEGER, 1.5), (DTP.INTEGER, [1]), (DTP.BOOLEAN, "maybe"),
    (DTP.BOOLEAN, [True]), (DTP.REAL, "x"), (DTP.REAL, True), (DTP.LIST, '{"a":1}'),
    (DTP.LIST, "not json"), (DTP.DICT, "[1]"), (DTP.DICT, 3), (DTP.JSON, object()),
]


@pytest.mark.parametrize("dtp,value,expected", GOOD)
def test_coercion_accepts(dtp, value, expected):
    assert coerce(dtp, value) == expected
    assert type(coerce(dtp, value)) is type(expected)


@pytest.mark.parametrize("dtp,value", BAD)
def test_coercion_refuses_with_expected_and_got(dtp, value):
    with pytest.raises(AttrError) as exc:
        coerce(dtp, value, "port")
    assert f"expected {dtp.value}" in str(exc.value) and "attr 'port'" in str(exc.value)


@pytest.fixture
def gc():
    name = unique("C_ATTRS")
    writes = []
    gc = gclass_create(name, event_types=[], states=[("ST", [])],
                       attrs=[SDATA(DTP.INTEGER, "port", SDF.RD | SDF.WR, 80, "port"),
                              SDATA(DTP.LIST, "tags", SDF.RD | SDF.WR, None, "tags")],
                       methods={"mt_writing": lambda g, n: writes.append((n, g.read(n)))})
    gc.writes = writes
    yield gc
    gclass_unregister(name)


def test_bad_write_keeps_old_value_logs_and_skips_mt_writing(gc):
    y = make_yuno()
    g = gobj_create("g", gc, {"port": "0x50"}, y)
    assert gobj_read_attr(g, "port") == 80 and gc.writes == [("port", 80)]
    with capture_logs() as logs:
        assert gobj_write_attr(g, "port", "eighty") == -1
    assert gobj_read_attr(g, "port") == 80
    assert logs[0]["msgid"] == "gobj.attr.bad_value" and logs[0]["attr"] == "port"
    assert gc.writes == [("port", 80)]


def test_defaults_are_fresh_per_instance(gc):
    y = make_yuno()
    a = gobj_create("a", gc, {}, y)
    b = gobj_create("b", gc, {}, y)
    gobj_read_attr(a, "tags").append("x")
    assert gobj_read_attr(b, "tags") == []


def test_config_with_wrong_type_refuses_creation_and_leaves_no_trace(gc):
    y = make_yuno()
    with pytest.raises(ConfigError, match=r"port: expected integer"):
        gobj_create("g", gc, {"port": "http"}, y)
    assert y.children == [c for c in y.children if c.name != "g"]


def test_unknown_config_attr_logged_not_silent(gc):
    y = make_yuno()
    with capture_logs() as logs:
        gobj_create("g", gc, {"prot": 1}, y)
    assert [(r["msgid"], r["attr"]) for r in logs] == [("gobj.config.unknown_attr", "prot")]
