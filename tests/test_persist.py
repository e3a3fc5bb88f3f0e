"""Persistent attrs: load over config, explicit named saves, atomic writes that
survive a SIGKILL in the middle of a save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gobj import DTP, SDATA, SDF, gclass_create, gobj_create_service, gobj_read_attr, kernel
from gobj.gclass import gclass_unregister
from gobj.log import capture_logs
from gobj.persist import PersistStore
from tests.kernel_helpers import make_yuno, unique


@pytest.fixture
def gc():
    name = unique("C_PERS")
    gc = gclass_create(name, event_types=[], states=[("ST", [])], attrs=[
        SDATA(DTP.INTEGER, "port", SDF.RD | SDF.WR | SDF.PERSIST, 80, "port"),
        SDATA(DTP.STRING, "label", SDF.RD | SDF.WR | SDF.PERSIST, "", "label"),
        SDATA(DTP.INTEGER, "volatile", SDF.RD | SDF.WR, 0, "not persisted")])
    yield gc
    gclass_unregister(name)


def test_persistent_attrs_load_over_config_and_saves_keep_other_keys(gc, tmp_path):
    kernel.persist = PersistStore(str(tmp_path / "data"))
    y = make_yuno()
    s = gobj_create_service("svc", gc, {"port": 1, "label": "cfg"}, y)
    s.write("port", 2)
    s.write("label", "first")
    kernel.persist.save(s, ["port", "label"])
    s.write("label", "second")
    kernel.persist.save(s, "port")  # label not named: the stored "first" stays
    path = tmp_path / "data" / f"{gc.name}-svc-persistent-attrs.json"
    assert json.loads(path.read_text()) == {"port": 2, "label": "first"}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    s2 = gobj_create_service("SVC2", gc, {"port": 9}, y)
    assert gobj_read_attr(s2, "port") == 9  # no file for it
    from gobj import gobj_destroy
    gobj_destroy(s)
    s = gobj_create_service("svc", gc, {"port": 1, "label": "cfg"}, y)
    assert (gobj_read_attr(s, "port"), gobj_read_attr(s, "label")) == (2, "first")


def test_corrupt_file_is_moved_aside_not_lost(gc, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    bad = data / f"{gc.name}-svc-persistent-attrs.json"
    bad.write_text('{"port": 5,')
    kernel.persist = PersistStore(str(data))
    with capture_logs() as logs:
        s = gobj_create_service("svc", gc, {}, make_yuno())
    assert gobj_read_attr(s, "port") == 80
    rec = [r for r in logs if r["msgid"] == "persist.load.corrupt"][0]
    assert rec["path"] == str(bad) and os.path.exists(rec["moved_to"])
    assert open(rec["moved_to"]).read() == '{"port": 5,'


WRITER = textwrap.dedent("""
    import sys
    from gobj import DTP, SDATA, SDF, gclass_create, gobj_create_service, kernel
    from gobj.persist import PersistStore
    from tests.kernel_helpers import make_yuno
    gclass_create("C_BIG", event_types=[], states=[("ST", [])], attrs=[
        SDATA(DTP.STRING, "blob", SDF.RD | SDF.WR | SDF.PERSIST, "", "big")])
    kernel.persist = PersistStore(sys.argv[1])
    s = gobj_create_service("big", "C_BIG", {}, make_yuno())
    i = 0
    print("ready", flush=True)
    while True:
        s.write("blob", ("ab"[i % 2]) * 400_000)
        kernel.persist.save(s, ["blob"])
        i += 1
""")


def test_sigkill_during_save_leaves_a_file_that_loads(tmp_path):
    """A real child process saves a 400 KB attr in a loop and is killed for real."""
    data = tmp_path / "data"
    path = data / "C_BIG-big-persistent-attrs.json"
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data)],
                                stdout=subprocess.PIPE, cwd=os.getcwd())
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + attempt * 0.07)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored = json.loads(path.read_text())
        assert stored["blob"] in ("a" * 400_000, "b" * 400_000)
    leftovers = [p for p in os.listdir(data) if p.startswith(".tmp-")]
    # A kill between mkstemp and rename may leave one temp file; never a torn target.
    assert len(leftovers) <= 5
