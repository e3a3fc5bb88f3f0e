"""C_AGENT as a real process: the control plane under abuse, yuno supervision
(restart, kill, run, disable), the persistent registry, clean shutdown, and
the cert-sync commands' shapes.

Each test gets its own agent (work dir, control plane on a port the kernel
picked) with one echo yuno whose TLS listener also binds port 0.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent_harness import (Agent, EchoSession, WSClient, agent_factory,  # noqa: F401
                                 echo_config, wait_for)

ONE_MIB = 1 << 20  # the gate's default max_frame


@pytest.fixture
def agent(agent_factory: Callable[..., Agent], tmp_path: Path) -> Agent:
    config = echo_config(tmp_path / "echo.json", "echo")
    return agent_factory(yunos=[{"yuno_role": "echo", "yuno_name": "echo",
                                 "config": str(config)}]).start()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def echo_row(agent: Agent) -> dict:  # type: ignore[type-arg]
    return next(y for y in agent.list_yunos() if y["yuno_name"] == "echo")


# ---------------------------------------------------------------------------
# The control plane drops a bad connection and keeps serving
# ---------------------------------------------------------------------------
def test_malformed_frame_drops_only_that_connection(agent: Agent) -> None:
    bystander = agent.client()  # authenticated before the abuse, used after
    try:
        with WSClient(agent.port) as rogue:
            rogue.handshake()
            rogue.send_frame(b"this is not JSON")
            assert rogue.closed_by_peer()[0]
        with agent.client() as rogue:  # authenticated, then garbage
            rogue.send_frame(b'{"event": "EV_MT_COMMAND", "kw": ')
            assert rogue.closed_by_peer()[0]

        [answer] = bystander.call("list-yunos")
        assert answer["result"] == 0
    finally:
        bystander.close()
    assert agent.ycommand("list-yunos").returncode == 0
    bad = [r for r in agent.records() if r["msgid"] == "ievent.bad_message"]
    assert len(bad) == 2


def test_oversized_frame_is_refused_before_its_payload(agent: Agent) -> None:
    for authenticate in (False, True):
        with WSClient(agent.port) as rogue:
            if authenticate:
                rogue.login(agent.token)
            else:
                rogue.handshake()
            # Only the header and a few bytes: the agent must refuse on the
            # announced length, without waiting for (or buffering) a mebibyte.
            rogue.send_frame(b"x" * 64, announce=ONE_MIB + 1)
            assert rogue.closed_by_peer() == (True, 1009)

    assert agent.ycommand("list-yunos").returncode == 0
    errors = [r for r in agent.records() if r["msgid"] == "websocket.protocol_error"]
    assert len(errors) == 2 and all(r["close_code"] == 1009 for r in errors)
    assert f"exceeds the limit of {ONE_MIB} bytes" in errors[0]["reason"]


def test_message_before_the_identity_card_is_refused(agent: Agent) -> None:
    with WSClient(agent.port) as rogue:
        rogue.handshake()
        rogue.send_command("list-yunos")
        answer = rogue.recv_event()
        assert answer["kw"]["result"] == -1
        assert answer["kw"]["comment"] == "identity card required first"
        assert rogue.closed_by_peer()[0]
    assert "ievent.auth.no_card" in agent.msgids()


# ---------------------------------------------------------------------------
# Supervision
# ---------------------------------------------------------------------------
def test_killed_yuno_is_restarted_and_answers(agent: Agent) -> None:
    before = echo_row(agent)
    os.kill(before["pid"], signal.SIGKILL)

    after = wait_for("a new echo pid", lambda: [
        y for y in agent.running("echo") if y["pid"] != before["pid"]], 15)[0]

    assert after["id"] == before["id"] and after["restarts"] >= 1
    proc = agent.ycommand("command-yuno yuno_name=echo command=view-cert gobj=echo_tls")
    assert proc.returncode == 0 and '"serial"' in proc.stdout
    session = EchoSession(agent.echo_port("echo"))
    try:
        assert session.echo(b"still here") == b"still here"
    finally:
        session.close()
    died = [r for r in agent.records() if r["msgid"] == "agent.yuno.died"]
    assert died and died[0]["exit_code"] == -signal.SIGKILL


def test_kill_run_and_disable(agent: Agent) -> None:
    first = echo_row(agent)

    # kill-yuno: stopped on purpose, so not restarted.
    proc = agent.ycommand("kill-yuno yuno_name=echo")
    assert proc.returncode == 0 and "kill-yuno: 1 yuno(s)" in proc.stdout
    wait_for("echo gone", lambda: not alive(first["pid"]), 10)
    time.sleep(1.5)  # longer than the first restart delays (0.5 s, 1 s)
    assert echo_row(agent)["pid"] == 0 and not echo_row(agent)["running"]

    # run-yuno: back, as a new process with the same id.
    assert agent.ycommand("run-yuno yuno_name=echo").returncode == 0
    second = wait_for("echo running again", lambda: agent.running("echo"), 15)[0]
    assert second["pid"] != first["pid"] and second["id"] == first["id"]

    # disable-yuno: stopped, not restarted, not runnable, not reachable.
    proc = agent.ycommand("disable-yuno yuno_name=echo")
    assert proc.returncode == 0
    wait_for("echo gone", lambda: not alive(second["pid"]), 10)
    time.sleep(1.5)
    row = echo_row(agent)
    assert (row["enabled"], row["running"], row["pid"]) == (False, False, 0)
    assert "run-yuno: 0 yuno(s)" in agent.ycommand("run-yuno yuno_name=echo").stdout
    proc = agent.ycommand("command-yuno yuno_name=echo command=help")
    assert proc.returncode == 1 and "Yuno not found" in proc.stdout

    # enable-yuno + run-yuno bring it back.
    assert agent.ycommand("enable-yuno yuno_name=echo; run-yuno yuno_name=echo") \
        .returncode == 0
    wait_for("echo running after enable", lambda: agent.running("echo"), 15)


def test_stats_yuno(agent: Agent) -> None:
    rc, [answer] = agent.ycommand_json("stats-yuno yuno_name=echo")
    assert rc == 0 and answer["yuno"] == "echo^echo"
    assert {"start_date", "uptime", "cpu", "max_rss_kb"} <= set(answer["data"])

    rc, [answer] = agent.ycommand_json("stats-yuno yuno_name=echo stats=uptime")
    assert rc == 0 and list(answer["data"]) == ["uptime"]


# ---------------------------------------------------------------------------
# Cert sync commands
# ---------------------------------------------------------------------------
STATUS_KEYS = {"enabled", "interval_sec", "effective_interval_sec", "store_dir", "copy_cmd",
               "last_check", "last_action", "last_result", "failures", "retry_pending",
               "deploy_hook_last_run", "served_checked_at", "drift"}


def test_cert_sync_now_and_status_shapes(agent: Agent) -> None:
    rc, [status] = agent.ycommand_json("cert-sync-status")
    assert rc == 0 and set(status["data"]) == STATUS_KEYS
    data = status["data"]
    assert (data["enabled"], data["interval_sec"], data["effective_interval_sec"]) == \
        (True, 900, 900)
    assert data["store_dir"] == str(agent.work / "store" / "certs")
    assert (data["last_check"], data["deploy_hook_last_run"], data["retry_pending"]) == \
        (0, 0, False)

    t0 = int(time.time())
    for _ in range(2):  # the second finds nothing new
        rc, [now] = agent.ycommand_json("cert-sync-now")
        assert rc == 0 and now["result"] == 0
        assert set(now["data"]) == {"result", "changed", "store_dir", "details"}
        assert now["comment"] == f"cert-sync tick done: {now['data']['result']}"
    assert (now["data"]["result"], now["data"]["changed"]) == ("no-change", False)

    (agent.work / "last-deploy-hook-run").write_text(f"{t0}\n")
    rc, [status] = agent.ycommand_json("cert-sync-status")
    data = status["data"]
    assert data["last_check"] >= t0 and data["last_result"] == "no-change"
    assert data["deploy_hook_last_run"] == t0
    assert data["served_checked_at"] >= t0 and data["drift"] == []


# ---------------------------------------------------------------------------
# Registry and shutdown
# ---------------------------------------------------------------------------
def test_registry_survives_restart_and_sigterm_leaves_nothing(
        agent: Agent, tmp_path: Path) -> None:
    second = echo_config(tmp_path / "echo2.json", "echo2")
    assert agent.ycommand(f"create-yuno config={second}").returncode == 0
    before = {y["yuno_name"]: y for y in agent.wait_running(2)}
    assert set(before) == {"echo", "echo2"}

    assert agent.stop(signal.SIGTERM) == 0
    assert agent.yuno_pids() == []
    assert not any(alive(y["pid"]) for y in before.values())
    stopped = [r["target"] for r in agent.records() if r["msgid"] == "agent.yuno.stopped"]
    assert sorted(stopped) == ["echo^echo", "echo^echo2"]

    agent.start(wait_yunos=2)
    after = {y["yuno_name"]: y for y in agent.running()}
    assert {n: y["id"] for n, y in after.items()} == {n: y["id"] for n, y in before.items()}
    assert all(after[n]["pid"] != before[n]["pid"] for n in after)
    registry = json.loads((agent.work / "realms" / "agent" / "data" / "yunos.json")
                          .read_text())
    assert sorted(r["yuno_name"] for r in registry) == ["echo", "echo2"]
