"""C_YUNO's commands, run the way a client runs them: gobj_command on the yuno."""

from __future__ import annotations

import json

import pytest

from gobj import gobj_command, gobj_create_service, kernel
from gobj.persist import PersistStore
from gclasses.c_timer import C_TIMER
from tests.kernel_helpers import make_yuno


@pytest.fixture
def yuno(tmp_path):
    kernel.persist = PersistStore(str(tmp_path / "data"))
    y = make_yuno("y1")
    gobj_create_service("beat", C_TIMER, {"msec": 0}, y)
    return y


def run(yuno, line):
    answer = gobj_command(yuno, line)
    assert set(answer) == {"result", "comment", "schema", "data"}
    return answer


def test_help_lists_commands_and_explains_one(yuno):
    r = run(yuno, "help")
    assert r["result"] == 0 and "write-attr" in r["comment"] and "reload-certs" in r["comment"]
    r = run(yuno, "h cmd=write-attr")
    names = [p["id"] for p in r["data"]["parameters"]]
    assert names[:2] == ["attribute", "value"] and r["data"]["parameters"][0]["required"]


def test_write_attr_coerces_persists_and_refuses(yuno, tmp_path):
    r = run(yuno, "write-attr cert_warn_days 0x0A")
    assert r["result"] == 0 and r["data"]["cert_warn_days"] == 10
    stored = json.loads((tmp_path / "data" / "C_YUNO-y1-persistent-attrs.json").read_text())
    assert stored == {"cert_warn_days": 10}
    r = run(yuno, "write-attr attribute=cert_warn_days value=soon")
    assert r["result"] < 0 and "expected integer" in r["comment"]
    assert run(yuno, "view-attrs")["data"]["cert_warn_days"] == 10
    r = run(yuno, "write-attr attribute=pid value=1")
    assert r["result"] < 0 and "not writable" in r["comment"]
    r = run(yuno, "write-attr attribute=msec value=5 gobj=nope")
    assert r["result"] < 0 and "gobj not found" in r["comment"]


def test_persistent_attrs_list_and_remove(yuno):
    run(yuno, "write-attr timeout_cert_check 60")
    run(yuno, "write-attr cert_critical_days 1")
    r = run(yuno, "list-persistent-attrs gobj=__yuno__")
    assert r["data"] == {"timeout_cert_check": 60, "cert_critical_days": 1}
    run(yuno, "remove-persistent-attrs gobj=__yuno__ attrs=timeout_cert_check")
    assert run(yuno, "persistent-attrs gobj=__yuno__")["data"] == {"cert_critical_days": 1}
    r = run(yuno, "list-persistent-attrs gobj=C_YUNO^y1`C_TIMER^y1")
    assert r["result"] < 0 and "not a service" in r["comment"]


def test_tree_gclass_mermaid_stats_services(yuno):
    tree = run(yuno, "view-gobj-tree")["data"]
    assert tree["name"] == "C_YUNO^y1"
    assert {c["name"] for c in tree["children"]} == {"C_TIMER^y1", "C_TIMER^beat"}
    data = run(yuno, "view-gclass")["data"]
    assert data["gclass"] == "C_YUNO" and data["states"] == ["ST_IDLE"]
    assert "stateDiagram-v2" in data["mermaid"] and "EV_TIMEOUT_PERIODIC" in data["mermaid"]
    r = run(yuno, "view-gclass gclass=C_NOPE")
    assert r["result"] < 0
    stats = run(yuno, "stats")["data"]
    assert {"uptime", "cpu", "cert_checks"} <= set(stats)
    services = [s["service"] for s in run(yuno, "services")["data"]]
    assert services == ["beat"]
    assert run(yuno, "view-log-counters")["result"] == 0


def test_reload_and_expiry_without_listeners(yuno):
    r = run(yuno, "reload-certs")
    assert r["result"] == 0 and r["data"] == {"reloaded": 0, "failed": 0, "details": []}
    assert "reloaded 0 TLS listener(s), 0 failed" in r["comment"]
    r = run(yuno, "cert-expiry-status")
    assert r["data"]["listeners"] == 0 and r["data"]["min_days_remaining"] == -1


def test_unknown_command_and_bad_option(yuno):
    r = run(yuno, "fly")
    assert r["result"] == -1 and "command not available: 'fly'" in r["comment"]
    r = run(yuno, "stats color=red")
    assert r["result"] == -1 and "has no option 'color'" in r["comment"]


def test_stats_filter_and_reset(yuno):
    from gclasses.c_echo import C_ECHO, register_c_echo

    register_c_echo()
    echo = gobj_create_service("e", C_ECHO, {}, yuno)
    echo._av[echo.gclass.attr_index["echoed_bytes"]] = 42
    echo._av[echo.gclass.attr_index["sessions"]] = 3
    assert run(yuno, "stats gobj=e stats=echo")["data"] == {"echoed_bytes": 42}
    after = run(yuno, "stats gobj=e stats=__reset__")["data"]
    assert after["echoed_bytes"] == 0  # resettable
    assert after["sessions"] == 3      # a gauge, not reset


def test_set_trace_logs_events_of_that_gclass_only(yuno):
    from gobj import gobj_send_event
    from gobj.log import capture_logs

    run(yuno, "set-trace gclass=C_YUNO")
    try:
        with capture_logs() as logs:
            gobj_send_event(yuno, "EV_TIMEOUT_PERIODIC", {}, yuno)
        assert [r["event"] for r in logs if r["msgid"] == "gobj.trace.event"] == \
            ["EV_TIMEOUT_PERIODIC"]
    finally:
        run(yuno, "set-trace gclass=C_YUNO set=0")
    with capture_logs() as logs:
        gobj_send_event(yuno, "EV_TIMEOUT_PERIODIC", {}, yuno)
    assert not [r for r in logs if r["msgid"] == "gobj.trace.event"]


def test_any_gobj_answers_help_with_its_own_commands(yuno):
    from gclasses.c_tcp_s import C_TCP_S, register_c_tcp_s

    register_c_tcp_s()
    listener = gobj_create_service("l", C_TCP_S, {"url": "tcp://127.0.0.1:0"}, yuno)
    r = gobj_command(listener, "help")
    assert r["result"] == 0 and {c["command"] for c in r["data"]} == {"reload-certs",
                                                                         "view-cert"}
