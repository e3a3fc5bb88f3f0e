"""ycommand against a running agent: what an operator types and reads.

One agent per module (its own work dir, control plane and echo listener on
ports the kernel picked), driven through the real CLI. The tests only add to
it (a second echo yuno, a stopped one), never take away, so their order does
not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import msgpack
from gobj.ytls.material import serial_hex
import pytest
from cryptography import x509

from tests.agent_harness import Agent, EchoSession, echo_config, make_agents, wait_for


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    base = tmp_path_factory.mktemp("ycommand")
    config = echo_config(base / "echo.json", "echo")
    with make_agents(base) as make:
        yield make(yunos=[{"yuno_role": "echo", "yuno_name": "echo",
                           "config": str(config)}]).start()


def ok(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


def test_list_yunos_shows_the_echo_yuno_running(agent: Agent) -> None:
    out = ok(agent.ycommand("list-yunos"))

    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Id "))
    assert re.split(r"\s{2,}", lines[header].strip())[:8] == [
        "Id", "Role", "Name", "Enabled", "Running", "Playing", "Pid", "Restarts"]
    row = next(line for line in lines[header + 2:] if re.search(r"\becho\s+echo\b", line))
    cells = re.split(r"\s{2,}", row.strip())
    assert cells[3:6] == ["true", "true", "true"]
    assert int(cells[6]) == agent.running("echo")[0]["pid"] > 0


def test_view_cert_returns_the_served_certificate(agent: Agent) -> None:
    rc, answers = agent.ycommand_json(
        "command-yuno yuno_name=echo command=view-cert gobj=echo_tls")

    assert rc == 0
    [answer] = answers
    assert answer["result"] == 0 and answer["yuno"] == "echo^echo"
    cert = answer["data"]
    on_disk = x509.load_pem_x509_certificate(Path(cert["ssl_certificate"]).read_bytes())
    assert cert["serial"] == serial_hex(on_disk.serial_number)
    session = EchoSession(agent.echo_port("echo"))
    try:
        assert session.serial == cert["serial"]
    finally:
        session.close()
    assert cert["days_remaining"] > 0 and cert["library"] == "openssl"


def test_command_to_several_yunos_prints_every_answer(agent: Agent, tmp_path: Path) -> None:
    second = echo_config(tmp_path / "echo2.json", "echo2")
    out = ok(agent.ycommand(f"create-yuno config={second}"))
    assert "yuno echo^echo2 created" in out
    wait_for("echo2 running", lambda: agent.running("echo2"), 20)

    proc = agent.ycommand("command-yuno yuno_role=echo command=view-cert gobj=echo_tls")

    out = ok(proc)
    assert "[echo^echo]" in out and "[echo^echo2]" in out
    assert out.count('"serial"') == 2
    rc, answers = agent.ycommand_json("command-yuno yuno_role=echo command=stats")
    assert rc == 0 and sorted(a["yuno"] for a in answers) == ["echo^echo", "echo^echo2"]
    assert all(a["result"] == 0 and a["data"]["uptime"] >= 0 for a in answers)


def test_yuno_not_running_is_not_found(agent: Agent, tmp_path: Path) -> None:
    idle = echo_config(tmp_path / "idle.json", "idle")
    ok(agent.ycommand(f"create-yuno config={idle} run=false"))
    assert [y for y in agent.list_yunos() if y["yuno_name"] == "idle"][0]["pid"] == 0

    for line in ("command-yuno yuno_name=idle command=help",
                 "command-yuno yuno_name=no-such-yuno command=help"):
        proc = agent.ycommand(line)
        assert proc.returncode == 1, proc.stdout
        assert "ERROR -1: Yuno not found" in proc.stdout


def test_unknown_command_answers_the_error_comment(agent: Agent) -> None:
    proc = agent.ycommand("frobnicate")
    assert proc.returncode == 1
    assert "ERROR -1: C_AGENT^agent: command not available: 'frobnicate'" in proc.stdout

    proc = agent.ycommand("command-yuno yuno_name=echo command=frobnicate")
    assert proc.returncode == 1
    assert "[echo^echo] ERROR -1:" in proc.stdout
    assert "command not available: 'frobnicate'" in proc.stdout


def test_bad_token_is_refused_and_logged(agent: Agent) -> None:
    proc = agent.ycommand("list-yunos", jwt="not-the-token")

    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "the agent refused us: authentication refused: bad or missing credential" \
        in proc.stderr
    refused = wait_for("ievent.auth.refused in the agent log", lambda: [
        r for r in agent.records() if r["msgid"] == "ievent.auth.refused"], 5)
    assert refused[-1]["reason"] == "bad or missing credential"
    assert "not-the-token" not in agent.log_text()


def test_msgpack_binary_frames_work(agent: Agent) -> None:
    text = ok(agent.ycommand("command-yuno yuno_name=echo command=view-cert gobj=echo_tls"))
    binary = ok(agent.ycommand("command-yuno yuno_name=echo command=view-cert gobj=echo_tls",
                               "-b"))
    # Same answer either way, except the live count of TLS contexts.
    drop = re.compile(r'^\s*"live_contexts".*$', re.M)
    assert drop.sub("", binary) == drop.sub("", text)
    assert "1 yuno(s)" in ok(agent.ycommand("list-yunos yuno_name=echo", "-b"))

    # On the wire: a msgpack request is answered in a binary frame.
    with agent.client() as client:
        client.send_command("list-yunos yuno_name=echo", binary=True)
        opcode, data = client.recv_frame()
    assert opcode == 0x2
    answer = msgpack.unpackb(data, raw=False)
    assert answer["event"] == "EV_MT_COMMAND_ANSWER"
    assert [y["yuno_name"] for y in answer["kw"]["data"]] == ["echo"]


def test_several_lines_run_in_order_and_stop_at_an_error(agent: Agent) -> None:
    out = ok(agent.ycommand("list-yunos yuno_name=echo; cert-sync-status"))
    assert out.index("1 yuno(s)") < out.index("cert-sync status")

    proc = agent.ycommand("frobnicate; list-yunos")
    assert proc.returncode == 1 and "yuno(s)" not in proc.stdout
    proc = agent.ycommand("-frobnicate; list-yunos yuno_name=echo")
    assert proc.returncode == 0 and "1 yuno(s)" in proc.stdout


def test_no_agent_listening_is_a_clear_error(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{s.getsockname()[1]}"
        proc = subprocess.run(
            [sys.executable, "-m", "yunos.ycommand", "-u", url, "-t", "1", "-j", "x",
             "-c", "list-yunos"], capture_output=True, text=True, timeout=20,
            env={"PATH": "/usr/bin:/bin", "YUNETA_WORK_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert f"cannot reach the agent at {url} (no session after 1.0 s)" in proc.stderr
