"""A yuno as a real process: config assembly, bad configs, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def run_echo(args, tmp_path, timeout=20):
    env = dict(os.environ, YUNETA_WORK_DIR=str(tmp_path / "var"))
    return subprocess.run([sys.executable, "-m", "yunos.echo", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


BAD = [
    ("missing.json", None, "missing.json: config file not found"),
    ("broken.json", '{"yuno": {,}', "broken.json: invalid JSON at line 1 column"),
    ("gclass.json", {"services": [{"name": "x", "gclass": "C_NOPE"}]},
     "(x): unknown gclass 'C_NOPE'"),
    ("type.json", {"services": [{"name": "t", "gclass": "C_TIMER", "kw": {"msec": "soon"}}]},
     "service 't': C_TIMER^t: bad config value(s): msec: expected integer"),
    ("section.json", {"services": {"name": "x"}}, "key 'services' must be a list"),
    ("var.json", {"yuno": {"yuno_name": "(^^nope^^)"}}, "key 'yuno.yuno_name': unknown variable"),
    ("role.json", {"yuno": {"yuno_role": "other"}}, "yuno.yuno_role is 'other'"),
]


@pytest.mark.parametrize("name,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_exits_non_zero_naming_file_key_problem(tmp_path, name, content, message):
    path = str(tmp_path / name) if content is None else write(tmp_path, name, content)
    proc = run_echo(["-f", path], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    if content is not None and name != "role.json":
        assert name in proc.stderr
    assert not (tmp_path / "var").exists() or not any((tmp_path / "var").rglob("*.log"))


def test_files_merge_in_order_with_variables_and_print_config(tmp_path):
    a = write(tmp_path, "a.json", {"__json_config_variables__": {"__p__": 250},
                                   "yuno": {"yuno_name": "first", "timeout_cert_check": 10},
                                   "services": [{"name": "t", "gclass": "C_TIMER",
                                                 "kw": {"msec": "(^^__p__^^)"}}]})
    b = write(tmp_path, "b.json", "#^^ a comment line\n" + json.dumps(
        {"yuno": {"yuno_name": "second-(^^__p__^^)"},
         "services": [{"name": "t", "kw": {"periodic": True}}]}))
    proc = run_echo(["-f", json.dumps([a, b]), "--print-config"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["yuno"]["yuno_name"] == "second-250"
    assert cfg["yuno"]["timeout_cert_check"] == 10
    t = [s for s in cfg["services"] if s["name"] == "t"]
    assert t == [{"name": "t", "gclass": "C_TIMER", "kw": {"msec": 250, "periodic": True}}]


def test_yuno_runs_and_exits_zero_on_sigterm(tmp_path):
    cfg = write(tmp_path, "c.json", {"yuno": {"yuno_name": "e1"}, "__json_config_variables__": {
        "__echo_url__": "tcp://127.0.0.1:0", "__echo_dtls_url__": "udp://127.0.0.1:0"}})
    env = dict(os.environ, YUNETA_WORK_DIR=str(tmp_path / "var"))
    proc = subprocess.Popen([sys.executable, "-m", "yunos.echo", "-f", cfg],
                            stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.time() + 15
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(json.loads(line))
        if lines[-1]["msgid"] == "yuno.playing":
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    records = lines + [json.loads(x) for x in out.splitlines() if x.strip()]
    msgids = [r["msgid"] for r in records]
    assert msgids[0] == "yuno.starting" and "tcp_s.listening" in msgids
    assert msgids.index("yuno.playing") < msgids.index("yuno.stopping")
    for r in records:
        assert r["yuno"] == "echo^e1" and r["gobj"].startswith("C_YUNO^e1") and r["gclass"]
        assert r["level"] in ("info", "debug"), r
        assert r["timestamp"][-6] in "+-"  # ISO 8601 with a zone


def test_a_service_that_cannot_start_stops_the_yuno_with_exit_3(tmp_path):
    """A port already in use: the yuno says which gobj failed and exits 3
    instead of running and serving nothing."""
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    cfg = write(tmp_path, "busy.json", {"yuno": {"yuno_name": "e2"}, "__json_config_variables__": {
        "__echo_url__": f"tcp://127.0.0.1:{port}", "__echo_dtls_url__": "udp://127.0.0.1:0"}})
    try:
        proc = run_echo(["-f", cfg], tmp_path)
    finally:
        busy.close()
    assert proc.returncode == 3, proc.stderr
    records = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    failed = [r for r in records if r["msgid"] == "yuno.start.failed"]
    assert len(failed) == 1 and failed[0]["level"] == "critical"
    assert any(g.endswith("C_TCP_S^echo_tls") for g in failed[0]["gobjs"])
    listen = [r for r in records if r["msgid"] == "tcp_s.listen.failed"]
    assert "in use" in listen[0]["error"]
