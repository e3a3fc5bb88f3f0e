"""Registration refuses a broken FSM table with a message naming gclass, state, event."""

from __future__ import annotations

import pytest

from gobj import EVF, GClassError, gclass_create
from gobj.gclass import gclass_unregister
from tests.kernel_helpers import unique


def _ac(gobj, event, kw, src):
    return 0


def _create(**kw):
    name = kw.pop("name", None) or unique("C_BAD")
    try:
        return gclass_create(name, **kw)
    finally:
        gclass_unregister(name)


def test_event_used_but_not_declared_names_gclass_state_event():
    with pytest.raises(GClassError) as exc:
        _create(name="C_BAD_UNDECL", event_types=[("EV_A", EVF.NONE)],
                states=[("ST_ONE", [("EV_A", _ac, None), ("EV_B", _ac, None)])])
    msg = str(exc.value)
    assert "C_BAD_UNDECL" in msg and "ST_ONE" in msg and "EV_B" in msg and "not declared" in msg


def test_declared_input_event_never_used_is_refused():
    with pytest.raises(GClassError, match=r"C_BAD_UNUSED: input event EV_ORPHAN .*no state"):
        _create(name="C_BAD_UNUSED", event_types=[("EV_A", EVF.NONE), ("EV_ORPHAN", EVF.NONE)],
                states=[("ST_ONE", [("EV_A", _ac, None)])])


def test_output_event_need_not_be_accepted():
    gc = _create(event_types=[("EV_OUT", EVF.OUTPUT)], states=[("ST_ONE", [])])
    assert gc.is_output("EV_OUT")


def test_next_state_must_exist():
    with pytest.raises(GClassError, match=r"state ST_ONE, event EV_A: next state ST_NOPE"):
        _create(event_types=[("EV_A", EVF.NONE)], states=[("ST_ONE", [("EV_A", _ac, "ST_NOPE")])])


def test_duplicate_event_in_one_state_and_duplicate_state():
    with pytest.raises(GClassError, match="EV_A appears twice"):
        _create(event_types=[("EV_A", EVF.NONE)],
                states=[("ST_ONE", [("EV_A", _ac, None), ("EV_A", _ac, None)])])
    with pytest.raises(GClassError, match="declared twice"):
        _create(event_types=[("EV_A", EVF.NONE)],
                states=[("ST_ONE", [("EV_A", _ac, None)]), ("ST_ONE", [])])


def test_unknown_method_and_bad_name_and_duplicate_registration():
    with pytest.raises(GClassError, match="unknown method"):
        _create(event_types=[], states=[("ST", [])], methods={"mt_craete": lambda g: None})
    with pytest.raises(GClassError, match="holds one of"):
        _create(name="C^X", event_types=[], states=[("ST", [])])
    name = unique("C_TWICE")
    gclass_create(name, event_types=[], states=[("ST", [])])
    try:
        with pytest.raises(GClassError, match="already registered"):
            gclass_create(name, event_types=[], states=[("ST", [])])
    finally:
        gclass_unregister(name)


def test_empty_fsm_refused():
    with pytest.raises(GClassError, match="at least one state"):
        _create(event_types=[], states=[])
