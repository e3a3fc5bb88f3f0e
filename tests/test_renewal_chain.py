"""The whole renewal chain with real certbot and Pebble, and no dropped session.

certbot (against a Pebble on 127.0.0.1) issues a certificate for echo.test;
copy-certs.sh mirrors it into the agent's store; the agent's echo yuno serves
it from there. Then each renewal layer in turn carries a new certificate to
the listener while a TLS session opened at the start keeps echoing:

1. the deploy hook (certbot runs it; it calls the real ycommand);
2. the deploy hook broken, so ``cert-sync-now`` (layer 2 by hand) delivers;
3. the deploy hook broken, and the agent's own timer delivers;
4. a reload that fails (the key corrupted in the store and at certbot's live
   source, since the copy command would otherwise mend the store) is retried
   on every tick, even one that finds no change, and succeeds once the key
   is fixed.

The cert-sync timer starts disabled so that steps 1 and 2 cannot be raced by
a tick, and is enabled (``write-attr``) for steps 3 and 4; its interval is the
30 s floor, which is what makes this test slow (about three ticks).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gobj.ytls.material import serial_hex
import pytest
from cryptography import x509

from tests.acme import CertbotEnv, Pebble, certbot_env, pebble  # noqa: F401
from tests.agent_harness import (PYTHON, REPO, Agent, EchoSession, agent_factory,  # noqa: F401
                                 echo_config, wait_for)

NAME = "echo.test"
COPY_CERTS = REPO / "tools" / "copy-certs.sh"
DEPLOY_HOOK = REPO / "tools" / "deploy-hook.sh"
TICK = 30  # cert_sync_interval_sec: the floor
# One tick, plus the copy script, the broadcast and a loaded box.
TICK_WAIT = TICK + 8


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def lineage_serial(certbot: CertbotEnv) -> str:
    leaf = x509.load_pem_x509_certificate((certbot.lineage(NAME) / "cert.pem").read_bytes())
    return serial_hex(leaf.serial_number)


class Chain:
    """The pieces of one renewal chain, all under the test's temp dir."""

    def __init__(self, base: Path, certbot: CertbotEnv, agent: Agent) -> None:
        self.certbot = certbot
        self.agent = agent
        self.store = agent.work / "store" / "certs"
        self.last_run = base / "lib" / "last-deploy-hook-run"
        self.log_dir = base / "log"
        self.copy_cmd = (f"{shlex.quote(str(COPY_CERTS))} --letsencrypt-dir "
                         f"{shlex.quote(str(certbot.config_dir))} --store "
                         f"{shlex.quote(str(self.store))}")
        self.sessions: list[EchoSession] = []
        self.ca = base / "pebble-root.pem"
        self.ca.write_bytes(certbot.pebble.root_pem())
        # The real ycommand, pointed at this agent with its credential.
        self.ycommand = script(base / "ycommand", (
            f"cd {shlex.quote(str(REPO))} || exit 1\n"
            f"YUNETA_JWT=$(cat {shlex.quote(str(agent.work))}/realms/agent/data/agent.token)\n"
            "export YUNETA_JWT\n"
            f"exec {shlex.quote(PYTHON)} -m yunos.ycommand -u \"$AGENT_URL\" \"$@\"\n"))
        self.broken = script(base / "ycommand-broken", "echo 'agent unreachable' >&2\nexit 1\n")

    def hook_env(self, ycommand: Path) -> dict[str, str]:
        return {
            "YUNETA_COPY_CERTS": str(COPY_CERTS),
            "YUNETA_LETSENCRYPT_DIR": str(self.certbot.config_dir),
            "YUNETA_CERTS_STORE": str(self.store),
            "YUNETA_YCOMMAND": str(ycommand),
            "YUNETA_LAST_RUN_FILE": str(self.last_run),
            "YUNETA_LOG_DIR": str(self.log_dir),
            "YUNETA_WEBSERVER_FILE": str(self.log_dir / "no-webserver"),
            "YUNETA_BIN_DIR": str(self.log_dir / "no-bin"),
            "YUNETA_USER": "yuneta-py-test-no-such-user",
            "YUNETA_YCOMMAND_TIMEOUT": "30",
            "AGENT_URL": self.agent.url,
        }

    def renew(self, ycommand: Path) -> str:
        """certbot renew --force-renewal with the deploy hook; the new serial."""
        self.certbot.renew(deploy_hook=DEPLOY_HOOK, env=self.hook_env(ycommand))
        return lineage_serial(self.certbot)

    def open_session(self) -> EchoSession:
        session = EchoSession(self.agent.echo_port("echo"), cafile=self.ca, server_name=NAME)
        self.sessions.append(session)
        return session

    def new_client_serial(self) -> str:
        session = self.open_session()
        assert session.echo(b"hello") == b"hello"
        return session.serial

    def all_sessions_echo(self) -> None:
        for i, session in enumerate(self.sessions):
            msg = f"session {i} still up".encode()
            assert session.echo(msg) == msg, f"session {i} (serial {session.serial}) dropped"

    def view_cert_serial(self) -> str:
        rc, [answer] = self.agent.ycommand_json(
            "command-yuno yuno_name=echo command=view-cert gobj=echo_tls")
        assert rc == 0, answer
        return str(answer["data"]["serial"])

    def status(self) -> dict[str, Any]:
        rc, [answer] = self.agent.ycommand_json("cert-sync-status")
        assert rc == 0
        return dict(answer["data"])

    def close(self) -> None:
        for session in self.sessions:
            session.close()


@pytest.fixture
def chain(certbot_env: CertbotEnv, agent_factory: Callable[..., Agent],  # noqa: F811
          tmp_path: Path) -> Iterator[Chain]:
    agent = agent_factory("agent")
    certbot_env.issue(NAME)
    c = Chain(tmp_path, certbot_env, agent)
    yield c
    c.close()


@pytest.mark.slow
def test_renewal_reaches_the_listener_by_every_layer_without_a_drop(
        chain: Chain, tmp_path: Path) -> None:
    certbot, agent, store = chain.certbot, chain.agent, chain.store

    # -- the first certificate, copied into the store and served ------------
    copy = subprocess.run(shlex.split(chain.copy_cmd), capture_output=True, text=True,
                          timeout=60)
    assert copy.returncode == 0, copy.stdout + copy.stderr
    key = store / "private" / f"{NAME}.key"
    assert (store / f"{NAME}.crt").is_file() and key.stat().st_mode & 0o777 == 0o600
    crypto = {"library": "openssl", "ssl_certificate": str(store / f"{NAME}.crt"),
              "ssl_certificate_key": str(key)}
    config = echo_config(tmp_path / "echo.json", "echo", crypto=crypto)
    _configure(agent, config, chain)
    agent.start()

    serial0 = lineage_serial(certbot)
    assert chain.new_client_serial() == serial0 == chain.view_cert_serial()

    # -- layer 1: certbot's deploy hook reloads every yuno --------------------
    since = int(time.time())
    serial1 = chain.renew(chain.ycommand)
    assert serial1 != serial0
    assert chain.new_client_serial() == serial1
    chain.all_sessions_echo()
    stamp = int(chain.last_run.read_text())
    assert since <= stamp <= int(time.time())
    assert chain.status()["deploy_hook_last_run"] == stamp
    hook_log = (chain.log_dir / "deploy-hook.log").read_text()
    assert '"step":"ycommand","rc":0' in hook_log

    # -- layer 1 broken: the store changes, the listener does not ------------
    serial2 = chain.renew(chain.broken)
    assert serial2 != serial1
    assert x509.load_pem_x509_certificate((store / f"{NAME}.crt").read_bytes()) \
        .serial_number == int(serial2, 16)
    assert chain.new_client_serial() == serial1 == chain.view_cert_serial()

    # -- layer 2 by hand: cert-sync-now delivers ------------------------------
    rc, [now] = agent.ycommand_json("cert-sync-now")
    assert rc == 0 and now["data"]["result"] == "reloaded", now
    assert chain.new_client_serial() == serial2
    chain.all_sessions_echo()
    assert chain.status()["last_result"] == "reloaded"

    # -- layer 2 on its own: the timer delivers within one tick ---------------
    serial3 = chain.renew(chain.broken)
    assert chain.view_cert_serial() == serial2
    enabled_at = time.monotonic()
    _write_agent_attr(agent, "cert_sync_enabled", "true")
    wait_for("the timer to deliver the third certificate",
             lambda: chain.view_cert_serial() == serial3, TICK_WAIT, every=1.0)
    assert time.monotonic() - enabled_at <= TICK_WAIT
    assert chain.new_client_serial() == serial3
    chain.all_sessions_echo()
    tick_a = chain.status()
    assert tick_a["last_result"] == "reloaded" and tick_a["retry_pending"] is False

    # -- a failing reload is retried on every tick until it succeeds ----------
    # The key is corrupted in the store and at its source: corrupted in the
    # store only, the copy command would restore it before the reload.
    serial4 = chain.renew(chain.broken)
    live_key = certbot.lineage(NAME) / "privkey.pem"
    good_key = live_key.read_bytes()
    assert key.read_bytes() == good_key
    for path in (key, live_key):
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n"
                         b"-----END PRIVATE KEY-----\n")
    rc, [now] = agent.ycommand_json("cert-sync-now")
    assert rc == 1 and now["result"] == -1
    assert now["data"]["result"].startswith("reload-failed")
    failed = chain.status()
    assert failed["retry_pending"] is True and failed["failures"] >= 1
    assert chain.new_client_serial() == serial3  # the old context still serves

    # A tick with no change in the store still retries (and fails again).
    # last_check is stamped when a tick starts, last_action once its
    # broadcast is answered: wait for the latter, the tick's outcome.
    retried = wait_for("a tick that retries", lambda: (lambda s: s if s["last_action"] >
                       failed["last_action"] else None)(chain.status()), TICK_WAIT, every=1.0)
    assert retried["retry_pending"] is True
    assert retried["failures"] == failed["failures"] + 1
    assert retried["last_result"].startswith("reload-failed")

    live_key.write_bytes(good_key)  # fixed at the source; the next copy mends the store
    fixed = wait_for("the tick after the fix", lambda: (lambda s: s if s["last_action"] >
                     retried["last_action"] else None)(chain.status()), TICK_WAIT, every=1.0)
    assert fixed["retry_pending"] is False and fixed["last_result"] == "reloaded"
    assert key.read_bytes() == good_key
    assert chain.new_client_serial() == serial4 == chain.view_cert_serial()
    chain.all_sessions_echo()
    assert len({s.serial for s in chain.sessions}) == 5  # serial0 .. serial4, all alive

    assert agent.msgids().count("cert_sync.reload_failed") >= 2
    echo_log = agent.work / "realms" / "echo" / "echo" / "logs" / "yuno.log"
    assert "tls.reload.failed" in echo_log.read_text()


def _configure(agent: Agent, echo_config_path: Path, chain: Chain) -> None:
    """Point the agent's echo yuno at the store, its sync at certbot's dir and
    its deploy-hook report at the hook's last-run file."""
    import json

    config = json.loads(agent.config.read_text())
    config["__json_config_variables__"]["__agent_yunos__"] = [
        {"yuno_role": "echo", "yuno_name": "echo", "config": str(echo_config_path)}]
    config["services"][0]["kw"].update({
        "cert_sync_copy_cmd": chain.copy_cmd, "cert_sync_interval_sec": TICK,
        "cert_sync_enabled": False, "deploy_hook_last_run_file": str(chain.last_run)})
    agent.config.write_text(json.dumps(config, indent=2))


def _write_agent_attr(agent: Agent, attr: str, value: str) -> None:
    """write-attr on the agent's own yuno (ycommand reaches only C_AGENT's table)."""
    [answer] = agent.call(f"write-attr gobj=agent attribute={attr} value={value}",
                          service="__yuno__")
    assert answer["result"] == 0, answer
